"""Training and evaluating rankers with `transformers.Trainer` (so accelerate, LoRA, checkpoints and resume work)."""

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from .mig import MIGTable


@dataclass
class RankerTrainingArguments:
    """How a ranker is trained."""

    epochs: float = field(
        default=30.0,
        metadata={
            "help": "Ceiling of the passes over the training documents: training stops before it once the held-out "
            "nDCG stops improving (see patience). The static ranker runs this many passes over the label lists."
        },
    )
    patience: int | None = field(
        default=2,
        metadata={
            "help": "Stop once the held-out nDCG has not improved (by more than improvement_threshold) for this many "
            "epochs; the best epoch is kept. None: train to the ceiling."
        },
    )
    improvement_threshold: float = field(
        default=2e-3, metadata={"help": "The least gain of held-out nDCG that counts as an improvement."}
    )
    batch_size: int = field(default=16, metadata={"help": "Documents (or labels, for the static ranker) per step."})
    learning_rate: float = field(
        default=1e-2, metadata={"help": "Learning rate of the attention (constant after a linear warm-up)."}
    )
    backbone_learning_rate: float = field(
        default=2e-4, metadata={"help": "Peak learning rate of the backbone's LoRA adapter, when it is trained."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=50, metadata={"help": "Optimizer steps of linear warm-up."})
    temperature: float = field(default=1.0, metadata={"help": "ApproxNDCG temperature of the rank approximation."})
    max_labels: int = field(default=32, metadata={"help": "Labels of a document ranked per step (random subset)."})
    max_relevant: int = field(default=64, metadata={"help": "Best-graded tokens whose ranks are approximated."})
    negatives: int = field(default=256, metadata={"help": "Static ranker: frequent tokens added to each list."})
    static_epochs: float = field(
        default=2.0,
        metadata={
            "help": "Static ranker: passes over the label lists (it fits the MIG table itself: nothing is held out "
            "to stop on)."
        },
    )
    static_min_steps: int = field(default=300, metadata={"help": "Static ranker: optimizer steps at the least."})
    ndcg_k: int = field(default=10, metadata={"help": "Cut-off of the reported nDCG@k."})
    seed: int = field(default=0, metadata={"help": "Random seed."})


def _ndcg_metrics(prediction) -> dict[str, float]:
    sums = np.asarray(prediction.predictions).reshape(-1, 2).sum(0)
    return {"ndcg": float(sums[0] / sums[1]) if sums[1] else float("nan"), "lists": float(sums[1])}


def trainer_for_ranker(
    ranker: torch.nn.Module,
    train_dataset: torch.utils.data.Dataset | Dataset,
    collator,
    args: RankerTrainingArguments,
    output_dir: str | os.PathLike,
    eval_dataset: torch.utils.data.Dataset | Dataset | None = None,
    progress: bool = True,
    min_steps: int = 0,
) -> Trainer:
    """A Trainer that optimises a ranker's ApproxNDCG loss and reports exact nDCG@k on `eval_dataset` each epoch.

    With an `eval_dataset` it trains until that nDCG stops improving (`args.patience`, at most `args.epochs`) and
    ends on the best epoch; without one (the static ranker) it runs `args.static_epochs`, and with `min_steps` at
    least that many optimizer steps (a pass over a few label lists is no training at all).
    """
    evaluated = eval_dataset is not None
    epochs = args.epochs if evaluated else args.static_epochs
    steps = math.ceil(epochs * len(train_dataset) / args.batch_size)
    training = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=max(steps, min_steps) if min_steps else -1,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        train_sampling_strategy="group_by_length" if evaluated else "random",
        eval_strategy="epoch" if evaluated else "no",
        save_strategy="epoch" if evaluated else "no",
        save_total_limit=1,
        load_best_model_at_end=evaluated,
        metric_for_best_model="ndcg" if evaluated else None,
        greater_is_better=True,
        restore_callback_states_from_checkpoint=True,
        logging_strategy="epoch",
        report_to=[],
        seed=args.seed,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress,
    )
    return Trainer(
        model=ranker,
        args=training,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        compute_metrics=_ndcg_metrics,
        optimizers=(_optimizer(ranker, args), None),
        callbacks=[EarlyStoppingCallback(args.patience, args.improvement_threshold)]
        if evaluated and args.patience is not None
        else None,
    )


def _optimizer(ranker: torch.nn.Module, args: RankerTrainingArguments) -> torch.optim.Optimizer:
    """AdamW with the attention at `learning_rate` and the backbone's trainable (LoRA) weights at their own rate."""
    own = {id(parameter) for parameter in ranker.attention.parameters()}
    trainable = [parameter for parameter in ranker.parameters() if parameter.requires_grad]
    attention = [parameter for parameter in trainable if id(parameter) in own]
    backbone = [parameter for parameter in trainable if id(parameter) not in own]
    groups = [{"params": attention, "lr": args.learning_rate}]
    if backbone:
        groups.append({"params": backbone, "lr": args.backbone_learning_rate})
    return torch.optim.AdamW(groups, weight_decay=args.weight_decay)


@torch.no_grad()
def evaluate_ranker(ranker: torch.nn.Module, dataset, collator, batch_size: int = 32) -> dict[str, float]:
    """Exact nDCG@k of the token rankings: the mean over (document, label) lists with a relevant token."""
    was_training = ranker.training
    ranker.eval()
    device = next(ranker.parameters()).device
    totals = torch.zeros(2)
    for begin in range(0, len(dataset), batch_size):
        batch = collator([dataset[index] for index in range(begin, min(begin + batch_size, len(dataset)))])
        output = ranker(**{name: value.to(device) for name, value in batch.items()})
        totals += output.ndcg.sum(0).cpu()
    ranker.train(was_training)
    return {"ndcg": float(totals[0] / totals[1]) if totals[1] else float("nan"), "lists": float(totals[1])}


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


__all__ = ["RankerTrainingArguments", "evaluate_ranker", "history", "static_label_dataset", "trainer_for_ranker"]
