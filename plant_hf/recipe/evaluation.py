"""Stage 8 of the recipe: the weights of the retrieval memory and of the lexical channel and the decision thresholds
tuned on dev, then the final model scored on the test split."""

import dataclasses
import json
import shutil
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainingArguments
from transformers.utils import logging

from ..data import write_predictions
from ..files import atomic_path, write_json
from ..lexical import LEXICAL_FOLDER, LEXICAL_WEIGHTS, LexicalRanker, fuse, tune_lexical_weight
from ..metrics import TopKPredictions, as_truth_matrix, evaluate_predictions, threshold_metrics, tune_label_thresholds
from ..modeling_plant import MEMORY_FILE, PlantDocumentMemory, PlantForMultiLabelClassification
from ..pipeline_plant import MEMORY_DOCUMENTS_FILE
from ..training.evaluation import flatten_report, plot_frequency_buckets, top_k_logits, write_report
from ..training.trainer import XMCTrainer
from .data import RunContext, inference_inputs
from .lexical import dev_held_out, train_channel
from .memory import build_memory, document_embeddings
from .options import stage_options

logger = logging.get_logger(__name__)

# Documents shortlisted at once: the memory scores every label of each.
SHORTLIST_BATCH = 256


@stage_options("evaluation", "Evaluation", at_least={"eval_top_k": 1})
class EvaluationArguments:
    """How the final model is scored."""

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
    fusion_metric: str = field(
        default="nDCG@5",
        metadata={
            "help": "Dev metric that picks the weights of the retrieval memory, of its label descriptions and of the "
            "lexical channel (the least weight among equals). nDCG@5 weighs the order within the top 5, which "
            "separates weights that P@5 on a few hundred dev documents scores alike."
        },
    )
    join_held_out: bool = field(
        default=True,
        metadata={
            "help": "Where the dev split was held out of the training split (the corpus has no dev split), its "
            "documents join the saved memory, and the saved lexical channel is trained again with them, once the "
            "weights and the thresholds are chosen: labels seen a handful of times gain their held-out examples."
        },
    )


def evaluate_stage(
    context: RunContext,
    model_folder: Path,
    lexical: LexicalRanker | None = None,
    memory: PlantDocumentMemory | None = None,
) -> dict[str, Any]:
    """Tune the weights of the retrieval `memory` and of the `lexical` channel (where there are) and the decision
    thresholds on dev, save them with the model, and score it on the test split (unseen labels count as misses):
    report, plot and predictions."""
    report_path = context.folder / "eval" / "test_metrics.json"
    context.begin_stage("evaluation", report_path)
    if report_path.exists():
        return json.loads(report_path.read_text())
    model = PlantForMultiLabelClassification.from_pretrained(model_folder, dtype=context.args.dtype).eval()
    dev_weights = _tune_on_dev(context, model, lexical, memory)
    held_out_returned = (
        lexical is not None
        and bool(model.config.lexical_weight)
        and context.args.join_held_out
        and dev_held_out(context)
    )
    _save_memory(context, model, model_folder)
    lexical = _save_tuned(context, model, model_folder, lexical, held_out_returned)
    predictions = split_predictions(context, model, "test", lexical)
    report = _test_report(context, model, predictions)
    if lexical is not None:
        trained_on = "train and held-out dev" if held_out_returned else "train"
        report["lexical"] = {
            "weight": model.config.lexical_weight,
            "dev": dev_weights["lexical"],
            "trained on": trained_on,
        }
    if memory is not None:
        report["memory"] = _memory_report(model.config, dev_weights)
    if model.matcher is not None:
        report["label_tree"] = _shortlist_report(context, model)
    if context.is_main:
        _write_test_outputs(context, report, predictions, report_path)
    return report


def _test_report(
    context: RunContext, model: PlantForMultiLabelClassification, predictions: TopKPredictions
) -> dict[str, Any]:
    """The metrics of the test predictions, F1 at the tuned thresholds (and at `--threshold` beside them) or at
    `--threshold`."""
    tuned = np.asarray(model.config.label_thresholds) if context.args.tune_thresholds else None
    test = context.splits["test"]
    truth, _ = context.vocabulary.evaluation_targets(test["labels"])
    report = evaluate_predictions(
        truth,
        predictions,
        context.vocabulary.counts,
        context.vocabulary.num_documents,
        threshold=context.args.threshold if tuned is None else tuned,
    )
    if tuned is not None:
        fixed = threshold_metrics(as_truth_matrix(truth, len(context.vocabulary)), predictions, context.args.threshold)
        report["fixed_threshold"] = {"threshold": context.args.threshold, **fixed}
    report["meta"] = {
        "split": "test",
        "notes": context.notes,
        "unseen_labels": str(context.vocabulary.unseen(test["labels"], "test")),
    }
    return report


def _shortlist_report(context: RunContext, model: PlantForMultiLabelClassification) -> dict[str, Any]:
    """The shortlist on the test split: its mean size, and its recall of the documents' labels (unseen labels count
    as missed), whether or not the head scores only the shortlist at this label count."""
    embeddings = document_embeddings(context, model, *inference_inputs(context, model, "test"), "shortlist: test")
    truth, _ = context.vocabulary.evaluation_targets(context.splits["test"]["labels"])
    sizes, hits = [], 0
    for start in range(0, embeddings.shape[0], SHORTLIST_BATCH):
        shortlist = model.shortlist(embeddings[start : start + SHORTLIST_BATCH].to(model.device)).cpu().numpy()
        for row, listed in enumerate(shortlist, start):
            listed = listed[listed >= 0]
            sizes.append(len(listed))
            hits += int(np.isin(truth.indices[truth.indptr[row] : truth.indptr[row + 1]], listed).sum())
    return {
        "shortlist_size": float(np.mean(sizes)),
        "recall": hits / max(truth.nnz, 1),
        "beam": model.config.shortlist_beam,
        "shortlisting": model.shortlisting,
    }


def _memory_report(config: Any, dev_weights: dict[str, dict[float, float] | None]) -> dict[str, Any]:
    """What the test report says of the retrieval memory: its tuned weights with their dev scores, and its size."""
    return {
        "weight": config.memory_weight,
        "dev": dev_weights["memory"],
        "description_weight": config.memory_description_weight,
        "descriptions": config.memory_descriptions,
        "descriptions_dev": dev_weights["descriptions"],
        "entries": config.memory_size,
        "top_k": config.memory_top_k,
        "temperature": config.memory_temperature,
    }


def _write_test_outputs(
    context: RunContext, report: dict[str, Any], predictions: TopKPredictions, report_path: Path
) -> None:
    """The test predictions (JSON lines), the bucket plot and, last, the report that marks the stage done."""
    folder, labels, test = report_path.parent, context.vocabulary.labels, context.splits["test"]
    folder.mkdir(parents=True, exist_ok=True)
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


def split_predictions(
    context: RunContext,
    model: PlantForMultiLabelClassification,
    split: str,
    lexical: LexicalRanker | None = None,
    neural: TopKPredictions | None = None,
) -> TopKPredictions:
    """The model's top-k predictions on a split of the run, with the run's Trainer settings (devices, precision,
    evaluation batch size), fused with the `lexical` channel's as the model's `lexical_weight` says. `neural`: the
    model's own predictions, where already made."""
    if neural is None:
        arguments = dataclasses.replace(context.training, output_dir=str(context.folder / "eval"))
        neural = predict_top_k(model, *inference_inputs(context, model, split), context.args.eval_top_k, arguments)
    weight = model.config.lexical_weight
    if lexical is None or not weight:
        return neural
    return fuse(neural, lexical.top_k(context.splits[split]["text"]), weight)


def _tune_on_dev(
    context: RunContext,
    model: PlantForMultiLabelClassification,
    lexical: LexicalRanker | None,
    memory: PlantDocumentMemory | None,
) -> dict[str, dict[float, float] | None]:
    """The memory's weight (the memory is dropped at 0), then the lexical channel's (on the model's predictions with
    the memory), each by `--fusion_metric`, and then the per-label thresholds (on the fused dev predictions), set in
    the model's config. Returns each weight's dev score, by channel (None for a channel the run has not)."""
    args = context.args
    truth, _ = context.vocabulary.evaluation_targets(context.splits["dev"]["labels"])
    scores = {"memory": None, "descriptions": None, "lexical": None}
    model.config.lexical_weight = 0.0
    model.set_memory(memory)
    if memory is not None:
        scores["memory"], scores["descriptions"] = _tune_memory(context, model, truth)
    neural = split_predictions(context, model, "dev") if lexical is not None or args.tune_thresholds else None
    if lexical is not None:
        dev_lexical = lexical.top_k(context.splits["dev"]["text"])
        metric = _selection(context, args.fusion_metric)
        model.config.lexical_weight, scores["lexical"] = tune_lexical_weight(truth, neural, dev_lexical, metric)
        if context.is_main:
            logger.info(f"lexical channel: weight {model.config.lexical_weight:g} (tuned on dev)")
    if args.tune_thresholds:
        fused = split_predictions(context, model, "dev", lexical, neural=neural)
        model.config.label_thresholds = tune_label_thresholds(truth, fused).tolist()
    return scores


def _tune_memory(
    context: RunContext, model: PlantForMultiLabelClassification, truth: Any
) -> tuple[dict[float, float], dict[float, float] | None]:
    """The memory's weight, then its descriptions' (where it has any), each by `--fusion_metric` on the dev
    predictions with the weights before it; the memory is dropped where both are 0. Returns each weight's score."""
    config, metric = model.config, _selection(context, context.args.fusion_metric)

    def predictions(memory_weight: float, description_weight: float) -> TopKPredictions:
        config.memory_weight, config.memory_description_weight = memory_weight, description_weight
        return split_predictions(context, model, "dev")

    alone, remembered = predictions(0.0, 0.0), predictions(1.0, 0.0)
    weight, scores = tune_lexical_weight(truth, alone, remembered, metric)
    description_weight, description_scores = 0.0, None
    if model.memory.description_labels.numel():
        mixed = predictions(weight, 0.0) if weight else alone
        described = predictions(0.0, 1.0)
        # Not 0: with 0 a catalogue label without training documents could never be predicted, and the dev metric
        # over all labels weighs these few labels too little to ask for them.
        description_weight, description_scores = tune_lexical_weight(
            truth, mixed, described, metric, LEXICAL_WEIGHTS[1:]
        )
    config.memory_weight, config.memory_description_weight = weight, description_weight
    if context.is_main:
        described = f", its descriptions {description_weight:g}" if description_scores is not None else ""
        dropped = "; the model keeps no memory" if not weight and not description_weight else ""
        logger.info(f"retrieval memory: weight {weight:g}{described} (tuned on dev){dropped}")
    if not weight and not description_weight:
        model.set_memory(None)
    return scores, description_scores


def _selection(context: RunContext, name: str):
    """The dev metric `name` (one the evaluation reports) as a score of top-k predictions."""
    vocabulary = context.vocabulary

    def metric(truth, predictions: TopKPredictions) -> float:
        report = evaluate_predictions(truth, predictions, vocabulary.counts, vocabulary.num_documents)
        return flatten_report(report)[name]

    return metric


def _save_memory(context: RunContext, model: PlantForMultiLabelClassification, model_folder: Path) -> None:
    """Save the memory the model keeps (with the held-out dev documents where `--join_held_out` returns them)
    as the model folder's memory file, with the ids of its documents, or remove them where it keeps none."""
    splits = ("train",)
    if model.memory is not None and context.args.join_held_out and dev_held_out(context):
        if context.is_main:
            logger.info(f"retrieval memory: the {len(context.splits['dev'])} held-out documents join it")
        model.set_memory(model.memory.joined(build_memory(context, model, ("dev",), descriptions=False)))
        splits = ("train", "dev")
    if not context.is_main:
        return
    if model.memory is None:
        for name in (MEMORY_FILE, MEMORY_DOCUMENTS_FILE):
            (model_folder / name).unlink(missing_ok=True)
        return
    write_json(model_folder / MEMORY_DOCUMENTS_FILE, [str(i) for split in splits for i in context.splits[split]["id"]])
    with atomic_path(model_folder / MEMORY_FILE) as partial:
        model.memory.save(str(partial))


def _save_tuned(
    context: RunContext,
    model: PlantForMultiLabelClassification,
    model_folder: Path,
    lexical: LexicalRanker | None,
    held_out_returned: bool,
) -> LexicalRanker | None:
    """Save what was tuned on dev with the model: the channel its config weighs in the model folder (the run's, or
    trained again there with the held-out documents; none where its weight is 0), then the config. Returns the
    channel the model now carries."""
    target = model_folder / LEXICAL_FOLDER
    if held_out_returned:
        if context.is_main:
            logger.info(f"lexical channel: trained again with the {len(context.splits['dev'])} held-out documents")
        lexical = train_channel(context, ("train", "dev"), target, again=True)
    elif context.is_main and (lexical is None or not model.config.lexical_weight):
        shutil.rmtree(target, ignore_errors=True)
    elif context.is_main:
        with atomic_path(target) as partial:
            shutil.copytree(lexical.folder, partial)
    if context.is_main:
        with atomic_path(model_folder / "config.json") as partial:
            model.config.to_json_file(partial)
    return lexical


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
