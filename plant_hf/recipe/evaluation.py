"""Stage 6 of the recipe: decision thresholds tuned on dev, then the final model scored on the test split."""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from transformers import TrainingArguments

from ..data import write_predictions
from ..files import atomic_path
from ..metrics import TopKPredictions, as_truth_matrix, evaluate_predictions, threshold_metrics, tune_label_thresholds
from ..modeling_plant import PlantForMultiLabelClassification
from ..training.evaluation import plot_frequency_buckets, top_k_logits, write_report
from ..training.trainer import XMCTrainer
from .data import RunContext
from .finetuning import inference_inputs


@dataclass
class EvaluationArguments:
    """How the final model is scored."""

    stage: ClassVar[str] = "evaluation"
    _argument_group_name: ClassVar[str] = "Evaluation"
    # The least value of each numeric option (None stays allowed where it is the default).
    at_least: ClassVar[dict[str, int]] = {"eval_top_k": 1}

    eval_top_k: int = field(default=100, metadata={"help": "Predictions kept per document for the metrics."})
    threshold: float = field(
        default=0.5, metadata={"help": "Probability threshold of the F1 metrics (of every label, without tuning)."}
    )
    tune_thresholds: bool = field(
        default=True,
        metadata={
            "help": "Tune the decision thresholds on the dev split: each label with at least 5 dev examples its "
            "own, for its F1; the others one shared threshold, for macro-F1. Saved in the model's config as "
            "`label_thresholds` (the pipeline's threshold='label'); the test F1 metrics use them. "
            "--tune_thresholds false: --threshold for all."
        },
    )


def evaluate_stage(context: RunContext, model_folder: Path) -> dict[str, Any]:
    """Score the final model on the test split (unseen labels count as misses): report, plot and predictions."""
    folder = context.folder / "eval"
    report_path = folder / "test_metrics.json"
    context.begin_stage("evaluation", report_path)
    if report_path.exists():
        return json.loads(report_path.read_text())
    model = PlantForMultiLabelClassification.from_pretrained(model_folder, dtype=context.args.dtype).eval()
    threshold = _tuned_thresholds(context, model, model_folder) if context.args.tune_thresholds else None
    predictions = split_predictions(context, model, "test")
    test = context.splits["test"]
    truth, _ = context.vocabulary.evaluation_targets(test["labels"])
    report = evaluate_predictions(
        truth,
        predictions,
        context.vocabulary.counts,
        context.vocabulary.num_documents,
        threshold=context.args.threshold if threshold is None else threshold,
    )
    if threshold is not None:
        fixed = threshold_metrics(as_truth_matrix(truth, len(context.vocabulary)), predictions, context.args.threshold)
        report["fixed_threshold"] = {"threshold": context.args.threshold, **fixed}
    report["meta"] = {
        "split": "test",
        "notes": context.notes,
        "unseen_labels": str(context.vocabulary.unseen(test["labels"], "test")),
    }
    if context.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        labels = context.vocabulary.labels
        write_predictions(
            folder / "test_predictions.jsonl",
            test["id"],
            ([labels[i] for i in row if i >= 0] for row in predictions.indices),
            (
                [s for i, s in zip(row_i, row_s, strict=True) if i >= 0]
                for row_i, row_s in zip(predictions.indices, predictions.scores, strict=True)
            ),
        )
        plot_frequency_buckets(report, folder / "test_buckets.png", title="test metrics by label frequency")
        write_report(report, report_path)
    return report


def split_predictions(context: RunContext, model: PlantForMultiLabelClassification, split: str) -> TopKPredictions:
    """The model's top-k predictions on a split of the run, with the run's Trainer settings (devices, precision,
    evaluation batch size)."""
    arguments = dataclasses.replace(context.training, output_dir=str(context.folder / "eval"))
    return predict_top_k(model, *inference_inputs(context, model, split), context.args.eval_top_k, arguments)


def _tuned_thresholds(context: RunContext, model: PlantForMultiLabelClassification, model_folder: Path) -> np.ndarray:
    """Per-label thresholds tuned on the dev split, also written into the saved model's config."""
    truth, _ = context.vocabulary.evaluation_targets(context.splits["dev"]["labels"])
    predictions = split_predictions(context, model, "dev")
    thresholds = tune_label_thresholds(truth, predictions)
    model.config.label_thresholds = thresholds.tolist()
    if context.is_main:
        with atomic_path(model_folder / "config.json") as partial:
            model.config.to_json_file(partial)
    return thresholds


def predict_top_k(model, documents, collator, k: int, arguments: TrainingArguments) -> TopKPredictions:
    """Each document's `k` most probable labels and their probabilities, in the documents' order, by Trainer's
    prediction loop (on every process of a distributed run, each predicting its share)."""
    trainer = XMCTrainer(
        model=model,
        args=arguments,
        eval_dataset=documents,
        data_collator=collator,
        preprocess_logits_for_metrics=top_k_logits(k),
        stage="predicting",
    )
    indices, scores = trainer.predict(documents).predictions
    return TopKPredictions(indices, scores, model.config.num_labels)


__all__ = ["EvaluationArguments", "evaluate_stage", "predict_top_k", "split_predictions"]
