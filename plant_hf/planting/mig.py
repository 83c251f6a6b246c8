"""Mutual-information-gain (MIG) tables: which tokens of the backbone's vocabulary are evidence for each label.

From the training split only: token presence `X` (documents x vocabulary) and labels `Y` (documents x labels),
both sparse; joint counts `X^T Y` by one sparse product per block of labels; for every co-occurring pair the
mutual information of the 2x2 presence table normalised as `I / (H(T) + H(L) - I)`. Only positively associated
pairs are evidence and kept (a token that avoids a label's documents is not a reason to attend to it). Each
label keeps its `top_k` tokens, graded `1..num_grades` by per-label rank quantiles that are finer at the top
(the best 1/2^(G-1) of a label's tokens get grade G, ..., the lower half grade 1); every other token is grade 0.
Memory grows with the non-zeros, never with vocabulary x labels.
"""

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from scipy import sparse
from scipy.special import xlogy
from transformers import PreTrainedTokenizerBase

from ..data import LabelVocabulary
from ..files import atomic_path, write_json

TABLE_FILE = "mig_table.safetensors"
CONFIG_FILE = "mig_config.json"


class ArtifactMismatchError(ValueError):
    """An artifact (MIG table, ranker) built for another tokenizer or label set than the one at hand."""


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of how the tokenizer splits text: its vocabulary, normaliser and pre-tokeniser, not its runtime state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        description = json.loads(backend.to_str())
        for runtime_setting in ("truncation", "padding"):
            description.pop(runtime_setting, None)
        text = json.dumps(description, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode()).hexdigest()[:16]


@dataclass
class MIGConfig:
    """What a MIG table was built from and with."""

    labels: list[str]
    label_fingerprint: str
    tokenizer_name: str
    tokenizer_fingerprint: str
    vocab_size: int
    num_documents: int
    top_k: int
    num_grades: int
    max_tokens: int | None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class MIGTable:
    """Each label's best tokens, best first, with normalised MI and graded relevance.

    The tokens of label `l` are `token_ids[label_indptr[l]:label_indptr[l + 1]]`; `token_counts` holds each
    vocabulary token's training document frequency.
    """

    config: MIGConfig
    label_indptr: np.ndarray
    token_ids: np.ndarray
    scores: np.ndarray
    grades: np.ndarray
    token_counts: np.ndarray
    _keys: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_labels(self) -> int:
        return len(self.config.labels)

    def label_tokens(self, label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, normalised MI and grades of one label, best first."""
        where = slice(self.label_indptr[label], self.label_indptr[label + 1])
        return self.token_ids[where], self.scores[where], self.grades[where]

    def _sorted_keys(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None:
            labels = np.repeat(np.arange(self.num_labels), np.diff(self.label_indptr))
            keys = labels * self.config.vocab_size + self.token_ids
            order = np.argsort(keys, kind="stable")
            self._keys = np.stack([keys[order], self.grades[order].astype(np.int64)])
        return self._keys[0], self._keys[1]

    def lookup_grades(self, token_ids: Any, label_ids: Any) -> torch.Tensor:
        """The grade of each `(token_ids[i], label_ids[i])` pair (broadcast), 0 where the token is not evidence."""
        keys, grades = (torch.from_numpy(array) for array in self._sorted_keys())
        token_ids, label_ids = torch.broadcast_tensors(torch.as_tensor(token_ids), torch.as_tensor(label_ids))
        query = label_ids.long() * self.config.vocab_size + token_ids.long()
        position = torch.searchsorted(keys, query.reshape(-1)).clamp(max=max(0, keys.numel() - 1))
        found = keys[position] == query.reshape(-1) if keys.numel() else torch.zeros_like(position, dtype=torch.bool)
        result = torch.where(found, grades[position], torch.zeros_like(position))
        return result.view(query.shape).to(torch.int8)

    def check_compatible(
        self, tokenizer: PreTrainedTokenizerBase | None = None, labels: Sequence[str] | None = None, name: str = ""
    ) -> None:
        """Refuse a table built with another tokenizer or for another label set, saying how to rebuild it."""
        where = f"MIG table {name}".strip()
        if tokenizer is not None and tokenizer_fingerprint(tokenizer) != self.config.tokenizer_fingerprint:
            raise ArtifactMismatchError(
                f"{where} was built with tokenizer {self.config.tokenizer_name!r} "
                f"({self.config.tokenizer_fingerprint}); this one ({getattr(tokenizer, 'name_or_path', '?')}) splits "
                "text differently. Rebuild the table with this backbone's tokenizer (plant-hf mig --backbone ...)."
            )
        if labels is not None and list(labels) != self.config.labels:
            ours, theirs = set(self.config.labels), set(labels)
            raise ArtifactMismatchError(
                f"{where} was built for {len(ours)} labels, not these {len(theirs)} "
                f"({len(theirs - ours)} new, {len(ours - theirs)} missing, or another order). "
                "Rebuild it from this training split (plant-hf mig --data ...)."
            )

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "label_indptr": self.label_indptr.astype(np.int64),
            "token_ids": self.token_ids.astype(np.int64),
            "scores": self.scores.astype(np.float32),
            "grades": self.grades.astype(np.int8),
            "token_counts": self.token_counts.astype(np.int64),
        }
        with atomic_path(folder / TABLE_FILE) as partial:
            save_file(tensors, str(partial))
        write_json(folder / CONFIG_FILE, asdict(self.config))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "MIGTable":
        folder = Path(folder)
        if not (folder / TABLE_FILE).exists():
            raise FileNotFoundError(f"{folder} holds no MIG table ({TABLE_FILE}); build one with plant-hf mig.")
        tensors = load_file(str(folder / TABLE_FILE))
        config = MIGConfig(**json.loads((folder / CONFIG_FILE).read_text()))
        return cls(
            config,
            tensors["label_indptr"],
            tensors["token_ids"],
            tensors["scores"],
            tensors["grades"],
            tensors["token_counts"],
        )


def token_presence(
    token_lists: Sequence[Sequence[int]], vocab_size: int, excluded: Sequence[int] = ()
) -> sparse.csr_matrix:
    """Binary documents x vocabulary matrix of which tokens each document contains."""
    rows = np.repeat(np.arange(len(token_lists)), [len(tokens) for tokens in token_lists])
    columns = np.fromiter((token for tokens in token_lists for token in tokens), dtype=np.int64, count=rows.size)
    keep = ~np.isin(columns, np.asarray(excluded, dtype=np.int64))
    matrix = sparse.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], columns[keep])), shape=(len(token_lists), vocab_size)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def normalized_mutual_information(
    joint: np.ndarray, token_count: np.ndarray, label_count: np.ndarray, documents: int
) -> np.ndarray:
    """`I(T;L) / (H(T) + H(L) - I(T;L))` of presence variables from the 2x2 counts (natural log; 0 where undefined).

    `joint`: documents with both the token and the label; `token_count`, `label_count`: documents with each.
    """
    n = float(documents)
    n11 = joint.astype(np.float64)
    n10 = token_count - n11
    n01 = label_count - n11
    n00 = n - token_count - label_count + n11
    p_token, p_label = token_count / n, label_count / n
    information = np.zeros_like(n11)
    for count, p_a, p_b in (
        (n11, p_token, p_label),
        (n10, p_token, 1 - p_label),
        (n01, 1 - p_token, p_label),
        (n00, 1 - p_token, 1 - p_label),
    ):
        p = count / n
        information += xlogy(p, p) - xlogy(p, p_a * p_b)
    entropy_token = -(xlogy(p_token, p_token) + xlogy(1 - p_token, 1 - p_token))
    entropy_label = -(xlogy(p_label, p_label) + xlogy(1 - p_label, 1 - p_label))
    joint_entropy = entropy_token + entropy_label - information
    return np.divide(information, joint_entropy, out=np.zeros_like(information), where=joint_entropy > 1e-12)


def rank_grades(ranks: np.ndarray, kept: np.ndarray, num_grades: int) -> np.ndarray:
    """Grade `1 + min(G - 1, floor(log2(kept / (rank + 1))))`: the top 1/2^(G-1) of a label's kept tokens get G."""
    grades = 1 + np.floor(np.log2(kept / (ranks + 1.0)))
    return np.clip(grades, 1, num_grades).astype(np.int8)


def build_mig_table(
    texts: Sequence[str],
    label_lists: Sequence[Sequence[str]],
    tokenizer: PreTrainedTokenizerBase,
    top_k: int = 256,
    num_grades: int = 8,
    max_tokens: int | None = None,
    label_block_size: int = 256,
    batch_size: int = 1000,
    progress: bool = True,
    catalogue: Sequence[str] = (),
) -> MIGTable:
    """Build the MIG table of a training split.

    Args:
        texts, label_lists: the training documents (never dev/test ones) and their label names.
        tokenizer: the backbone's tokenizer; special tokens are ignored.
        top_k: tokens kept per label.
        num_grades: relevance grades of the kept tokens (1..num_grades; other tokens are 0).
        max_tokens: read at most this many tokens of each document (None: all of it).
        label_block_size: labels per sparse product; bounds the peak memory.
        catalogue: further labels of the task that no training document carries (they get no evidence tokens).
    """
    from tqdm.auto import tqdm

    if len(texts) != len(label_lists):
        raise ValueError(f"{len(texts)} texts but {len(label_lists)} label lists.")
    start = time.perf_counter()
    texts = list(texts)
    vocabulary = LabelVocabulary.from_training(label_lists, catalogue=catalogue)
    vocab_size = len(tokenizer)
    rows, token_total = [], 0
    for begin in tqdm(range(0, len(texts), batch_size), desc="MIG: tokenizing", disable=not progress, unit="batch"):
        encoded = tokenizer(
            texts[begin : begin + batch_size],
            add_special_tokens=False,
            truncation=max_tokens is not None,
            max_length=max_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        token_total += sum(len(tokens) for tokens in encoded)
        rows.append(token_presence(encoded, vocab_size, excluded=tokenizer.all_special_ids))
    presence = sparse.vstack(rows, format="csr")
    targets = _label_matrix(vocabulary.encode(label_lists), len(vocabulary))
    token_count = np.asarray(presence.sum(axis=0)).ravel()
    presence_t = presence.T.tocsr()
    indptr, token_ids, scores, grades = [np.zeros(1, dtype=np.int64)], [], [], []
    blocks = range(0, len(vocabulary), label_block_size)
    for begin in tqdm(blocks, desc="MIG: label blocks", disable=not progress, unit="block"):
        block = targets[:, begin : begin + label_block_size]
        joint = (presence_t @ block).tocoo()
        tokens, labels, n11 = joint.row, joint.col, joint.data
        count_t, count_l = token_count[tokens], vocabulary.counts[begin + labels]
        positive = n11 * len(texts) > count_t * count_l
        tokens, labels = tokens[positive], labels[positive]
        mi = normalized_mutual_information(n11[positive], count_t[positive], count_l[positive], len(texts))
        block_indptr, block_tokens, block_scores, block_grades = _top_k_per_label(
            tokens, labels, mi, block.shape[1], top_k, num_grades
        )
        indptr.append(block_indptr[1:] + indptr[-1][-1])
        token_ids.append(block_tokens)
        scores.append(block_scores)
        grades.append(block_grades)
    config = MIGConfig(
        labels=vocabulary.labels,
        label_fingerprint=vocabulary.fingerprint,
        tokenizer_name=str(getattr(tokenizer, "name_or_path", "")),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=vocab_size,
        num_documents=len(texts),
        top_k=top_k,
        num_grades=num_grades,
        max_tokens=max_tokens,
        stats={
            "seconds": round(time.perf_counter() - start, 2),
            "token_presence_nonzeros": int(presence.nnz),
            "distinct_tokens": int((token_count > 0).sum()),
            "tokens_per_document": token_total / max(1, len(texts)),
        },
    )
    return MIGTable(
        config,
        np.concatenate(indptr),
        np.concatenate(token_ids),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(grades),
        token_count.astype(np.int64),
    )


def _label_matrix(label_ids: Sequence[Sequence[int]], num_labels: int) -> sparse.csc_matrix:
    rows = np.repeat(np.arange(len(label_ids)), [len(ids) for ids in label_ids])
    columns = np.fromiter((label for ids in label_ids for label in ids), dtype=np.int64, count=rows.size)
    data = np.ones(rows.size, dtype=np.float32)
    return sparse.csc_matrix((data, (rows, columns)), shape=(len(label_ids), num_labels))


def _top_k_per_label(
    tokens: np.ndarray, labels: np.ndarray, scores: np.ndarray, num_labels: int, top_k: int, num_grades: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label: its `top_k` best tokens (ties to the lower token id), their scores and grades, as CSC arrays."""
    order = np.lexsort((tokens, -scores, labels))
    tokens, labels, scores = tokens[order], labels[order], scores[order]
    starts = np.searchsorted(labels, np.arange(num_labels))
    rank = np.arange(labels.size) - starts[labels]
    keep = rank < top_k
    tokens, labels, scores = tokens[keep], labels[keep], scores[keep]
    starts = np.searchsorted(labels, np.arange(num_labels))
    kept_per_label = np.bincount(labels, minlength=num_labels)
    # Tied scores share the rank of the first of them, hence the same grade.
    first_of_tie = np.ones(labels.size, dtype=bool)
    first_of_tie[1:] = (labels[1:] != labels[:-1]) | (scores[1:] != scores[:-1])
    tie_rank = np.maximum.accumulate(np.where(first_of_tie, np.arange(labels.size), 0)) - starts[labels]
    grades = rank_grades(tie_rank, kept_per_label[labels], num_grades)
    indptr = np.concatenate([[0], np.cumsum(kept_per_label)])
    return indptr, tokens, scores, grades


__all__ = [
    "ArtifactMismatchError",
    "MIGConfig",
    "MIGTable",
    "build_mig_table",
    "normalized_mutual_information",
    "rank_grades",
    "token_presence",
    "tokenizer_fingerprint",
]
