"""The label vocabulary: built from the training split only; unseen labels elsewhere are counted, not lost."""

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import sparse

from ..files import write_json
from .readers import DataFormatError

_MAX_EXAMPLES = 5


@dataclass
class UnseenLabels:
    """Labels of a split that the training split never uses: the model cannot predict them."""

    split: str
    distinct: int = 0
    occurrences: int = 0
    documents: int = 0
    examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.distinct:
            return f"{self.split}: every label was seen in training"
        return (
            f"{self.split}: {self.distinct} labels unseen in training ({self.occurrences} occurrences in "
            f"{self.documents} documents, e.g. {', '.join(self.examples)}); they count as misses"
        )


@dataclass
class LabelVocabulary:
    """Training labels in index order (sorted by name), with their training document frequencies."""

    labels: list[str]
    counts: np.ndarray
    num_documents: int

    @classmethod
    def from_training(cls, label_lists: Iterable[Sequence[str]], catalogue: Iterable[str] = ()) -> "LabelVocabulary":
        """The labels used by the training documents, and those of a `catalogue` that none uses (with count 0);
        refuses a training split without any label."""
        counts: Counter = Counter()
        documents = 0
        for labels in label_lists:
            counts.update(set(labels))
            documents += 1
        if not counts:
            raise DataFormatError(
                f"The training split ({documents} documents) has no labels at all; a multi-label classifier needs "
                "labelled training documents. Check the labels field/column of the training data."
            )
        names = sorted(set(counts) | set(catalogue))
        return cls(labels=names, counts=np.array([counts[name] for name in names]), num_documents=documents)

    def __len__(self) -> int:
        return len(self.labels)

    # Built once: callers look labels up per document, and a dict built per lookup made that quadratic.
    @cached_property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.labels)}

    @cached_property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def fingerprint(self) -> str:
        """A short hash of the label list, to tell artifacts of different label sets apart."""
        return hashlib.sha256("\n".join(self.labels).encode()).hexdigest()[:16]

    def encode(self, label_lists: Iterable[Sequence[str]]) -> list[list[int]]:
        """Indices of the known labels of each document (unseen labels are left out here; see `unseen`)."""
        label2id = self.label2id
        return [[label2id[label] for label in labels if label in label2id] for labels in label_lists]

    def unseen(self, label_lists: Iterable[Sequence[str]], split: str) -> UnseenLabels:
        label2id = self.label2id
        report = UnseenLabels(split=split)
        distinct: dict[str, None] = {}
        for labels in label_lists:
            missing = [label for label in labels if label not in label2id]
            report.occurrences += len(missing)
            report.documents += bool(missing)
            distinct.update(dict.fromkeys(missing))
        report.distinct = len(distinct)
        report.examples = list(distinct)[:_MAX_EXAMPLES]
        return report

    def evaluation_targets(self, label_lists: Sequence[Sequence[str]]) -> tuple[sparse.csr_matrix, list[str]]:
        """Truths over the training labels followed by the split's unseen labels, and those unseen labels' names.

        Metrics given this matrix count the unseen labels as relevant labels that the model never predicts.
        """
        label2id = dict(self.label2id)
        unseen: list[str] = []
        rows, columns = [], []
        for row, labels in enumerate(label_lists):
            for label in dict.fromkeys(labels):
                if label not in label2id:
                    label2id[label] = len(label2id)
                    unseen.append(label)
                rows.append(row)
                columns.append(label2id[label])
        matrix = sparse.csr_matrix(
            (np.ones(len(rows)), (rows, columns)), shape=(len(label_lists), len(self) + len(unseen))
        )
        return matrix, unseen

    def save(self, path: str | os.PathLike) -> None:
        payload = {
            "labels": self.labels,
            "counts": self.counts.tolist(),
            "num_documents": self.num_documents,
            "fingerprint": self.fingerprint,
        }
        write_json(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LabelVocabulary":
        payload = json.loads(Path(path).read_text())
        return cls(labels=payload["labels"], counts=np.array(payload["counts"]), num_documents=payload["num_documents"])


__all__ = ["LabelVocabulary", "UnseenLabels"]
