"""Stages 4 and 5 of the recipe: the classifier is built, planted from the ranker, its label weights started as
`label_init` says, and fine-tuned with Trainer until the dev metric stops improving."""

import copy
import dataclasses
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from transformers import set_seed
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER
from transformers.utils import logging

from ..cache import CachedDocumentCollator
from ..data import PlantDataCollator
from ..data.catalogue import LABEL_DESCRIPTIONS_FILE
from ..files import atomic_path, write_json
from ..metrics import inverse_propensities
from ..modeling_plant import PlantForMultiLabelClassification
from ..planting.prototypes import (
    initialize_context_gates,
    initialize_label_bias,
    initialize_label_weights,
    label_prototypes,
)
from ..planting.transplant import load_ranker, plant
from ..training.evaluation import XMCComputeMetrics, headline_metrics, top_k_logits, write_report
from ..training.trainer import (
    GradualUnfreezing,
    PlantTrainer,
    last_complete_checkpoint,
    parse_unfreeze_schedule,
    positive_weighted_loss,
    training_summary,
)
from .data import RunContext, inference_inputs, pad_token_id
from .label_tree import label_tree_stage
from .options import stage_options

if TYPE_CHECKING:
    from peft import LoraConfig

logger = logging.get_logger(__name__)

# How long fine-tuning trained and why it stopped, written before the final model.
FINETUNING_SUMMARY = "finetuning_summary.json"
# What a QLoRA run saves: the model that loads everywhere, not the 4-bit one it trained.
QLORA_MERGED = "the adapter merged into the backbone unquantised (--dtype), not the 4-bit backbone it trained on"


@stage_options(
    "fine-tuning",
    "Fine-tuning: the classifier",
    at_least={"label_value_dim": 1, "inattention_k": 1, "label_block_size": 1, "lora_r": 1},
)
class FinetuningArguments:
    """The classifier's head and how its backbone takes part in fine-tuning (Trainer's options come alongside)."""

    # The options that are PlantConfig fields of the same name, handed to the classifier's config as they are.
    head_options: ClassVar[tuple[str, ...]] = ("context_gate", "label_value_dim", "inattention_k", "label_block_size")

    backbone_mode: Literal["frozen", "lora", "qlora", "full"] = field(
        default="frozen",
        metadata={
            "help": "frozen: encode the documents once, train the head on the cached states; lora / qlora: LoRA "
            "adapters on the (4-bit) backbone with the head fully trained; full: train everything."
        },
    )
    label_init: Literal["prototype", "prior", "random"] = field(
        default="prototype",
        metadata={
            "help": "How the label weights and biases start fine-tuning: prototype: the class-mean classifier of the "
            "contexts the (planted) attention reads in each label's training documents, so that a label seen once "
            "starts as a nearest-prototype classifier; prior: random weights, biases at each label's prior log-odds; "
            "random: random weights, zero biases."
        },
    )
    context_gate: bool = field(
        default=True,
        metadata={
            "help": "Each label reads a learned mix of its attention context and the document's mean state, the "
            "mix started from the label's training frequency (PlantConfig.context_gate): labels seen once lean on "
            "the whole document, frequent ones start half on their attention. --context_gate false: attention alone."
        },
    )
    positive_weighting: Literal["none", "propensity"] = field(
        default="none",
        metadata={
            "help": "Weight of each label's positive examples in the loss. none: 1; propensity: the label's inverse "
            "propensity (Jain et al., 2016, from its training frequency: about 9 for a label seen once in 8k "
            "documents, near 1 for frequent ones), the weighting that PSP@k scores."
        },
    )
    label_value_dim: int | None = field(
        default=None, metadata={"help": "Rank of the label weights (default: hidden); lower is cheaper at many labels."}
    )
    inattention_k: int | None = field(default=None, metadata={"help": "Attend to each label's k best tokens."})
    label_block_size: int | None = field(default=None, metadata={"help": "Score labels in blocks of this size."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (of the ranker's adapter too)."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default: 2 r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "LoRA targets, by module name (default: every linear layer of the backbone)."}
    )


def lora_config(args: Any, with_head: bool = True) -> "LoraConfig":
    """The run's LoRA adapter: every linear layer of the backbone, or the named ones. `with_head` keeps the head
    (`score`, and the label tree's `matcher` where there is one) out of the targets and trains it whole, saved with
    the adapter, as PEFT does for any classifier."""
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha or 2 * args.lora_r,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules or "all-linear",
        modules_to_save=["score", "matcher"] if with_head else None,
        bias="none",
    )


def classifier(context: RunContext, quantize: bool = False) -> PlantForMultiLabelClassification:
    """A fresh classifier on the backbone, with the run's head settings (4-bit backbone with `quantize`)."""
    args = context.args
    extra: dict[str, Any] = {}
    if quantize:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
    if args.attn_implementation:
        extra["attn_implementation"] = args.attn_implementation
    head = {name: getattr(args, name) for kind in type(args).__mro__ for name in vars(kind).get("head_options", ())}
    return context.plant_model(**head, dtype=args.dtype, **extra)


def finetune_stage(context: RunContext, ranker: Path | None) -> Path:
    """Fine-tune the (planted) classifier with Trainer; write the plain checkpoint (and the LoRA adapter)."""
    args, training = context.args, context.training
    model_folder = context.folder / "model"
    context.begin_stage("fine-tuning", model_folder / "config.json")
    if (model_folder / "config.json").exists():
        return model_folder
    checkpoints = context.folder / "checkpoints"
    last = last_complete_checkpoint(checkpoints, remove_incomplete=args.resume and context.is_main)
    if last and not args.resume:
        raise ValueError(
            f"{checkpoints} holds an interrupted fine-tuning ({Path(last).name}); pass --resume to continue it, "
            "or delete that folder to start the fine-tuning over."
        )
    set_seed(training.seed)
    model = classifier(context, quantize=args.backbone_mode == "qlora")
    if ranker is not None:
        logger.info(f"planted: {', '.join(plant(model, load_ranker(ranker), tokenizer=context.tokenizer))}")
    _initialize_labels(context, model)
    label_tree_stage(context, model)
    model, train_data, eval_data, collator = _prepare_finetuning(context, model)
    schedule = parse_unfreeze_schedule(training.unfreeze_schedule)
    trainer = PlantTrainer(
        model=model,
        args=dataclasses.replace(training, output_dir=str(checkpoints)),
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        compute_metrics=XMCComputeMetrics.for_split(
            context.vocabulary,
            context.splits["dev"]["labels"],
            threshold=args.threshold,
            by_frequency=False,
            metrics=[*headline_metrics(by_frequency=False), training.metric_for_best_model.removeprefix("eval_")],
        ),
        preprocess_logits_for_metrics=top_k_logits(args.eval_top_k),
        callbacks=[*training.stopping_callbacks(), *([GradualUnfreezing(schedule)] if schedule else [])],
        compute_loss_func=_loss(context),
        stage="fine-tuning",
    )
    trainer.train(resume_from_checkpoint=last if args.resume and last else None)
    if context.is_main:
        write_report(training_summary(trainer), context.folder / FINETUNING_SUMMARY)
        _save_final_model(context, trainer.model, model_folder)
    from accelerate import PartialState

    PartialState().wait_for_everyone()
    return model_folder


def _loss(context: RunContext):
    """Trainer's loss for `--positive_weighting` (None: the model's own)."""
    if context.args.positive_weighting == "none":
        return None
    vocabulary = context.vocabulary
    weights = inverse_propensities(vocabulary.counts, vocabulary.num_documents)
    return positive_weighted_loss(torch.tensor(weights, dtype=torch.float32))


def _initialize_labels(context: RunContext, model: PlantForMultiLabelClassification) -> None:
    """Start the context gates from the label frequencies and the label weights and biases as `--label_init` says,
    from the training split only."""
    vocabulary, attention = context.vocabulary, model.score
    if attention.has_context_gate:
        initialize_context_gates(attention, vocabulary.counts)
    if context.args.label_init == "prior":
        initialize_label_bias(attention, vocabulary.counts, vocabulary.num_documents)
    elif context.args.label_init == "prototype":
        documents, collator = inference_inputs(context, model, "train", with_labels=True)
        if context.args.backbone_mode != "frozen":
            for module in model.modules():
                # bitsandbytes repacks 4-bit weights in place for CPU inference, a layout its training pass then
                # cannot read: the backbone must stay in the training layout.
                if hasattr(module, "support_avx512bf16_for_cpu"):
                    module.support_avx512bf16_for_cpu = False
        prototypes = label_prototypes(model, documents, collator, seed=context.training.seed, progress=context.is_main)
        initialize_label_weights(attention, prototypes, vocabulary.counts, vocabulary.num_documents)


def _prepare_finetuning(context: RunContext, model: PlantForMultiLabelClassification):
    """The model as Trainer should see it, with its training and dev data and collator, per backbone mode."""
    args = context.args
    mode = args.backbone_mode
    if mode == "frozen":
        for parameter in model.model.parameters():
            parameter.requires_grad_(False)
        collator = CachedDocumentCollator(num_labels=model.config.num_labels)
        return model, context.cached("train", model), context.cached("dev", model), collator
    if mode in ("lora", "qlora"):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if mode == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(context.training.gradient_checkpointing)
            )
        model = get_peft_model(model, lora_config(args))
        if context.is_main:
            trainable, total = model.get_nb_trainable_parameters()
            logger.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    collator = PlantDataCollator(num_labels=len(context.vocabulary), pad_token_id=pad_token_id(model))
    columns = ["input_ids", "label_ids"]
    return (
        model,
        context.tokenized("train").select_columns(columns),
        context.tokenized("dev").select_columns(columns),
        collator,
    )


def _save_final_model(context: RunContext, trained, folder: Path) -> None:
    """A plain checkpoint that loads with `from_pretrained`; LoRA adapters are also kept, and merged into it. The
    folder appears whole or not at all: its `config.json` is what marks fine-tuning done."""
    if hasattr(trained, "peft_config"):
        from peft import PeftModel

        adapter = context.folder / "adapter"
        with atomic_path(adapter) as partial:
            trained.save_pretrained(partial)
        base = classifier(context)
        label_tree_stage(context, base)  # the adapter saved the trained matcher: the base needs one to load it
        trained = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        if context.args.backbone_mode == "qlora":
            logger.info(f"model: {QLORA_MERGED}; the test report scores this model.")
    with atomic_path(folder) as partial:
        trained.save_pretrained(partial)
        _reading_tokenizer(context.tokenizer, trained.config).save_pretrained(partial)
        context.vocabulary.save(partial / "label_vocabulary.json")
        if context.descriptions:
            write_json(partial / LABEL_DESCRIPTIONS_FILE, context.descriptions)


def _reading_tokenizer(tokenizer, config) -> Any:
    """The tokenizer saved with the model, its `model_max_length` what the model reads of a document in one piece
    (the backbone's own limit would have `text-classification` warn of indexing errors where the model reads on)."""
    if config.chunk_size is None:
        return tokenizer
    reader = copy.copy(tokenizer)
    reader.model_max_length = config.tokens_read or VERY_LARGE_INTEGER
    return reader


__all__ = [
    "FINETUNING_SUMMARY",
    "QLORA_MERGED",
    "FinetuningArguments",
    "classifier",
    "finetune_stage",
    "lora_config",
]
