"""The lexical channel: TF-IDF word uni- and bigrams of the whole document, each label scored by a linear classifier
(squared hinge, as PECOS XR-Linear's rankers: napkinxc's binary relevance, one per label, or its probabilistic label
tree, which trains and predicts in time logarithmic in the labels), and those probabilities fused with the planted
attention's.

A frozen encoder reading the first chunks of a document blurs the exact words that name a rare or mid-frequency
subject; a linear model on the bigrams of the whole text keeps them. The two rank differently enough that their
weighted mean beats each (measured in BENCHMARKS.md). The channel is saved in a model folder's `lexical/`: the
vocabulary as JSON, the inverse document frequencies as safetensors and the classifiers in napkinxc's own binary
format (never pickle).
"""

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from transformers.utils import logging

from .files import atomic_path
from .metrics import TopKPredictions

logger = logging.get_logger(__name__)

LEXICAL_FOLDER = "lexical"
SETTINGS_FILE = "lexical.json"
IDF_FILE = "idf.safetensors"
# napkinxc's files of a trained model of each kind.
CLASSIFIER_FILES = {"br": ("args.bin", "weights.bin"), "plt": ("args.bin", "weights.bin", "tree.bin", "tree.txt")}
# The tree's arity: as PECOS's XR-Linear, 16 children a node.
TREE_ARITY = 16
# Labels of the lexical channel kept per document for the fusion (the others add 0).
FUSED_TOP_K = 100
# The weights of the lexical channel that `tune_lexical_weight` tries (0: the model alone, 1: the channel alone).
LEXICAL_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def labels_fingerprint(labels: list[str]) -> str:
    """What identifies a label space: its labels in index order."""
    return hashlib.sha256("\n".join(labels).encode("utf-8")).hexdigest()[:16]


def files(model: str) -> tuple[str, ...]:
    """What a saved channel with classifiers of `model` holds."""
    return (SETTINGS_FILE, IDF_FILE, *CLASSIFIER_FILES[model])


def _kind(settings: dict[str, Any]) -> str:
    """The kind of classifiers a saved channel's settings name (channels saved before there was a choice: br)."""
    return settings.get("model", "br")


def _classifiers(model: str, folder: Path, c: float):
    """napkinxc's model of that kind, writing to or reading from `folder`."""
    from napkinxc.models import BR, PLT

    if model == "plt":
        return PLT(str(folder), loss="l2", liblinear_c=c, arity=TREE_ARITY, seed=0, threads=0)
    return BR(str(folder), loss="l2", liblinear_c=c, threads=0)


def tfidf_vectorizer(ngrams: int, min_df: int, vocabulary: dict[str, int] | None = None):
    """TF-IDF of word 1..`ngrams`-grams (sublinear counts) in at least `min_df` documents, or of a fitted
    `vocabulary`: the lexical channel's features, and the label tree's beside the mean states."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        ngram_range=(1, ngrams),
        min_df=min_df if vocabulary is None else 1,
        sublinear_tf=True,
        dtype=np.float32,
        vocabulary=vocabulary,
    )


@dataclass
class LexicalRanker:
    """TF-IDF features of whole documents and linear classifiers of the labels over them (one per label, or a tree).

    Build one with [`LexicalRanker.fit`] (it writes its folder) or load one with [`LexicalRanker.load`].
    """

    folder: Path
    vectorizer: Any  # scikit-learn's TfidfVectorizer
    classifiers: Any  # napkinxc's BR or PLT, loaded
    labels: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @classmethod
    def fit(
        cls,
        texts: list[str],
        label_ids: list[list[int]],
        labels: list[str],
        folder: str | os.PathLike,
        *,
        ngrams: int,
        min_df: int,
        c: float,
        model: str = "br",
    ) -> "LexicalRanker":
        """Learn the vocabulary (word 1- to `ngrams`-grams in at least `min_df` documents) and the classifiers
        (liblinear cost `c`) from training documents (`label_ids[i]`: indices into `labels`) and write them to
        `folder`, which appears whole or not at all. `model`: `br`, a classifier per label over every document;
        `plt`, a label tree whose classifiers each see the documents of their node."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        if model not in CLASSIFIER_FILES:
            raise ValueError(f"model must be one of {', '.join(CLASSIFIER_FILES)}, got {model!r}.")
        settings = {"ngrams": ngrams, "min_df": min_df, "c": c, "model": model}
        vectorizer = tfidf_vectorizer(ngrams, min_df)
        features = vectorizer.fit_transform(texts)
        # Every label must have an index the classifiers know: napkinxc sizes its label space by the largest seen.
        if any(index >= len(labels) for row in label_ids for index in row):
            raise ValueError(f"label indices must lie in [0, {len(labels)}).")
        logger.info(
            f"lexical channel: {features.shape[1]:,} 1- to {ngrams}-grams of {len(texts):,} documents, "
            f"{'one classifier per label' if model == 'br' else 'a label tree'} ({len(labels):,} labels)"
        )
        with atomic_path(folder) as partial:
            partial.mkdir(parents=True)
            classifiers = _classifiers(model, partial, c)
            classifiers.fit(features, [list(map(int, row)) for row in label_ids])
            vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
            save_file({"idf": vectorizer.idf_.astype(np.float32)}, str(partial / IDF_FILE))
            record = {
                "settings": settings,
                "num_labels": len(labels),
                "labels_fingerprint": labels_fingerprint(labels),
                "vocabulary": vocabulary,
            }
            (partial / SETTINGS_FILE).write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        return cls.load(folder, labels)

    @classmethod
    def load(cls, folder: str | os.PathLike, labels: list[str]) -> "LexicalRanker":
        """The channel saved in `folder`, refused unless it was trained for exactly `labels` (in this order)."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        settings_path = folder / SETTINGS_FILE
        record = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else None
        kind = _kind(record["settings"]) if record else "br"
        missing = [name for name in files(kind) if not (folder / name).is_file()]
        if missing:
            raise ValueError(
                f"{folder} is not a whole lexical channel: {', '.join(missing)} missing. Train it again "
                "(plant-hf fit on the run folder) or set the model's lexical_weight to 0."
            )
        if record["num_labels"] != len(labels) or record["labels_fingerprint"] != labels_fingerprint(labels):
            raise ValueError(
                f"The lexical channel in {folder} was trained for {record['num_labels']} other labels than the "
                f"model's {len(labels)}: it does not fit this model. Train it again with the model's labels."
            )
        settings = record["settings"]
        vocabulary = {term: index for index, term in enumerate(record["vocabulary"])}
        vectorizer = tfidf_vectorizer(settings["ngrams"], settings["min_df"], vocabulary)
        vectorizer.idf_ = load_file(str(folder / IDF_FILE))["idf"]
        classifiers = _classifiers(kind, folder, settings["c"])
        classifiers.load()
        return cls(folder, vectorizer, classifiers, labels)

    def top_k(self, texts: list[str], k: int = FUSED_TOP_K) -> TopKPredictions:
        """Each text's `k` most probable labels by the lexical channel alone (by default, as many as are fused)."""
        rows = self.classifiers.predict_proba(self.vectorizer.transform(texts), top_k=k)
        indices = np.full((len(texts), k), -1, dtype=np.int64)
        scores = np.full((len(texts), k), -np.inf)
        for row, pairs in enumerate(rows):
            for rank, (label, score) in enumerate(pairs[:k]):
                indices[row, rank], scores[row, rank] = label, score
        return TopKPredictions(indices, scores, self.num_labels)


def fuse(neural: Any, lexical: TopKPredictions, weight: float, k: int | None = None) -> TopKPredictions:
    """`(1 - weight) * neural + weight * lexical` probabilities, each document's `k` best (default: the neural
    predictions' k). `neural` is a [`TopKPredictions`] or a dense `(documents, labels)` array; a label missing from
    one side's top-k counts as 0 there."""
    if isinstance(neural, TopKPredictions):
        k = k or neural.k
        neural = neural.to_sparse()
    else:
        neural = sparse.csr_matrix(np.asarray(neural, dtype=np.float64))
        k = k or neural.shape[1]
    fused = (1.0 - weight) * neural + weight * lexical.to_sparse()
    return TopKPredictions.from_sparse(fused, k)


def tune_lexical_weight(
    truth: Any, neural: TopKPredictions, lexical: TopKPredictions, metric, weights: Sequence[float] = LEXICAL_WEIGHTS
) -> tuple[float, dict]:
    """The weight of `weights` whose fused predictions score best by `metric(truth, predictions)` on these held-out
    documents (the lowest weight among equals), and each weight's score."""
    scores = {float(weight): float(metric(truth, fuse(neural, lexical, weight))) for weight in weights}
    best = max(scores, key=lambda weight: (scores[weight], -weight))
    return best, scores


def model_lexical_channel(model) -> LexicalRanker | None:
    """The lexical channel saved with a loaded model (its folder, or its Hub repository's `lexical/`), or None
    where its config gives the channel no weight."""
    config = model.config
    if not getattr(config, "lexical_weight", 0.0):
        return None
    source = str(getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", ""))
    local = Path(source) / LEXICAL_FOLDER
    if local.is_dir():
        folder = local
    elif Path(source).is_dir():
        raise ValueError(
            f"{source}: its config gives the lexical channel weight {config.lexical_weight:g}, and the folder has "
            f"no {LEXICAL_FOLDER}/ (save_pretrained writes the model alone): copy {LEXICAL_FOLDER}/ from the model "
            "folder plant-hf fit wrote, or score with the model alone (lexical=False, plant-hf predict --lexical "
            "false)."
        )
    else:
        from transformers.utils import cached_file

        settings = Path(cached_file(source, SETTINGS_FILE, subfolder=LEXICAL_FOLDER))
        for name in files(_kind(json.loads(settings.read_text(encoding="utf-8"))["settings"])):
            cached_file(source, name, subfolder=LEXICAL_FOLDER)
        folder = settings.parent
    labels = [config.id2label[index] for index in range(config.num_labels)]
    return LexicalRanker.load(folder, labels)


__all__ = [
    "CLASSIFIER_FILES",
    "FUSED_TOP_K",
    "LEXICAL_FOLDER",
    "LEXICAL_WEIGHTS",
    "LexicalRanker",
    "files",
    "fuse",
    "model_lexical_channel",
    "tfidf_vectorizer",
    "tune_lexical_weight",
]
