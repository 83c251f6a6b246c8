"""Tokenisation of documents into chunks of `chunk_size` tokens, each with the tokenizer's special tokens."""

from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from .labels import LabelVocabulary


@dataclass
class TruncationReport:
    """How much of a split's text the chunk limit kept."""

    split: str
    documents: int
    truncated_documents: int
    kept_tokens: int
    dropped_tokens: int
    chunk_size: int
    max_chunks: int | None

    def __str__(self) -> str:
        limit = "no chunk limit" if self.max_chunks is None else f"at most {self.max_chunks} chunks"
        text = f"{self.split}: {self.documents} documents in chunks of {self.chunk_size} tokens ({limit}), "
        text += f"{self.kept_tokens} tokens kept"
        if self.truncated_documents:
            share = 100.0 * self.dropped_tokens / max(1, self.kept_tokens + self.dropped_tokens)
            text += (
                f"; {self.truncated_documents} documents truncated, {self.dropped_tokens} tokens ({share:.1f}%) dropped"
            )
        return text


def tokenize_split(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    vocabulary: LabelVocabulary,
    chunk_size: int,
    max_chunks: int | None = None,
    split: str = "train",
    batch_size: int = 256,
    num_proc: int | None = None,
) -> tuple[Dataset, TruncationReport]:
    """Add `input_ids` (a list of chunks per document) and `label_ids` (known labels) to a split.

    Each chunk holds at most `chunk_size` tokens including the special tokens the tokenizer adds to every chunk
    (`[CLS] ... [SEP]`, `<s> ...`). Chunks past `max_chunks` are dropped and counted in the report. The `text`
    column is removed; `id` and `labels` (names, unseen ones included, for evaluation) stay.
    """
    specials = tokenizer.num_special_tokens_to_add()
    if chunk_size <= specials:
        raise ValueError(f"chunk_size={chunk_size} leaves no room for text next to {specials} special tokens.")
    label2id = vocabulary.label2id

    def encode(batch: dict) -> dict:
        encoded = tokenizer(
            batch["text"],
            truncation=True,
            max_length=chunk_size,
            return_overflowing_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        chunks: list[list[list[int]]] = [[] for _ in batch["text"]]
        for chunk, document in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"], strict=True):
            chunks[document].append(chunk)
        kept = [document[:max_chunks] if max_chunks else document for document in chunks]
        return {
            "input_ids": kept,
            "label_ids": [[label2id[label] for label in labels if label in label2id] for labels in batch["labels"]],
            "num_tokens": [sum(len(chunk) - specials for chunk in document) for document in kept],
            "dropped_tokens": [
                sum(len(chunk) - specials for chunk in full[len(short) :])
                for full, short in zip(chunks, kept, strict=True)
            ],
        }

    tokenized = dataset.map(
        encode,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=["text"],
        desc=f"Tokenizing {split}",
    )
    dropped = tokenized["dropped_tokens"]
    report = TruncationReport(
        split=split,
        documents=len(tokenized),
        truncated_documents=sum(count > 0 for count in dropped),
        kept_tokens=sum(tokenized["num_tokens"]),
        dropped_tokens=sum(dropped),
        chunk_size=chunk_size,
        max_chunks=max_chunks,
    )
    return tokenized, report


__all__ = ["TruncationReport", "tokenize_split"]
