"""The planting stages of the recipe: the MIG table of a training split, then a ranker pretrained on it."""

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasets import Dataset
from transformers import AutoTokenizer

from ..cache import CachedDocuments, TokenStateCache
from ..data import Corpus, LabelVocabulary, load_corpus, tokenize_split
from ..lora import lora_config_for
from ..modeling_plant import PlantForMultiLabelClassification
from ..planting import MIGTable, build_mig_table, tokenizer_fingerprint
from ..planting.pretraining import (
    RankerTrainingArguments,
    evaluate_ranker,
    history,
    static_label_dataset,
    trainer_for_ranker,
)
from ..planting.ranking import DocumentRanker, RankerCollator, StaticListCollator, StaticRanker
from ..planting.transplant import RankerConfig, save_ranker
from .trainer import last_complete_checkpoint, training_summary

# Share of the training split held out to evaluate the ranker when the corpus has no dev split.
HELD_OUT_SHARE = 0.05


@dataclass
class MigArguments:
    """Build the MIG table of a corpus's training split with a backbone's tokenizer."""

    data: str = field(metadata={"help": "The corpus: a folder of a known layout or a Hub dataset id."})
    backbone: str = field(metadata={"help": "The backbone (Hub id or folder) whose tokenizer splits the text."})
    output: str = field(default="plant-mig", metadata={"help": "Folder to write the MIG table to."})
    top_k: int = field(default=256, metadata={"help": "Tokens kept per label."})
    num_grades: int = field(default=8, metadata={"help": "Relevance grades of the kept tokens (1..G)."})
    max_tokens: int | None = field(default=None, metadata={"help": "Read at most this many tokens per document."})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "On a bad record: stop or skip."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the backbone's own tokenizer code."})


def run_mig(args: MigArguments) -> MIGTable:
    corpus = load_corpus(args.data, splits=["train"], on_error=args.on_error)
    print(corpus)
    tokenizer = AutoTokenizer.from_pretrained(args.backbone, trust_remote_code=args.trust_remote_code)
    train = corpus.splits["train"]
    table = build_mig_table(
        train["text"],
        train["labels"],
        tokenizer,
        top_k=args.top_k,
        num_grades=args.num_grades,
        max_tokens=args.max_tokens,
    )
    table.save(args.output)
    stats = table.config.stats
    print(
        f"MIG table of {table.num_labels} labels x {stats['distinct_tokens']} tokens "
        f"({table.token_ids.size} kept pairs) from {table.config.num_documents} training documents "
        f"in {stats['seconds']} s -> {args.output}"
    )
    return table


@dataclass
class PretrainArguments:
    """Pretrain the label attention as a ranker of each document's tokens by their MIG grades."""

    data: str = field(metadata={"help": "The corpus the MIG table was built from."})
    backbone: str = field(metadata={"help": "The backbone (Hub id or folder) the classifier will use."})
    mig: str = field(metadata={"help": "The MIG table folder (from plant-hf mig)."})
    output: str = field(default="plant-ranker", metadata={"help": "Folder to write the ranker to."})
    ranker: Literal["contextual", "static", "both"] = field(
        default="contextual",
        metadata={
            "help": "contextual: backbone states -> key projection vs label queries; static: token and label "
            "factors fitted to the MIG grades alone (an additive prior); both: static, then contextual on top."
        },
    )
    backbone_mode: Literal["frozen", "lora"] = field(
        default="frozen",
        metadata={
            "help": "frozen: encode the documents once and train on the cached states; lora: adapt the "
            "backbone with LoRA while ranking (the adapter is planted, merged, with the attention)."
        },
    )
    chunk_size: int = field(default=256, metadata={"help": "Tokens per chunk."})
    max_chunks: int = field(default=4, metadata={"help": "Chunks read per document."})
    attention_dim: int | None = field(default=None, metadata={"help": "Key space size (default: hidden size)."})
    prior_rank: int = field(default=64, metadata={"help": "Rank of the static prior's token and label factors."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (backbone_mode=lora)."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Keep the frozen backbone's encoded states here, for reuse by later runs."}
    )
    encode_batch_size: int = field(default=16, metadata={"help": "Documents per batch when encoding."})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "On a bad record: stop or skip."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the backbone's own code."})


def _evaluation_split(corpus: Corpus, seed: int) -> tuple[Dataset, Dataset, str]:
    """The ranker's training documents and held-out documents (dev, else a slice of train; never test)."""
    train = corpus.splits["train"]
    if "dev" in corpus.splits:
        return train, corpus.splits["dev"], "dev split"
    parts = train.train_test_split(test_size=HELD_OUT_SHARE, seed=seed)
    note = f"{len(parts['test'])} training documents held out (no dev split; the MIG table has seen them)"
    return parts["train"], parts["test"], note


def run_pretrain(args: PretrainArguments, training: RankerTrainingArguments) -> Path:
    """Train the ranker and write its folder (planted tensors, config with held-out nDCG, LoRA adapter)."""
    mig = MIGTable.load(args.mig)
    corpus = load_corpus(args.data, splits=["train", "dev"], on_error=args.on_error)
    vocabulary = LabelVocabulary.from_training(corpus.splits["train"]["labels"])
    tokenizer = AutoTokenizer.from_pretrained(args.backbone, trust_remote_code=args.trust_remote_code)
    mig.check_compatible(tokenizer, vocabulary.labels, name=args.mig)
    train_docs, held_out, held_out_note = _evaluation_split(corpus, training.seed)
    tokenized = {
        name: tokenize_split(split, tokenizer, vocabulary, args.chunk_size, args.max_chunks, split=name)[0]
        for name, split in (("train", train_docs), ("held-out", held_out))
    }
    return pretrain_ranker(
        ranking_model(
            args.backbone,
            vocabulary,
            args.ranker,
            args.chunk_size,
            args.max_chunks,
            args.attention_dim,
            args.prior_rank,
            args.trust_remote_code,
        ),
        mig,
        tokenizer,
        tokenized,
        RankerSetup(
            kind=args.ranker,
            backbone_mode=args.backbone_mode,
            lora_r=args.lora_r,
            cache_dir=args.cache_dir,
            encode_batch_size=args.encode_batch_size,
            held_out=held_out_note,
        ),
        training,
        Path(args.output),
        source={"backbone": args.backbone, **asdict(args)},
    )


@dataclass
class RankerSetup:
    """How a ranker is built around the backbone (the training itself is in `RankerTrainingArguments`)."""

    kind: str = "contextual"
    backbone_mode: str = "frozen"
    lora_r: int = 16
    cache_dir: str | None = None
    encode_batch_size: int = 16
    held_out: str = "dev split"
    resume: bool = False


def ranking_model(
    backbone: str,
    vocabulary: LabelVocabulary,
    kind: str,
    chunk_size: int,
    max_chunks: int | None,
    attention_dim: int | None = None,
    prior_rank: int = 64,
    trust_remote_code: bool = False,
) -> PlantForMultiLabelClassification:
    """The backbone (unquantised) with a fresh label attention for the ranker to train."""
    return PlantForMultiLabelClassification.from_backbone(
        backbone,
        id2label=vocabulary.id2label,
        chunk_size=chunk_size,
        max_chunks=max_chunks,
        label_attention_dim=attention_dim,
        static_prior_rank=prior_rank if kind in ("static", "both") else None,
        trust_remote_code=trust_remote_code,
    )


def pretrain_ranker(
    model: PlantForMultiLabelClassification,
    mig: MIGTable,
    tokenizer,
    tokenized: dict[str, Dataset],
    setup: RankerSetup,
    training: RankerTrainingArguments,
    output: Path,
    source: dict[str, Any],
    save: bool = True,
) -> Path:
    """Train `model.label_attention` as a ranker on the `train` documents of `tokenized`, report its nDCG on the
    `held-out` ones against its random initialisation, and write the ranker folder (when `save`: in a distributed
    run every process trains and the main one writes)."""
    metrics: dict[str, Any] = {"held_out": setup.held_out, "ndcg_k": training.ndcg_k}
    if setup.kind in ("static", "both"):
        metrics["static"] = _pretrain_static(model, mig, tokenized, training, output)
    peft_backbone = None
    if setup.kind in ("contextual", "both"):
        if setup.backbone_mode == "lora":
            from peft import get_peft_model

            model.model = get_peft_model(
                model.model, lora_config_for(model.model, model.config.text_config.model_type, r=setup.lora_r)
            )
            peft_backbone = model.model
        metrics["contextual"] = _pretrain_contextual(model, mig, tokenized, tokenizer, setup, training, output)
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    config = RankerConfig(
        kind="contextual+static" if setup.kind == "both" else setup.kind,
        labels=labels,
        label_fingerprint=LabelVocabulary(labels, np.zeros(len(labels)), 0).fingerprint,
        tokenizer_name=str(getattr(tokenizer, "name_or_path", "")),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        backbone=str(source.get("backbone", "")),
        hidden_size=model.config.text_config.hidden_size,
        attention_dim=model.config.label_attention_dim,
        prior_rank=model.config.static_prior_rank,
        vocab_size=model.config.text_config.vocab_size,
        metrics=metrics,
        training={**source, **asdict(setup), **asdict(training)},
    )
    if save:
        save_ranker(output, model.label_attention, config, peft_backbone=peft_backbone)
        shutil.rmtree(output / "checkpoints", ignore_errors=True)  # the ranker folder now holds the best epoch
        _print_summary(metrics, output)
    return output


def _pretrain_static(model, mig, tokenized, training, output: Path) -> dict[str, Any]:
    ranker = StaticRanker(model.label_attention, temperature=training.temperature, ndcg_k=training.ndcg_k)
    on_documents = DocumentRanker(model.label_attention, contextual=False, ndcg_k=training.ndcg_k)
    held_out = tokenized["held-out"]
    collator = RankerCollator(mig, max_labels=training.max_labels, pad_token_id=_pad_id(model))
    before = evaluate_ranker(on_documents, held_out, collator)["ndcg"]
    trainer = trainer_for_ranker(
        ranker,
        static_label_dataset(mig),
        StaticListCollator(mig, training.negatives, training.seed),
        training,
        output / "checkpoints-static",
        min_steps=training.static_min_steps,
    )
    trainer.train()
    after = evaluate_ranker(on_documents, held_out, collator)["ndcg"]
    return {"random_init": before, "trained": after, "history": history(trainer)}


def _pretrain_contextual(model, mig, tokenized, tokenizer, setup, training, output: Path) -> dict[str, Any]:
    collator = RankerCollator(mig, max_labels=training.max_labels, pad_token_id=_pad_id(model))
    if setup.backbone_mode == "frozen":
        fingerprint = tokenizer_fingerprint(tokenizer)
        documents = {
            name: CachedDocuments(
                TokenStateCache.get_or_build(
                    model,
                    split,
                    fingerprint,
                    setup.cache_dir,
                    batch_size=setup.encode_batch_size,
                    pad_token_id=_pad_id(model),
                ),
                split["label_ids"],
            )
            for name, split in tokenized.items()
        }
        ranker = DocumentRanker(
            model.label_attention,
            temperature=training.temperature,
            ndcg_k=training.ndcg_k,
            max_relevant=training.max_relevant,
        )
    else:
        documents = {name: split.select_columns(["input_ids", "label_ids"]) for name, split in tokenized.items()}
        ranker = DocumentRanker(
            model.label_attention,
            encoder=model,
            temperature=training.temperature,
            ndcg_k=training.ndcg_k,
            max_relevant=training.max_relevant,
        )
    before = evaluate_ranker(ranker, documents["held-out"], collator)["ndcg"]
    checkpoints = output / "checkpoints"
    trainer = trainer_for_ranker(
        ranker, documents["train"], collator, training, checkpoints, eval_dataset=documents["held-out"]
    )
    trainer.train(
        resume_from_checkpoint=last_complete_checkpoint(checkpoints, remove_incomplete=True) if setup.resume else None
    )
    after = evaluate_ranker(ranker, documents["held-out"], collator)["ndcg"]
    return {"random_init": before, "trained": after, **training_summary(trainer), "history": history(trainer)}


def _pad_id(model: PlantForMultiLabelClassification) -> int:
    return getattr(model.config.text_config, "pad_token_id", None) or 0


def _print_summary(metrics: dict[str, Any], output: Path) -> None:
    for stage in ("static", "contextual"):
        if stage in metrics:
            result = metrics[stage]
            print(
                f"{stage} ranker, held-out token-ranking nDCG@{metrics['ndcg_k']}: {result['random_init']:.4f} at "
                f"random init -> "
                f"{result['trained']:.4f} trained"
            )
    print(f"held-out documents: {metrics['held_out']}\nranker -> {output}")


__all__ = [
    "MigArguments",
    "PretrainArguments",
    "RankerSetup",
    "pretrain_ranker",
    "ranking_model",
    "run_mig",
    "run_pretrain",
]
