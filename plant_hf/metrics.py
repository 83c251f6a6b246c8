"""Extreme multi-label (XMC) and ICD-coding metrics over sparse truths and top-k predictions.

Truths are `scipy.sparse` matrices (documents x labels, non-zero = relevant); predictions are each document's
top-k labels with their scores ([`TopKPredictions`]). No documents x labels dense matrix is formed, so the
functions scale to millions of labels. Values are fractions in [0, 1].

Definitions follow the Extreme Classification Repository: P@k, nDCG@k and R@k averaged over all documents
(documents without a relevant label count as 0); PSP@k and PSnDCG@k weight hits by the inverse propensities of
Jain et al. (2016) and are normalised by the best achievable value, as a ratio of sums over documents.
ICD-coding conventions: F1 at a score threshold, micro and two macro variants named apart (`macro_f1`, the mean
of per-label F1; `macro_f1_harmonic`, the harmonic mean of macro-precision and macro-recall), and ROC AUC.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

# Training-frequency buckets: (name, lowest count, highest count).
FREQUENCY_BUCKETS = (("0", 0, 0), ("1-5", 1, 5), ("6-50", 6, 50), (">50", 51, np.inf))
DEFAULT_KS = (1, 3, 5)
# `evaluate.load(EVALUATE_MODULE_PATH)` gives these metrics as an `evaluate` module, without the Hub.
EVALUATE_MODULE_PATH = str(Path(__file__).with_name("evaluate_xmc.py"))


@dataclass
class TopKPredictions:
    """Each document's best labels, best first.

    Args:
        indices: `(documents, k)` label indices; `-1` where a document has fewer than `k` predictions.
        scores: `(documents, k)` scores (probabilities for threshold metrics); ignored where `indices` is `-1`.
        num_labels: size of the label space the indices refer to.
    """

    indices: np.ndarray
    scores: np.ndarray
    num_labels: int

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.indices.ndim != 2 or self.indices.shape != self.scores.shape:
            raise ValueError(
                f"indices and scores must both be (documents, k); got {self.indices.shape} and {self.scores.shape}."
            )
        if self.indices.size and (self.indices.max() >= self.num_labels or self.indices.min() < -1):
            raise ValueError(f"label indices must lie in [0, {self.num_labels}) or be -1 for 'no prediction'.")

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def __len__(self) -> int:
        return self.indices.shape[0]

    @classmethod
    def from_scores(cls, scores: Any, k: int) -> "TopKPredictions":
        """The top `k` of a dense `(documents, labels)` score matrix; ties go to the lower label index."""
        scores = np.asarray(scores, dtype=np.float64)
        k = min(k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return cls(order, np.take_along_axis(scores, order, axis=1), scores.shape[1])

    @classmethod
    def from_sparse(cls, matrix: sparse.spmatrix, k: int | None = None) -> "TopKPredictions":
        """The top `k` stored entries of each row of a sparse score matrix (all of them when `k` is None)."""
        matrix = sparse.csr_matrix(matrix)
        rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
        order = np.lexsort((matrix.indices, -matrix.data, rows))
        rank = np.arange(order.size) - matrix.indptr[rows[order]]
        width = int(np.diff(matrix.indptr).max(initial=0)) if k is None else k
        keep = rank < width
        indices = np.full((matrix.shape[0], width), -1, dtype=np.int64)
        scores = np.full((matrix.shape[0], width), -np.inf)
        indices[rows[order][keep], rank[keep]] = matrix.indices[order][keep]
        scores[rows[order][keep], rank[keep]] = matrix.data[order][keep]
        return cls(indices, scores, matrix.shape[1])

    def to_sparse(self) -> sparse.csr_matrix:
        """The predictions as a sparse `(documents, num_labels)` score matrix."""
        valid = self.indices >= 0
        rows = np.nonzero(valid)[0]
        return sparse.csr_matrix((self.scores[valid], (rows, self.indices[valid])), shape=(len(self), self.num_labels))

    def restricted_to(self, labels: np.ndarray) -> "TopKPredictions":
        """Only the predictions of the given labels (a boolean mask over the label space), ranks kept in order."""
        keep = (self.indices >= 0) & np.asarray(labels, dtype=bool)[np.maximum(self.indices, 0)]
        position = np.cumsum(keep, axis=1) - 1
        indices = np.full_like(self.indices, -1)
        scores = np.full_like(self.scores, -np.inf)
        rows, columns = np.nonzero(keep)
        indices[rows, position[rows, columns]] = self.indices[rows, columns]
        scores[rows, position[rows, columns]] = self.scores[rows, columns]
        return TopKPredictions(indices, scores, self.num_labels)


def as_truth_matrix(truth: Any, num_labels: int | None = None) -> sparse.csr_matrix:
    """Relevant labels as a binary sparse matrix, from a sparse/dense matrix or lists of label indices."""
    if sparse.issparse(truth) or isinstance(truth, np.ndarray):
        matrix = sparse.csr_matrix(truth, dtype=np.float64)
        if num_labels is not None and matrix.shape[1] < num_labels:
            matrix.resize(matrix.shape[0], num_labels)
    else:
        rows = np.repeat(np.arange(len(truth)), [len(labels) for labels in truth])
        columns = np.fromiter((label for labels in truth for label in labels), dtype=np.int64, count=rows.size)
        width = max(num_labels or 0, int(columns.max(initial=-1)) + 1)
        matrix = sparse.csr_matrix((np.ones(rows.size), (rows, columns)), shape=(len(truth), width))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    matrix.eliminate_zeros()
    return matrix


def inverse_propensities(label_counts: Any, num_documents: int, a: float = 0.55, b: float = 1.5) -> np.ndarray:
    """Jain et al. (2016) inverse propensities `1 + C (N_l + B)^-A`, `C = (ln N - 1)(B + 1)^A`, from training counts."""
    counts = np.asarray(label_counts, dtype=np.float64)
    c = (np.log(num_documents) - 1.0) * (b + 1.0) ** a
    return 1.0 + c * (counts + b) ** -a


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def _is_relevant(truth: sparse.csr_matrix, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether each `(rows[i], labels[i])` pair is relevant in `truth`."""
    width = truth.shape[1]
    truth_keys = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr)) * width + truth.indices
    return np.isin(rows * width + labels, truth_keys)


def _hits(truth: sparse.csr_matrix, predictions: TopKPredictions) -> np.ndarray:
    """`(documents, k)` booleans: is the prediction at each rank a relevant label?"""
    rows = np.broadcast_to(np.arange(len(predictions))[:, None], predictions.indices.shape)
    return _is_relevant(truth, rows, np.maximum(predictions.indices, 0)) & (predictions.indices >= 0)


def _best_weights(truth: sparse.csr_matrix, weights: np.ndarray, k: int) -> np.ndarray:
    """`(documents, k)`: each document's relevant-label weights, largest first, zero-padded."""
    rows = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr))
    values = weights[truth.indices]
    order = np.lexsort((-values, rows))
    rank = np.arange(order.size) - truth.indptr[rows[order]]
    keep = rank < k
    best = np.zeros((truth.shape[0], k))
    best[rows[order][keep], rank[keep]] = values[order][keep]
    return best


def _check(truth: sparse.csr_matrix, predictions: TopKPredictions) -> None:
    if truth.shape[0] != len(predictions):
        raise ValueError(f"{truth.shape[0]} documents have truths but {len(predictions)} have predictions.")
    if predictions.num_labels > truth.shape[1]:
        raise ValueError(
            f"predictions index {predictions.num_labels} labels but the truth matrix has only {truth.shape[1]}."
        )


def ranking_metrics(
    truth: sparse.csr_matrix,
    predictions: TopKPredictions,
    ks: Sequence[int] = DEFAULT_KS,
    inverse_propensity: np.ndarray | None = None,
) -> dict[str, float]:
    """P@k, R@k, nDCG@k and, given inverse propensities over the truth's label space, PSP@k and PSnDCG@k."""
    _check(truth, predictions)
    depth = max(ks)
    hits = np.zeros((len(predictions), depth), dtype=bool)
    hits[:, : min(depth, predictions.k)] = _hits(truth, predictions)[:, :depth]
    relevant = np.diff(truth.indptr)
    discounts = _discounts(depth)
    ideal = np.cumsum(discounts)
    gains = np.cumsum(hits * discounts, axis=1)
    if inverse_propensity is not None:
        if inverse_propensity.shape[0] < truth.shape[1]:
            raise ValueError(
                f"{inverse_propensity.shape[0]} inverse propensities for a label space of {truth.shape[1]} labels."
            )
        indices = np.zeros((len(predictions), depth), dtype=np.int64)
        indices[:, : min(depth, predictions.k)] = np.maximum(predictions.indices[:, :depth], 0)
        weighted = hits * inverse_propensity[indices]
        best = _best_weights(truth, inverse_propensity, depth)
    results = {}
    for k in ks:
        found = hits[:, :k].sum(axis=1)
        idcg = np.where(relevant > 0, ideal[np.minimum(np.maximum(relevant, 1), k) - 1], np.inf)
        results[f"P@{k}"] = float(np.mean(found / k))
        results[f"R@{k}"] = float(np.mean(found / np.maximum(relevant, 1)))
        results[f"nDCG@{k}"] = float(np.mean(gains[:, k - 1] / idcg))
        if inverse_propensity is not None:
            best_sum = best[:, :k].sum()
            results[f"PSP@{k}"] = float(weighted[:, :k].sum() / best_sum) if best_sum else 0.0
            best_dcg = ((best[:, :k] * discounts[:k]).sum(axis=1) / idcg).sum()
            dcg = ((weighted[:, :k] * discounts[:k]).sum(axis=1) / idcg).sum()
            results[f"PSnDCG@{k}"] = float(dcg / best_dcg) if best_dcg else 0.0
    return results


def _confusion_counts(
    truth: sparse.csr_matrix, predictions: TopKPredictions, threshold: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, false positives and false negatives of `score > threshold` decisions (`threshold`:
    one for all labels, or one per label of the predictions' label space)."""
    valid = predictions.indices >= 0
    if np.ndim(threshold):
        threshold = np.asarray(threshold)[np.where(valid, predictions.indices, 0)]
    rows, ranks = np.nonzero(valid & (predictions.scores > threshold))
    labels = predictions.indices[rows, ranks]
    hit = _is_relevant(truth, rows, labels)
    width = truth.shape[1]
    tp = np.bincount(labels[hit], minlength=width)
    fp = np.bincount(labels[~hit], minlength=width)
    fn = np.bincount(truth.indices, minlength=width) - tp
    return tp, fp, fn


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def threshold_metrics(
    truth: sparse.csr_matrix, predictions: TopKPredictions, threshold: float | np.ndarray = 0.5
) -> dict[str, float]:
    """Micro and macro precision, recall and F1 of predicting every label whose score exceeds `threshold` (one for
    all labels, or one per label of the predictions' label space).

    Macro averages run over the whole label space (undefined per-label ratios count as 0). `macro_f1` is the mean
    of per-label F1; `macro_f1_harmonic` is `2 P R / (P + R)` of macro-precision P and macro-recall R (CAML).
    Labels scoring above the threshold but outside the stored top-k are not seen: keep k large enough.
    """
    _check(truth, predictions)
    tp, fp, fn = _confusion_counts(truth, predictions, threshold)
    macro_precision = _ratio(tp, tp + fp).mean()
    macro_recall = _ratio(tp, tp + fn).mean()
    harmonic = 2 * macro_precision * macro_recall / (macro_precision + macro_recall) if tp.sum() else 0.0
    micro_denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "micro_precision": float(_ratio(tp.sum(keepdims=True), (tp + fp).sum(keepdims=True))[0]),
        "micro_recall": float(_ratio(tp.sum(keepdims=True), (tp + fn).sum(keepdims=True))[0]),
        "micro_f1": float(2 * tp.sum() / micro_denominator) if micro_denominator else 0.0,
        "macro_precision": float(macro_precision),
        "macro_recall": float(macro_recall),
        "macro_f1": float(_ratio(2 * tp, 2 * tp + fp + fn).mean()),
        "macro_f1_harmonic": float(harmonic),
    }


# Where one threshold shared by the labels is searched (probabilities).
SHARED_THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)


def tune_label_thresholds(truth: Any, predictions: TopKPredictions, min_positives: int = 5) -> np.ndarray:
    """Decision thresholds tuned on these (held-out) predictions, one per label, `(num_labels,)`.

    A label with at least `min_positives` held-out examples gets the threshold that maximises its own F1, half way
    between the score of its last kept prediction and the next one down (so that `score > threshold` reproduces the
    best cut). The others share the threshold of `SHARED_THRESHOLDS` that maximises macro-F1: with a handful of
    examples a label's own best cut is noise (measured in BENCHMARKS.md, decision thresholds). Labels without a
    relevant prediction among the stored top-k also keep the shared one.
    """
    truth = as_truth_matrix(truth, predictions.num_labels)
    _check(truth, predictions)
    shared = max(SHARED_THRESHOLDS, key=lambda value: threshold_metrics(truth, predictions, value)["macro_f1"])
    thresholds = np.full(predictions.num_labels, shared, dtype=np.float64)
    rows, ranks = np.nonzero(predictions.indices >= 0)
    labels, scores = predictions.indices[rows, ranks], predictions.scores[rows, ranks].astype(np.float64)
    hit = _is_relevant(truth, rows, labels)
    order = np.lexsort((-scores, labels))
    labels, scores, hit = labels[order], scores[order], hit[order]
    if labels.size == 0:
        return thresholds
    first = np.r_[True, labels[1:] != labels[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(labels.size), 0))
    hits = np.cumsum(hit)
    true_positives = hits - np.where(start > 0, hits[start - 1], 0)
    kept = np.arange(labels.size) - start + 1
    positives = np.bincount(truth.indices, minlength=truth.shape[1])[labels]
    f1 = 2 * true_positives / (kept + positives)
    last = np.r_[labels[1:] != labels[:-1], True]
    below = np.where(last, 0.0, np.r_[scores[1:], 0.0])
    f1[~last & (below == scores)] = -1.0  # a cut between equal scores is not a decision a threshold can make
    best = np.lexsort((-f1, labels))[first]  # labels are sorted already: the first of each group is its best cut
    best = best[(f1[best] > 0) & (positives[best] >= min_positives)]
    thresholds[labels[best]] = np.where(
        last[best], np.nextafter(scores[best], -np.inf), (scores[best] + below[best]) / 2
    )
    return thresholds


def _grouped_auc(
    groups: np.ndarray,
    scores: np.ndarray,
    positive: np.ndarray,
    group_sizes: np.ndarray,
    group_positives: np.ndarray,
) -> np.ndarray:
    """ROC AUC per group (Mann-Whitney U with average ranks for ties) from the group's scored items.

    Items of a group that have no score rank below all its scored items, tied with each other. Groups without
    positives or without negatives get NaN.
    """
    num_groups = group_sizes.size
    order = np.lexsort((scores, groups))
    groups, scores, positive = groups[order], scores[order], positive[order]
    new_run = np.ones(groups.size, dtype=bool)
    new_run[1:] = (groups[1:] != groups[:-1]) | (scores[1:] != scores[:-1])
    run = np.cumsum(new_run) - 1
    position = np.arange(groups.size) - np.searchsorted(groups, np.arange(num_groups))[groups] + 1.0
    run_rank = np.bincount(run, weights=position) / np.bincount(run) if groups.size else np.zeros(0)
    unscored = group_sizes - np.bincount(groups, minlength=num_groups)
    ranks = unscored[groups] + run_rank[run]
    rank_sum = np.bincount(groups[positive], weights=ranks[positive], minlength=num_groups)
    unscored_positives = group_positives - np.bincount(groups[positive], minlength=num_groups)
    rank_sum = rank_sum + unscored_positives * (unscored + 1) / 2.0
    negatives = group_sizes - group_positives
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - group_positives * (group_positives + 1) / 2.0) / (group_positives * negatives)
    return np.where((group_positives > 0) & (negatives > 0), auc, np.nan)


def auc_metrics(truth: sparse.csr_matrix, predictions: TopKPredictions) -> dict[str, float]:
    """Micro ROC AUC (over all document-label pairs) and macro ROC AUC (mean over labels with both classes).

    Labels without a stored score rank below every stored score, tied with each other: exact when every score is
    stored, an approximation from the top-k otherwise.
    """
    _check(truth, predictions)
    documents, width = truth.shape
    rows, ranks = np.nonzero(predictions.indices >= 0)
    labels = predictions.indices[rows, ranks]
    scores = predictions.scores[rows, ranks]
    positive = _is_relevant(truth, rows, labels)
    micro = _grouped_auc(
        np.zeros(labels.size, dtype=np.int64),
        scores,
        positive,
        np.array([documents * width]),
        np.array([truth.nnz]),
    )[0]
    per_label = _grouped_auc(
        labels, scores, positive, np.full(width, documents), np.bincount(truth.indices, minlength=width)
    )
    valid = ~np.isnan(per_label)
    return {
        "micro_auc": float(micro),
        "macro_auc": float(per_label[valid].mean()) if valid.any() else float("nan"),
    }


def frequency_buckets(label_counts: Any, num_labels: int) -> dict[str, np.ndarray]:
    """Boolean label masks of the training-frequency buckets 0, 1-5, 6-50 and >50 (labels past the counts: 0)."""
    counts = np.zeros(num_labels)
    given = np.asarray(label_counts)[:num_labels]
    counts[: given.size] = given
    return {name: (counts >= low) & (counts <= high) for name, low, high in FREQUENCY_BUCKETS}


def evaluate_predictions(
    truth: Any,
    predictions: TopKPredictions,
    label_counts: Any | None = None,
    num_train_documents: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    threshold: float | np.ndarray = 0.5,
    propensity_a: float = 0.55,
    propensity_b: float = 1.5,
    with_auc: bool = True,
    by_frequency: bool = True,
) -> dict[str, Any]:
    """Every metric, overall and (given training label counts) per training-frequency bucket.

    Args:
        truth: relevant labels, a sparse matrix or lists of label indices, over a label space that may extend past
            the model's (labels unseen in training get indices `>= predictions.num_labels`; they count as misses).
        predictions: each document's top-k labels and scores.
        label_counts: training frequency of each label of the truth's label space (missing entries count as 0).
        num_train_documents: number of training documents, for the propensities.
    """
    truth = as_truth_matrix(truth, predictions.num_labels)
    results: dict[str, Any] = {"documents": truth.shape[0], "labels": truth.shape[1]}
    inverse_propensity = None
    if label_counts is not None:
        counts = np.zeros(truth.shape[1])
        given = np.asarray(label_counts, dtype=np.float64)[: truth.shape[1]]
        counts[: given.size] = given
        if num_train_documents is None:
            raise ValueError("num_train_documents is needed with label_counts, for the propensities.")
        inverse_propensity = inverse_propensities(counts, num_train_documents, propensity_a, propensity_b)
    results.update(ranking_metrics(truth, predictions, ks, inverse_propensity))
    results.update(_label_metrics(truth, predictions, threshold, with_auc))
    if by_frequency and label_counts is not None:
        results["by_frequency"] = {
            name: _bucket_metrics(truth, predictions, labels, ks, threshold, inverse_propensity, with_auc)
            for name, labels in frequency_buckets(label_counts, truth.shape[1]).items()
        }
    return results


def _label_metrics(
    truth: sparse.csr_matrix, predictions: TopKPredictions, threshold: float | np.ndarray, with_auc: bool
) -> dict[str, float]:
    results = threshold_metrics(truth, predictions, threshold)
    if with_auc:
        results.update(auc_metrics(truth, predictions))
    return results


def _bucket_metrics(
    truth: sparse.csr_matrix,
    predictions: TopKPredictions,
    labels: np.ndarray,
    ks: Sequence[int],
    threshold: float | np.ndarray,
    inverse_propensity: np.ndarray | None,
    with_auc: bool,
) -> dict[str, Any]:
    """Metrics of one bucket of labels.

    Ranking metrics rank only the bucket's labels and average over the documents with a relevant label in the
    bucket; label metrics (F1, AUC) are over all documents and the bucket's labels.
    """
    columns = np.nonzero(labels)[0]
    bucket_truth = truth[:, columns]
    documents = np.diff(bucket_truth.indptr) > 0
    entry: dict[str, Any] = {"labels": int(columns.size), "documents": int(documents.sum())}
    if not documents.any():
        return entry
    remap = np.full(truth.shape[1], -1)
    remap[columns] = np.arange(columns.size)
    kept = predictions.restricted_to(labels[: predictions.num_labels])
    indices = np.where(kept.indices >= 0, remap[np.maximum(kept.indices, 0)], -1)
    bucket_predictions = TopKPredictions(indices, kept.scores, columns.size)
    propensity = None if inverse_propensity is None else inverse_propensity[columns]
    entry.update(
        ranking_metrics(
            bucket_truth[documents],
            TopKPredictions(indices[documents], kept.scores[documents], columns.size),
            ks,
            propensity,
        )
    )
    if np.ndim(threshold):  # per label: the bucket's own, by bucket column (labels past the model's never score)
        threshold = np.concatenate([threshold, np.full(truth.shape[1] - len(threshold), np.inf)])[columns]
    entry.update(_label_metrics(bucket_truth, bucket_predictions, threshold, with_auc))
    return entry


__all__ = [
    "DEFAULT_KS",
    "EVALUATE_MODULE_PATH",
    "FREQUENCY_BUCKETS",
    "TopKPredictions",
    "as_truth_matrix",
    "auc_metrics",
    "evaluate_predictions",
    "frequency_buckets",
    "inverse_propensities",
    "ranking_metrics",
    "threshold_metrics",
    "tune_label_thresholds",
]
