"""Stage 3 of the recipe: the ranker, the label attention pretrained to rank each document's tokens by their MIG
grade (ApproxNDCG, with `transformers.Trainer`, so that accelerate, LoRA, checkpoints and resume work)."""

import math
import shutil
from dataclasses import field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer, set_seed
from transformers.utils import logging

from ..data import LabelVocabulary
from ..modeling_plant import PlantForMultiLabelClassification
from ..planting import MIGTable, tokenizer_fingerprint
from ..planting.ranking import DocumentRanker, RankerCollator, StaticListCollator, StaticRanker
from ..planting.transplant import RankerConfig, save_ranker
from ..training.trainer import PlantTrainer, PlantTrainingArguments, last_complete_checkpoint, training_summary
from .data import RunContext, pad_token_id
from .finetuning import lora_config
from .label_tree import many_labels
from .options import stage_options

logger = logging.get_logger(__name__)


@stage_options(
    "ranker",
    "Planting: the ranker",
    at_least={
        "label_attention_dim": 1,
        "prior_rank": 1,
        "ranker_batch_size": 1,
        "ranker_max_labels": 1,
        "ranker_max_relevant": 1,
        "ranker_ndcg_k": 1,
    },
)
class RankerArguments:
    """Which ranker plants the label attention, and how it is trained."""

    planting: Literal["contextual", "static", "both", "none"] = field(
        default="contextual",
        metadata={
            "help": "Which ranker plants the attention. contextual: backbone states -> key projection vs label "
            "queries; static: token and label factors fitted to the MIG grades alone (an additive prior, "
            "static_prior_rank); both: static, then contextual on top; none: no MIG table or ranker."
        },
    )
    ranker_backbone_mode: Literal["frozen", "lora"] = field(
        default="frozen",
        metadata={
            "help": "frozen: the ranker trains on the cached states of the frozen backbone; lora: it adapts the "
            "backbone with LoRA (rank lora_r) while ranking, and the adapter is planted, merged, with the attention."
        },
    )
    label_attention_dim: int | None = field(
        default=None, metadata={"help": "Key space of the label attention, ranker and classifier (default: hidden)."}
    )
    prior_rank: int = field(default=64, metadata={"help": "Rank of the static prior's token and label factors."})
    ranker_epochs: float = field(
        default=30.0,
        metadata={
            "help": "Ceiling of the ranker's passes over the training documents: it stops before once its dev nDCG "
            "stops improving (see ranker_patience)."
        },
    )
    ranker_patience: int | None = field(
        default=2,
        metadata={
            "help": "Stop once the dev nDCG has not improved (by more than ranker_improvement_threshold) for this "
            "many epochs; the best epoch is kept. None: train to the ceiling."
        },
    )
    ranker_improvement_threshold: float = field(
        default=2e-3, metadata={"help": "The least gain of dev nDCG that counts as an improvement."}
    )
    ranker_batch_size: int = field(default=16, metadata={"help": "Documents (or labels, static ranker) per step."})
    ranker_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the attention (constant after a linear warm-up); default: 1e-3 for the "
            "contextual ranker's listwise loss, 1e-2 for ApproxNDCG and the static ranker."
        },
    )
    ranker_backbone_learning_rate: float = field(
        default=2e-4, metadata={"help": "Learning rate of the backbone's LoRA adapter (ranker_backbone_mode lora)."}
    )
    ranker_weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the ranker."})
    ranker_warmup_steps: int = field(default=50, metadata={"help": "Optimizer steps of linear warm-up."})
    ranker_loss: Literal["listwise", "approx_ndcg"] = field(
        default="listwise",
        metadata={
            "help": "The contextual ranker's loss. listwise: the softmax over each document's tokens matched to "
            "their MIG grades, so that the planted attention reads every graded token in proportion; approx_ndcg: "
            "ApproxNDCG, an ordering of the tokens at any scale, which planted is a near argmax (one token read)."
        },
    )
    ranker_temperature: float = field(default=1.0, metadata={"help": "ApproxNDCG temperature of the rank estimate."})
    ranker_max_labels: int = field(default=32, metadata={"help": "Labels of a document ranked per step."})
    ranker_max_relevant: int = field(default=64, metadata={"help": "Best-graded tokens whose ranks are estimated."})
    ranker_negatives: int = field(default=256, metadata={"help": "Static ranker: frequent tokens added to each list."})
    ranker_static_epochs: float = field(
        default=2.0,
        metadata={
            "help": "Static ranker: passes over the label lists (it fits the MIG table itself: nothing is held out "
            "to stop on)."
        },
    )
    ranker_static_min_steps: int = field(default=300, metadata={"help": "Static ranker: optimizer steps at least."})
    ranker_ndcg_k: int = field(default=10, metadata={"help": "Cut-off of the reported nDCG@k."})


def ranker_stage(context: RunContext, mig: MIGTable | None) -> Path | None:
    """The run's ranker (`<output_dir>/ranker`), trained unless it is there (an interrupted one continues with
    `resume`); none without planting."""
    if mig is None:
        return None
    folder = context.folder / "ranker"
    context.begin_stage("ranker", folder / "ranker_config.json")
    if (folder / "ranker_config.json").exists():
        return folder
    args = context.args
    set_seed(context.training.seed)
    model = ranking_model(context)
    metrics: dict[str, Any] = {"held_out": context.notes.get("dev", "dev split"), "ndcg_k": args.ranker_ndcg_k}
    if args.planting in ("static", "both"):
        metrics["static"] = _pretrain_static(context, model, mig, folder)
    peft_backbone = None
    if args.planting in ("contextual", "both"):
        if args.ranker_backbone_mode == "lora":
            from peft import get_peft_model

            model.model = get_peft_model(model.model, lora_config(args, with_head=False))
            peft_backbone = model.model
        metrics["contextual"] = _pretrain_contextual(context, model, mig, folder)
    if context.is_main:
        save_ranker(folder, model.score, _ranker_config(context, model, metrics), peft_backbone)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the ranker folder now holds the best epoch
        _log_summary(metrics, folder)
    from accelerate import PartialState

    PartialState().wait_for_everyone()
    return folder


def ranking_model(context: RunContext) -> PlantForMultiLabelClassification:
    """The backbone (unquantised) with a fresh label attention for the ranker to train."""
    return context.plant_model()


def _ranker_config(context: RunContext, model, metrics: dict[str, Any]) -> RankerConfig:
    args, labels = context.args, context.vocabulary.labels
    options = {item.name: getattr(args, item.name) for item in fields(RankerArguments)}
    reading = {"seed": context.training.seed, "chunk_size": args.chunk_size, "max_chunks": args.max_chunks}
    return RankerConfig(
        kind="contextual+static" if args.planting == "both" else args.planting,
        labels=labels,
        label_fingerprint=LabelVocabulary(labels, np.zeros(len(labels)), 0).fingerprint,
        tokenizer_name=str(getattr(context.tokenizer, "name_or_path", "")),
        tokenizer_fingerprint=tokenizer_fingerprint(context.tokenizer),
        backbone=str(args.backbone or context.backbone),
        hidden_size=model.config.text_config.hidden_size,
        attention_dim=model.config.label_attention_dim,
        prior_rank=model.config.static_prior_rank,
        vocab_size=model.config.text_config.vocab_size,
        metrics=metrics,
        training={**options, **reading},
    )


def _documents(context: RunContext, model, split: str):
    """A split's documents for the contextual ranker: cached states of the frozen backbone, or token ids."""
    if context.args.ranker_backbone_mode == "frozen":
        return context.cached(split, model)
    return context.tokenized(split).select_columns(["input_ids", "label_ids"])


def _pretrain_static(context: RunContext, model, mig: MIGTable, folder: Path) -> dict[str, Any]:
    args = context.args
    ranker = StaticRanker(
        model.score,
        temperature=args.ranker_temperature,
        ndcg_k=args.ranker_ndcg_k,
        sparse_label_tables=many_labels(args, len(context.vocabulary)),
    )
    on_documents = DocumentRanker(model.score, contextual=False, ndcg_k=args.ranker_ndcg_k)
    held_out = context.tokenized("dev")
    collator = RankerCollator(mig, max_labels=args.ranker_max_labels, pad_token_id=pad_token_id(model))
    checkpoints = folder / "checkpoints-static"
    before = held_out_ndcg(on_documents, held_out, collator, context, checkpoints)
    trainer = trainer_for_ranker(
        ranker,
        static_label_dataset(mig),
        StaticListCollator(mig, args.ranker_negatives, context.training.seed),
        context,
        checkpoints,
    )
    trainer.train()
    after = held_out_ndcg(on_documents, held_out, collator, context, checkpoints)
    return {"loss": "approx_ndcg", "random_init": before, "trained": after, "history": history(trainer)}


def _pretrain_contextual(context: RunContext, model, mig: MIGTable, folder: Path) -> dict[str, Any]:
    args = context.args
    collator = RankerCollator(mig, max_labels=args.ranker_max_labels, pad_token_id=pad_token_id(model))
    documents = {split: _documents(context, model, split) for split in ("train", "dev")}
    ranker = DocumentRanker(
        model.score,
        encoder=None if args.ranker_backbone_mode == "frozen" else model,
        temperature=args.ranker_temperature,
        ndcg_k=args.ranker_ndcg_k,
        max_relevant=args.ranker_max_relevant,
        loss=args.ranker_loss,
        sparse_label_tables=many_labels(args, len(context.vocabulary)),
    )
    checkpoints = folder / "checkpoints"
    before = held_out_ndcg(ranker, documents["dev"], collator, context, checkpoints)
    trainer = trainer_for_ranker(ranker, documents["train"], collator, context, checkpoints, documents["dev"])
    last = last_complete_checkpoint(checkpoints, remove_incomplete=context.is_main) if args.resume else None
    trainer.train(resume_from_checkpoint=last)
    # Training ended on its best epoch, whose dev nDCG Trainer kept.
    after = trainer.state.best_metric
    summary = {"random_init": before, "trained": after, **training_summary(trainer), "history": history(trainer)}
    return {"loss": args.ranker_loss, **summary}


def trainer_for_ranker(
    ranker: torch.nn.Module,
    train_dataset: torch.utils.data.Dataset | Dataset,
    collator,
    context: RunContext,
    output_dir: Path,
    eval_dataset: torch.utils.data.Dataset | Dataset | None = None,
) -> PlantTrainer:
    """A Trainer that optimises a ranker's loss and reports exact nDCG@k on `eval_dataset` each epoch.

    With an `eval_dataset` it trains until that nDCG stops improving (`ranker_patience`, at most `ranker_epochs`) and
    ends on the best epoch; without one (the static ranker) it runs `ranker_static_epochs`, and at least
    `ranker_static_min_steps` optimizer steps (a pass over a few label lists is no training at all). The attention
    trains at `ranker_learning_rate`, a LoRA adapter of the backbone at `ranker_backbone_learning_rate`.
    """
    args, evaluated = context.args, eval_dataset is not None
    epochs = args.ranker_epochs if evaluated else args.ranker_static_epochs
    steps = math.ceil(epochs * len(train_dataset) / args.ranker_batch_size)
    training = PlantTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=-1 if evaluated else max(steps, args.ranker_static_min_steps),
        per_device_train_batch_size=args.ranker_batch_size,
        per_device_eval_batch_size=args.ranker_batch_size,
        learning_rate=ranker_learning_rate(args, contextual=evaluated),
        planted_lr_fraction=1.0,
        backbone_learning_rate=args.ranker_backbone_learning_rate,
        weight_decay=args.ranker_weight_decay,
        warmup_steps=args.ranker_warmup_steps,
        train_sampling_strategy="group_by_length" if evaluated else "random",
        eval_strategy="epoch" if evaluated else "no",
        save_strategy="epoch" if evaluated else "no",
        save_total_limit=1,
        load_best_model_at_end=evaluated,
        metric_for_best_model="ndcg" if evaluated else None,
        early_stopping_patience=args.ranker_patience,
        early_stopping_threshold=args.ranker_improvement_threshold,
        logging_strategy="epoch",
        report_to=[],
        seed=context.training.seed,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not context.is_main or context.training.disable_tqdm,
        sparse_label_gradients=context.training.sparse_label_gradients,
    )
    return PlantTrainer(
        model=ranker,
        args=training,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        compute_metrics=_ndcg_metrics,
        callbacks=training.stopping_callbacks(),
        stage="ranker",
    )


def ranker_learning_rate(args: Any, contextual: bool) -> float:
    """The ranker's learning rate: the one given, or its loss's default (the listwise loss's gradients do not
    fade as ApproxNDCG's do once a list is ordered, and at 1e-2 it diverges)."""
    if args.ranker_learning_rate is not None:
        return args.ranker_learning_rate
    return 1e-3 if contextual and args.ranker_loss == "listwise" else 1e-2


def held_out_ndcg(ranker: torch.nn.Module, dataset, collator, context: RunContext, output_dir: Path) -> float:
    """Exact nDCG@k of a ranker's token rankings on `dataset` (the mean over the (document, label) lists with a
    relevant token), by Trainer's evaluation loop."""
    return trainer_for_ranker(ranker, dataset, collator, context, output_dir, eval_dataset=dataset).evaluate()[
        "eval_ndcg"
    ]


def _ndcg_metrics(prediction) -> dict[str, float]:
    sums = np.asarray(prediction.predictions).reshape(-1, 2).sum(0)
    return {"ndcg": float(sums[0] / sums[1]) if sums[1] else float("nan"), "lists": float(sums[1])}


def static_label_dataset(mig: MIGTable) -> Dataset:
    """The labels with at least one MIG token: the lists the static ranker learns to rank."""
    labels = np.nonzero(np.diff(mig.label_indptr) > 0)[0]
    return Dataset.from_dict({"label_id": labels.tolist()})


def history(trainer: Trainer) -> list[dict[str, Any]]:
    """Per-epoch training loss and evaluation nDCG from a finished Trainer."""
    return [
        {key: value for key, value in entry.items() if key in ("epoch", "loss", "eval_ndcg", "eval_loss")}
        for entry in trainer.state.log_history
        if "loss" in entry or "eval_ndcg" in entry
    ]


def _log_summary(metrics: dict[str, Any], folder: Path) -> None:
    for stage in ("static", "contextual"):
        if stage in metrics:
            result = metrics[stage]
            logger.info(
                f"{stage} ranker, dev token-ranking nDCG@{metrics['ndcg_k']}: {result['random_init']:.4f} at random "
                f"init -> {result['trained']:.4f} trained"
            )
    logger.info(f"ranker held-out documents: {metrics['held_out']}; ranker -> {folder}")


__all__ = ["RankerArguments", "held_out_ndcg", "ranker_stage", "ranking_model", "trainer_for_ranker"]
