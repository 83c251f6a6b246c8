"""An `evaluate` module over plant-hf's XMC and ICD metrics, loadable from this file without the Hub.

```python
>>> import evaluate
>>> from plant_hf.metrics import EVALUATE_MODULE_PATH
>>> xmc = evaluate.load(EVALUATE_MODULE_PATH)
>>> xmc.compute(
...     predictions=[[2, 0], [1, 0]], scores=[[0.9, 0.2], [0.8, 0.6]], references=[[2], [0, 1]],
...     num_labels=3, label_counts=[4, 1, 9], num_train_documents=10, ks=[1, 2],
... )["P@1"]
1.0
```
"""

import datasets
import evaluate
import numpy as np

from plant_hf.metrics import DEFAULT_KS, TopKPredictions, evaluate_predictions

_DESCRIPTION = """
Extreme multi-label and ICD-coding metrics: P@k, R@k, nDCG@k, PSP@k and PSnDCG@k (Jain et al. propensities,
normalised by the best achievable value), micro/macro precision, recall and F1 at a threshold (`macro_f1`: mean of
per-label F1; `macro_f1_harmonic`: harmonic mean of macro-precision and macro-recall), micro/macro ROC AUC, and
all of them per training-frequency bucket (0, 1-5, 6-50, >50) when training label counts are given.
"""

_INPUTS = """
Args:
    predictions: for each document, its predicted label indices, best first.
    scores: the matching scores (probabilities; a label is predicted at a threshold when its score exceeds it).
    references: for each document, its relevant label indices. Indices `>= num_labels` stand for labels unseen in
        training: they count as misses.
    num_labels: size of the model's label space.
    label_counts: training document frequency of each label (optional; enables PSP and frequency buckets).
    num_train_documents: number of training documents (with label_counts).
    ks: cut-offs for the ranking metrics (default 1, 3, 5).
    threshold: score threshold for F1 (default 0.5).
Returns:
    a flat dict of metrics, with `by_frequency` holding one such dict per bucket.
"""

_CITATION = """
@inproceedings{jain2016extreme,
  title={Extreme Multi-label Loss Functions for Recommendation, Tagging, Ranking and Other Missing Label Applications},
  author={Jain, Himanshu and Prabhu, Yashoteja and Varma, Manik},
  booktitle={KDD}, year={2016}
}
"""


class XMCMetrics(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "scores": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(
        self,
        predictions,
        scores,
        references,
        num_labels: int,
        label_counts=None,
        num_train_documents: int | None = None,
        ks=DEFAULT_KS,
        threshold: float = 0.5,
    ) -> dict:
        width = max((len(row) for row in predictions), default=0)
        indices = np.full((len(predictions), width), -1, dtype=np.int64)
        values = np.full((len(predictions), width), -np.inf)
        for row, (labels, row_scores) in enumerate(zip(predictions, scores, strict=True)):
            indices[row, : len(labels)] = labels
            values[row, : len(row_scores)] = row_scores
        return evaluate_predictions(
            [list(labels) for labels in references],
            TopKPredictions(indices, values, num_labels),
            label_counts=label_counts,
            num_train_documents=num_train_documents,
            ks=tuple(ks),
            threshold=threshold,
        )
