"""XMC metrics against napkinxc, ICD metrics against scikit-learn, and hand-checkable cases."""

import numpy as np
import pytest
from scipy import sparse

from plant_hf.metrics import (
    TopKPredictions,
    as_truth_matrix,
    auc_metrics,
    evaluate_predictions,
    frequency_buckets,
    inverse_propensities,
    ranking_metrics,
    threshold_metrics,
    tune_label_thresholds,
)

napkinxc = pytest.importorskip("napkinxc.metrics", reason="needs napkinxc (extra `dev`)")
sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="needs scikit-learn (extra `dev`)")

MODEL_LABELS, UNSEEN_LABELS = 40, 5  # the truth's label space extends past the model's by labels unseen in training


def random_problem(seed: int, documents: int = 150, k: int = 8):
    """Truths with empty rows and unseen labels; predictions with tied scores and rows with fewer than k."""
    rng = np.random.default_rng(seed)
    width = MODEL_LABELS + UNSEEN_LABELS
    truth = []
    for row in range(documents):
        size = 0 if row % 10 == 0 else rng.integers(1, 7)
        truth.append(sorted(rng.choice(width, size=size, replace=False, p=_zipf(width)).tolist()))
    scores = np.round(rng.random((documents, MODEL_LABELS)), 1)  # one decimal: many ties
    for row, labels in enumerate(truth):  # make predictions informative
        for label in labels:
            if label < MODEL_LABELS:
                scores[row, label] = min(1.0, scores[row, label] + 0.5)
    predictions = TopKPredictions.from_scores(scores, k)
    short = np.arange(documents) % 7 == 3
    predictions.indices[short, 2:] = -1
    predictions.scores[short, 2:] = -np.inf
    train = [
        rng.choice(MODEL_LABELS, size=rng.integers(1, 6), replace=False, p=_zipf(MODEL_LABELS)).tolist()
        for _ in range(300)
    ]
    return truth, predictions, scores, train


def _zipf(width):
    weights = 1.0 / np.arange(1, width + 1)
    return weights / weights.sum()


def ranked_lists(predictions: TopKPredictions) -> list[list[int]]:
    return [[int(i) for i in row if i >= 0] for row in predictions.indices]


def label_counts(train: list[list[int]], width: int) -> np.ndarray:
    return np.bincount([label for labels in train for label in labels], minlength=width)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_napkinxc(seed):
    truth, predictions, _, train = random_problem(seed)
    width = MODEL_LABELS + UNSEEN_LABELS
    matrix = as_truth_matrix(truth, width)
    inv_ps = inverse_propensities(label_counts(train, width), len(train))
    ours = ranking_metrics(matrix, predictions, ks=(1, 3, 5, 8), inverse_propensity=inv_ps)
    ranked = ranked_lists(predictions)
    reference = {
        "P": napkinxc.precision_at_k(truth, ranked, k=8),
        "R": napkinxc.recall_at_k(truth, ranked, k=8),
        "nDCG": napkinxc.ndcg_at_k(truth, ranked, k=8),
        "PSP": napkinxc.psprecision_at_k(truth, ranked, inv_ps, k=8, normalize=True),
        "PSnDCG": napkinxc.psndcg_at_k(truth, ranked, inv_ps, k=8, normalize=True),
    }
    for name, values in reference.items():
        for k in (1, 3, 5, 8):
            assert ours[f"{name}@{k}"] == pytest.approx(values[k - 1], abs=1e-12), f"{name}@{k}"


def test_propensities_match_napkinxc():
    train = [[0, 1], [1], [1, 2], [3], [1, 3]]
    ours = inverse_propensities(label_counts(train, 5), len(train), a=0.6, b=2.6)
    np.testing.assert_allclose(ours[:4], napkinxc.Jain_et_al_inverse_propensity(train, A=0.6, B=2.6), rtol=1e-12)
    assert ours[4] > ours.max(initial=0) - 1e-12  # an unseen label is the rarest


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("threshold", [0.5, 0.75])
def test_threshold_metrics_match_sklearn(seed, threshold):
    truth, _, scores, _ = random_problem(seed)
    width = MODEL_LABELS + UNSEEN_LABELS
    everything = TopKPredictions.from_scores(scores, MODEL_LABELS)
    ours = threshold_metrics(as_truth_matrix(truth, width), everything, threshold)
    y_true = as_truth_matrix(truth, width).toarray()
    y_pred = np.zeros_like(y_true)
    y_pred[:, :MODEL_LABELS] = scores > threshold
    for average in ("micro", "macro"):
        for name, function in (
            ("precision", sklearn_metrics.precision_score),
            ("recall", sklearn_metrics.recall_score),
            ("f1", sklearn_metrics.f1_score),
        ):
            expected = function(y_true, y_pred, average=average, zero_division=0)
            assert ours[f"{average}_{name}"] == pytest.approx(expected, abs=1e-12), f"{average}_{name}"
    p = sklearn_metrics.precision_score(y_true, y_pred, average="macro", zero_division=0)
    r = sklearn_metrics.recall_score(y_true, y_pred, average="macro", zero_division=0)
    assert ours["macro_f1_harmonic"] == pytest.approx(2 * p * r / (p + r), abs=1e-12)
    assert ours["macro_f1_harmonic"] != pytest.approx(ours["macro_f1"])


def test_per_label_thresholds_match_sklearn():
    truth, _, scores, _ = random_problem(0)
    width = MODEL_LABELS + UNSEEN_LABELS
    thresholds = np.random.default_rng(1).uniform(0.2, 0.8, MODEL_LABELS)
    ours = threshold_metrics(
        as_truth_matrix(truth, width), TopKPredictions.from_scores(scores, MODEL_LABELS), thresholds
    )
    y_true = as_truth_matrix(truth, width).toarray()
    y_pred = np.zeros_like(y_true)
    y_pred[:, :MODEL_LABELS] = scores > thresholds
    for average in ("micro", "macro"):
        expected = sklearn_metrics.f1_score(y_true, y_pred, average=average, zero_division=0)
        assert ours[f"{average}_f1"] == pytest.approx(expected, abs=1e-12)


def test_tuned_thresholds_by_hand():
    # label 0 ranks hit 0.9, hit 0.6, miss 0.4 (2 positives): best cut after 0.6; label 1 ranks hit 0.7, then misses;
    # label 2 ties a hit and a miss at 0.5, so only the cut below both is a decision; label 3 is never relevant
    predictions = TopKPredictions(
        np.array([[0, 1, 2], [1, 0, 2], [0, 1, 3]]), np.array([[0.9, 0.2, 0.5], [0.7, 0.6, 0.5], [0.4, 0.1, 0.8]]), 4
    )
    truth = [[0, 2], [0, 1], []]
    thresholds = tune_label_thresholds(truth, predictions, min_positives=1)
    assert thresholds[:2] == pytest.approx([0.5, 0.45])
    assert thresholds[2] == np.nextafter(0.5, 0)
    assert threshold_metrics(as_truth_matrix(truth, 4), predictions, thresholds)["macro_f1"] == pytest.approx(
        (1 + 1 + 2 / 3 + 0) / 4
    )
    # with two examples needed, only label 0 keeps its own cut; the rest share the grid's first macro-F1 peak, 0.4
    # (F1 1, 1, 2/3 and 0: below it label 0 keeps its miss at 0.4, from 0.5 on label 2 loses its tied hit)
    assert tune_label_thresholds(truth, predictions, min_positives=2) == pytest.approx([0.5, 0.4, 0.4, 0.4])


@pytest.mark.parametrize("seed", [0, 1])
def test_tuned_thresholds_are_each_labels_best_cut(seed):
    truth, _, scores, _ = random_problem(seed)
    predictions = TopKPredictions.from_scores(scores, MODEL_LABELS)
    thresholds = tune_label_thresholds(truth, predictions, min_positives=1)
    y_true = as_truth_matrix(truth, MODEL_LABELS + UNSEEN_LABELS).toarray()[:, :MODEL_LABELS]
    for label in range(MODEL_LABELS):
        tuned = sklearn_metrics.f1_score(y_true[:, label], scores[:, label] > thresholds[label], zero_division=0)
        for cut in np.unique(scores[:, label]):
            assert tuned >= sklearn_metrics.f1_score(y_true[:, label], scores[:, label] >= cut, zero_division=0) - 1e-12


@pytest.mark.parametrize("k", [MODEL_LABELS, 6])
def test_auc_matches_sklearn_with_unscored_labels_tied_last(k):
    truth, _, scores, _ = random_problem(3)
    width = MODEL_LABELS + UNSEEN_LABELS
    predictions = TopKPredictions.from_scores(scores, k)
    ours = auc_metrics(as_truth_matrix(truth, width), predictions)
    dense = np.full((len(truth), width), -1e9)  # what was not stored ranks last, tied
    rows = np.arange(len(truth))[:, None]
    dense[rows, predictions.indices] = predictions.scores
    y_true = as_truth_matrix(truth, width).toarray()
    valid = (y_true.sum(0) > 0) & (y_true.sum(0) < len(truth))
    expected_macro = sklearn_metrics.roc_auc_score(y_true[:, valid], dense[:, valid], average="macro")
    assert ours["macro_auc"] == pytest.approx(expected_macro, abs=1e-12)
    assert ours["micro_auc"] == pytest.approx(sklearn_metrics.roc_auc_score(y_true.ravel(), dense.ravel()), abs=1e-12)


def test_hand_checkable_case():
    # doc 0: relevant {0, 2}; ranked 2, 1, 0 -> hits at ranks 1 and 3
    # doc 1: relevant {1};    ranked 0 only -> no hit, fewer predictions than k
    # doc 2: no relevant label
    truth = [[0, 2], [1], []]
    predictions = TopKPredictions(
        indices=[[2, 1, 0], [0, -1, -1], [1, 2, 0]],
        scores=[[0.9, 0.6, 0.4], [0.8, 0, 0], [0.7, 0.2, 0.1]],
        num_labels=3,
    )
    metrics = ranking_metrics(as_truth_matrix(truth), predictions, ks=(1, 3))
    assert metrics["P@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert metrics["P@3"] == pytest.approx((2 / 3) / 3)
    assert metrics["R@3"] == pytest.approx((1 + 0 + 0) / 3)
    ndcg_doc0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert metrics["nDCG@3"] == pytest.approx(ndcg_doc0 / 3)
    f1 = threshold_metrics(as_truth_matrix(truth), predictions, threshold=0.5)
    # predicted > 0.5: doc0 {2, 1}, doc1 {0}, doc2 {1}: tp=1 (label 2), fp=3, fn=2
    assert f1["micro_precision"] == pytest.approx(1 / 4)
    assert f1["micro_recall"] == pytest.approx(1 / 3)
    assert f1["micro_f1"] == pytest.approx(2 / (2 + 3 + 2))


def test_ties_go_to_the_lower_label_index():
    predictions = TopKPredictions.from_scores([[0.5, 0.9, 0.5, 0.5]], k=3)
    assert predictions.indices.tolist() == [[1, 0, 2]]
    from_sparse = TopKPredictions.from_sparse(sparse.csr_matrix([[0.5, 0.9, 0.5, 0.5]]), k=3)
    assert from_sparse.indices.tolist() == [[1, 0, 2]]


def test_sparse_and_dense_predictions_agree():
    _, _, scores, _ = random_problem(4)
    dense = TopKPredictions.from_scores(scores, 7)
    kept = np.zeros_like(scores)
    np.put_along_axis(kept, dense.indices, dense.scores, axis=1)
    from_sparse = TopKPredictions.from_sparse(sparse.csr_matrix(kept), k=7)
    np.testing.assert_array_equal(from_sparse.scores, dense.scores)
    # the same ranked scores; ties among equal scores resolve to the lower label in both
    np.testing.assert_array_equal(from_sparse.indices, dense.indices)
    round_trip = TopKPredictions.from_sparse(dense.to_sparse())
    np.testing.assert_array_equal(round_trip.indices, dense.indices)


def test_unseen_labels_count_as_misses():
    # the model knows labels 0-1; label 2 was never seen in training
    predictions = TopKPredictions(indices=[[0, 1]], scores=[[0.9, 0.8]], num_labels=2)
    with_unseen = evaluate_predictions([[0, 2]], predictions, label_counts=[5, 3], num_train_documents=10)
    without = evaluate_predictions([[0]], predictions, label_counts=[5, 3], num_train_documents=10)
    assert with_unseen["R@1"] == pytest.approx(0.5) and without["R@1"] == pytest.approx(1.0)
    assert with_unseen["labels"] == 3
    unseen_bucket = with_unseen["by_frequency"]["0"]
    assert (unseen_bucket["labels"], unseen_bucket["documents"]) == (1, 1)
    assert unseen_bucket["P@1"] == unseen_bucket["R@5"] == unseen_bucket["micro_f1"] == 0.0


def test_frequency_buckets_split_the_label_space():
    buckets = frequency_buckets([0, 1, 5, 6, 50, 51, 1000], num_labels=8)
    assert {name: np.nonzero(mask)[0].tolist() for name, mask in buckets.items()} == {
        "0": [0, 7],
        "1-5": [1, 2],
        "6-50": [3, 4],
        ">50": [5, 6],
    }


def test_bucket_metrics_rank_only_the_bucket_labels():
    truth, predictions, _, train = random_problem(5)
    width = MODEL_LABELS + UNSEEN_LABELS
    counts = label_counts(train, width)
    report = evaluate_predictions(truth, predictions, counts, len(train), ks=(1, 3, 5))
    for name, mask in frequency_buckets(counts, width).items():
        entry = report["by_frequency"][name]
        assert entry["labels"] == mask.sum()
        if not entry["documents"]:
            continue
        bucket_truth = [[label for label in labels if mask[label]] for labels in truth]
        rows = [row for row, labels in enumerate(bucket_truth) if labels]
        ranked = [[i for i in ranked_lists(predictions)[row] if mask[i]] for row in rows]
        expected = napkinxc.precision_at_k([bucket_truth[row] for row in rows], ranked, k=5)
        assert entry["P@5"] == pytest.approx(expected[4], abs=1e-12), name
    assert report["by_frequency"]["0"]["P@1"] == 0.0  # unseen labels can never be predicted


def test_mismatched_inputs_are_refused():
    predictions = TopKPredictions(indices=[[0]], scores=[[1.0]], num_labels=3)
    with pytest.raises(ValueError, match="2 documents have truths but 1 have predictions"):
        ranking_metrics(as_truth_matrix([[0], [1]], 3), predictions)
    with pytest.raises(ValueError, match=r"label indices must lie in \[0, 3\)"):
        TopKPredictions(indices=[[3]], scores=[[1.0]], num_labels=3)
    with pytest.raises(ValueError, match="num_train_documents is needed"):
        evaluate_predictions([[0]], predictions, label_counts=[1, 1, 1])
