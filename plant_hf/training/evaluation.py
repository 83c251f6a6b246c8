"""Evaluation glue: `compute_metrics` for Trainer, prediction-file evaluation, metric tables and bucket plots."""

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy import sparse

from ..data import LabelVocabulary, load_corpus, read_predictions
from ..data.readers import DataFormatError, OnError
from ..files import write_json
from ..metrics import DEFAULT_KS, FREQUENCY_BUCKETS, TopKPredictions, evaluate_predictions

# Metrics shown in tables, plots and model cards, in order.
HEADLINE_METRICS = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "R@5", "micro_f1", "macro_f1", "macro_auc")
_DISPLAY_NAMES = {"micro_f1": "micro-F1", "macro_f1": "macro-F1", "macro_auc": "macro-AUC"}


def metric_name(metric: str) -> str:
    """How a metric is named for readers (`macro_f1` -> `macro-F1`)."""
    return _DISPLAY_NAMES.get(metric, metric)


def percent(value: Any) -> str:
    """A metric in percent with two decimals, `-` where it is missing or undefined."""
    return "-" if not isinstance(value, int | float) or value != value else f"{100 * value:.2f}"


def top_k_logits(k: int):
    """A `preprocess_logits_for_metrics` for Trainer keeping each document's `k` best labels and probabilities.

    Evaluation then gathers `(documents, k)` arrays instead of `(documents, labels)` logits.
    """

    def preprocess(logits: torch.Tensor | tuple, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits[0] if isinstance(logits, tuple) else logits
        scores, indices = logits.float().sigmoid().topk(min(k, logits.shape[-1]), dim=-1)
        return indices, scores

    return preprocess


@dataclass
class XMCComputeMetrics:
    """`compute_metrics` for Trainer: every metric of an evaluation split, its unseen labels counted as misses.

    Trainer's predictions must be `(indices, scores)` from [`top_k_logits`]. The truths come from the split itself
    (not from the batches' multi-hot targets, which only know the training labels). Trainer logs `metrics`: by
    default the headline ones ([`headline_metrics`]), `"all"` for every metric of every bucket; the whole report
    of the last evaluation is `last_report` either way.
    """

    truth: sparse.csr_matrix
    label_counts: np.ndarray
    num_train_documents: int
    ks: Sequence[int] = DEFAULT_KS
    threshold: float = 0.5
    by_frequency: bool = True
    metrics: Sequence[str] | Literal["all"] | None = None
    last_report: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def for_split(
        cls, vocabulary: LabelVocabulary, label_lists: Sequence[Sequence[str]], **kwargs
    ) -> "XMCComputeMetrics":
        truth, _ = vocabulary.evaluation_targets(label_lists)
        return cls(truth=truth, label_counts=vocabulary.counts, num_train_documents=vocabulary.num_documents, **kwargs)

    def __call__(self, eval_prediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if not isinstance(predictions, tuple | list) or len(predictions) != 2:
            shape = getattr(predictions, "shape", None) or [getattr(p, "shape", None) for p in predictions]
            raise ValueError(
                f"XMCComputeMetrics needs each document's top-k labels and scores, and Trainer gave it {shape}: "
                "pass preprocess_logits_for_metrics=plant_hf.training.top_k_logits(k) to Trainer (k: the labels "
                "kept per document, at least the largest cut-off of ks)."
            )
        indices, scores = predictions
        if len(indices) != self.truth.shape[0]:
            raise ValueError(
                f"Trainer returned predictions for {len(indices)} documents; the evaluation split has "
                f"{self.truth.shape[0]}. Pass the same split to Trainer and to XMCComputeMetrics.for_split."
            )
        predictions = TopKPredictions(indices, scores, num_labels=len(self.label_counts))
        self.last_report = evaluate_predictions(
            self.truth,
            predictions,
            self.label_counts,
            self.num_train_documents,
            ks=self.ks,
            threshold=self.threshold,
            by_frequency=self.by_frequency,
        )
        flat = flatten_report(self.last_report)
        if self.metrics == "all":
            return flat
        wanted = self.metrics or headline_metrics(self.ks, self.by_frequency)
        return {name: flat[name] for name in wanted if name in flat}


def headline_metrics(ks: Sequence[int] = DEFAULT_KS, by_frequency: bool = True) -> list[str]:
    """What Trainer logs by default: P@k, nDCG@k and PSP@k at every cut-off, R@k at the largest, the F1s and AUC,
    and per frequency bucket PSP@k at the largest cut-off."""
    top = max(ks)
    names = [f"{metric}@{k}" for k in ks for metric in ("P", "nDCG", "PSP")]
    names += [f"R@{top}", "micro_f1", "macro_f1", "macro_auc"]
    if by_frequency:
        names += [f"freq_{bucket}_PSP@{top}" for bucket, _, _ in FREQUENCY_BUCKETS]
    return names


def reported_metrics(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """The names of the metrics [`XMCComputeMetrics`] reports (Trainer adds `eval_` and the loss)."""
    one = TopKPredictions(np.zeros((1, 1), dtype=np.int64), np.ones((1, 1)), num_labels=1)
    return sorted(flatten_report(evaluate_predictions([[0]], one, [1], 1, ks=ks, by_frequency=False)))


def flatten_report(report: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics only, bucket metrics as `freq_<bucket>_<metric>` (the shape Trainer logs)."""
    flat = {name: value for name, value in report.items() if isinstance(value, float)}
    for bucket, metrics in report.get("by_frequency", {}).items():
        flat.update({f"freq_{bucket}_{name}": value for name, value in metrics.items() if isinstance(value, float)})
    return flat


def evaluate_prediction_file(
    predictions_path: str | os.PathLike,
    data: str | os.PathLike,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    threshold: float = 0.5,
    propensity_a: float = 0.55,
    propensity_b: float = 1.5,
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Evaluate a prediction file against the truths of `split` of a corpus, with its training split's statistics.

    Every document of the split must be predicted (an empty prediction is a line with empty lists). Labels of the
    split unseen in training, and predicted labels unknown to training, extend the label space with training
    frequency 0: the former count as misses.
    """
    corpus = load_corpus(data, splits=["train", split], on_error=on_error)
    if split not in corpus.splits:
        raise DataFormatError(f"{data}: no {split!r} split to evaluate against (found {list(corpus.splits)}).")
    vocabulary = LabelVocabulary.from_training(corpus.splits["train"]["labels"])
    documents = corpus.splits[split]
    predictions = {record.id: record for record in read_predictions(predictions_path)}
    missing = [doc_id for doc_id in documents["id"] if doc_id not in predictions]
    extra = set(predictions) - set(documents["id"])
    if missing or extra:
        raise DataFormatError(
            f"{predictions_path} does not match the {split} split of {data}: {len(missing)} documents without a "
            f"prediction (e.g. {missing[:3]}), {len(extra)} predictions of unknown documents "
            f"(e.g. {sorted(extra)[:3]}). Predict exactly the documents of that split."
        )
    label_space = {label: index for index, label in enumerate(vocabulary.labels)}
    for labels in [*documents["labels"], *(predictions[doc_id].labels for doc_id in documents["id"])]:
        for label in labels:
            label_space.setdefault(label, len(label_space))
    ranked = [predictions[doc_id] for doc_id in documents["id"]]
    depth = max((len(record.labels) for record in ranked), default=0)
    indices = np.full((len(ranked), depth), -1, dtype=np.int64)
    scores = np.full((len(ranked), depth), -np.inf)
    for row, record in enumerate(ranked):
        indices[row, : len(record.labels)] = [label_space[label] for label in record.labels]
        scores[row, : len(record.scores)] = record.scores
    truth = [[label_space[label] for label in labels] for labels in documents["labels"]]
    report = evaluate_predictions(
        truth,
        TopKPredictions(indices, scores, len(label_space)),
        label_counts=vocabulary.counts,
        num_train_documents=vocabulary.num_documents,
        ks=ks,
        threshold=threshold,
        propensity_a=propensity_a,
        propensity_b=propensity_b,
    )
    report["meta"] = {
        "predictions": str(predictions_path),
        "data": str(data),
        "split": split,
        "training_documents": vocabulary.num_documents,
        "training_labels": len(vocabulary),
        "unseen_labels": str(vocabulary.unseen(documents["labels"], split)),
        "prediction_depth": depth,
        "threshold": threshold,
        "propensity": {"A": propensity_a, "B": propensity_b},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return report


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a metrics report as JSON, atomically."""
    write_json(path, report, indent=2)


def format_metrics_table(report: dict[str, Any], metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """A plain-text table, metrics in percent: overall, then one column per training-frequency bucket."""
    buckets = report.get("by_frequency", {})
    columns = [("all", report)] + [(f"freq {name}", values) for name, values in buckets.items()]
    header = ["metric"] + [name for name, _ in columns]
    rows = [["documents"] + [str(values.get("documents", "")) for _, values in columns]]
    rows += [["labels"] + [str(values.get("labels", "")) for _, values in columns]]
    for metric in metrics:
        if metric in report:
            rows.append([metric] + [percent(values.get(metric)) for _, values in columns])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plot_frequency_buckets(
    report: dict[str, Any],
    path: str | os.PathLike,
    metrics: Sequence[str] = ("P@1", "P@5", "nDCG@5", "PSP@5", "R@5", "micro_f1"),
    title: str | None = None,
) -> None:
    """A grouped bar chart of metrics per training-frequency bucket, next to the overall values, as PNG."""
    import matplotlib.pyplot as plt

    figure = bucket_figure(report, metrics, title)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def bucket_figure(report: dict[str, Any], metrics: Sequence[str], title: str | None = None):
    """The figure of `plot_frequency_buckets`. A bucket without test documents, or of labels unseen in training
    (which no model can predict), is named for what it is rather than drawn as bars of zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = report.get("by_frequency", {})
    groups = [("all", report)] + [(f"{name}\n({v['labels']} labels)", v) for name, v in buckets.items()]
    notes = {index: _empty_bucket_note(name, group) for index, (name, group) in enumerate(groups)}
    shown = [metric for metric in metrics if metric in report]
    figure, axis = plt.subplots(figsize=(2.0 + 1.6 * len(groups), 4.8))
    width = 0.8 / max(1, len(shown))
    for position, metric in enumerate(shown):
        values = [
            float("nan") if notes[index] else 100 * float(group.get(metric, float("nan")))
            for index, (_, group) in enumerate(groups)
        ]
        offsets = np.arange(len(groups)) + (position - (len(shown) - 1) / 2) * width
        bars = axis.bar(offsets, values, width, label=metric_name(metric))
        axis.bar_label(bars, labels=["" if v != v else f"{v:.0f}" for v in values], fontsize=7, padding=1)
    for index, note in notes.items():
        if note:
            axis.text(index, 50, note, ha="center", va="center", fontsize=8, color="dimgray")
    axis.set_xticks(np.arange(len(groups)), [name for name, _ in groups])
    axis.set_xlabel("training frequency of the labels")
    axis.set_ylabel("%")
    axis.set_ylim(0, 105)
    axis.set_title(title or "Metrics by training frequency of the labels")
    figure.legend(ncols=min(6, len(shown)), fontsize=8, loc="lower center", frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return figure


def _empty_bucket_note(name: str, group: dict[str, Any]) -> str | None:
    if not group.get("documents", 1):
        return "no test document\nhas these labels"
    if name.startswith("0\n"):
        return "labels unseen\nin training:\nnever predicted"
    return None


__all__ = [
    "HEADLINE_METRICS",
    "XMCComputeMetrics",
    "bucket_figure",
    "evaluate_prediction_file",
    "flatten_report",
    "format_metrics_table",
    "headline_metrics",
    "metric_name",
    "percent",
    "plot_frequency_buckets",
    "reported_metrics",
    "top_k_logits",
    "write_report",
]
