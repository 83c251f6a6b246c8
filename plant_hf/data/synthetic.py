"""A deterministic synthetic corpus shaped like ICD coding: long noisy documents, a long tail of labels, and for
each label a few evidence words that appear sparsely in its documents (and now and then elsewhere)."""

import json
import os
from pathlib import Path

import numpy as np

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "da", "fi", "go", "hu", "je", "ba")


def synthetic_words(count: int, seed: int = 0) -> list[str]:
    """`count` distinct pronounceable pseudo-words (three syllables each)."""
    generator = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < count:
        words["".join(generator.choice(_SYLLABLES, size=3))] = None
    return list(words)


def synthetic_records(
    num_documents: int,
    num_labels: int = 40,
    words: list[str] | None = None,
    evidence_per_label: int = 3,
    length: tuple[int, int] = (60, 200),
    labels_per_document: tuple[int, int] = (1, 4),
    stray_evidence: float = 0.02,
    seed: int = 0,
    id_prefix: str = "doc",
) -> list[dict]:
    """Documents `{"id", "text", "labels"}`: label `L{i}` is drawn with Zipf-like frequency; each of a document's
    labels puts one or two of its evidence words into the noise; with probability `stray_evidence` per document a
    random label's evidence word appears without the label."""
    vocabulary = words or synthetic_words(num_labels * evidence_per_label + 400, seed=1234)
    if len(vocabulary) <= num_labels * evidence_per_label:
        raise ValueError("Too few words for the labels' evidence and the noise.")
    evidence = np.array(vocabulary[: num_labels * evidence_per_label]).reshape(num_labels, evidence_per_label)
    noise = vocabulary[num_labels * evidence_per_label :]
    popularity = 1.0 / np.arange(1, num_labels + 1) ** 0.9
    popularity /= popularity.sum()
    generator = np.random.default_rng(seed)
    records = []
    for index in range(num_documents):
        size = generator.integers(labels_per_document[0], labels_per_document[1] + 1)
        labels = np.sort(generator.choice(num_labels, size=min(size, num_labels), replace=False, p=popularity))
        tokens = list(generator.choice(noise, size=generator.integers(length[0], length[1] + 1)))
        for label in labels:
            tokens += list(generator.choice(evidence[label], size=generator.integers(1, 3), replace=False))
        if generator.random() < stray_evidence:
            tokens.append(str(generator.choice(evidence[generator.integers(num_labels)])))
        generator.shuffle(tokens)
        records.append({"id": f"{id_prefix}{index}", "text": " ".join(tokens), "labels": [f"L{i}" for i in labels]})
    return records


def write_synthetic_corpus(folder: str | os.PathLike, sizes: dict[str, int] | None = None, **kwargs) -> Path:
    """Write train/dev/test JSON lines of a synthetic corpus (same labels and evidence in every split)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (split, count) in enumerate((sizes or {"train": 400, "dev": 100, "test": 100}).items()):
        records = synthetic_records(
            count,
            seed=kwargs.get("seed", 0) * 100 + offset,
            id_prefix=f"{split}-",
            **{k: v for k, v in kwargs.items() if k != "seed"},
        )
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


__all__ = ["synthetic_records", "synthetic_words", "write_synthetic_corpus"]
