"""Stage 9 of the recipe: the model card, generated from what the run did, next to the weights."""

import json
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..data import detect_format
from ..files import write_json
from ..hub import EVAL_REPORT_FILE, TrainingInfo, framework_versions, is_hub_id, write_model_card
from ..planting.transplant import load_ranker
from .data import DEFAULT_BACKBONE_ID, SYNTHETIC_DATA, RunContext, default_settings, run_config
from .finetuning import FINETUNING_SUMMARY, QLORA_MERGED

logger = logging.get_logger(__name__)


def card_stage(context: RunContext, model_folder: Path, report: dict[str, Any]) -> None:
    """Write the model card (and the training record it is generated from) next to the weights."""
    if not context.is_main:
        return
    args, training = context.args, context.training
    planting: dict[str, Any] = {}
    if args.planting != "none":
        ranker = load_ranker(context.folder / "ranker").config
        stage = ranker.metrics.get("contextual") or ranker.metrics.get("static") or {}
        planting = {
            "kind": ranker.kind,
            "ndcg_k": ranker.metrics.get("ndcg_k"),
            # Rankers written before the listwise loss existed do not record theirs: ApproxNDCG.
            **{key: stage.get(key) for key in ("random_init", "trained", "loss")},
        }
    info = TrainingInfo(
        base_model=args.backbone or DEFAULT_BACKBONE_ID,
        dataset=args.data,
        num_labels=len(context.vocabulary),
        train_documents=context.vocabulary.num_documents,
        mig={"top-k": args.mig_top_k, "grades": args.mig_grades} if args.planting != "none" else {},
        planting=planting,
        finetuning={
            "mode": args.backbone_mode,
            "label init": args.label_init,
            "context gate": args.context_gate,
            "epoch ceiling": training.num_train_epochs,
            "head lr": training.learning_rate,
            "planted attention lr": training.learning_rate * training.planted_lr_fraction,
            "backbone lr": training.backbone_learning_rate if args.backbone_mode != "frozen" else "frozen",
            "best checkpoint by": training.metric_for_best_model,
            "decision thresholds": "tuned on dev (per label from 5 dev examples)"
            if args.tune_thresholds
            else args.threshold,
            "precision": "bf16 autocast" if training.bf16 else "fp16 autocast" if training.fp16 else "fp32",
            **({"saved and evaluated": QLORA_MERGED} if args.backbone_mode == "qlora" else {}),
        },
        label_tree=_label_tree(model_folder),
        hyperparameters=run_config(args, training),
        changed=changed_options(args, training),
        stages=stage_lengths(context),
        top_labels=top_labels(context),
        datasets=[args.data] if _on_the_hub(args.data) else [],
        versions=framework_versions(),
        widget=widget_example(context),
        **backbone_card_metadata(context.backbone),
    )
    info.save(model_folder)
    write_json(model_folder / EVAL_REPORT_FILE, report)
    write_model_card(model_folder, report)


def _label_tree(model_folder: Path) -> dict[str, Any]:
    """The saved model's label tree settings (empty without a tree)."""
    config = json.loads((model_folder / "config.json").read_text())
    if not config.get("label_tree_nodes"):
        return {}
    return {
        "nodes": config["label_tree_nodes"],
        "arity": config["label_tree_arity"],
        "leaf_size": config["label_tree_leaf_size"],
        "beam": config["shortlist_beam"],
        "shortlist_min_labels": config["shortlist_min_labels"],
    }


def changed_options(args: Any, training: Any) -> dict[str, Any]:
    """The run's options that differ from plant-hf's defaults."""
    config = json.loads(json.dumps(run_config(args, training), default=str))
    # Trainer's options as a fresh instance holds them (its own post-init settles some of them).
    fresh = json.loads(json.dumps(type(training)(output_dir=training.output_dir).to_dict(), default=str))
    defaults = {**default_settings(args), **fresh}
    return {name: value for name, value in config.items() if name in defaults and value != defaults[name]}


def top_labels(context: RunContext, count: int = 20) -> dict[str, int]:
    """The `count` most frequent training labels with their document counts."""
    vocabulary = context.vocabulary
    order = sorted(range(len(vocabulary)), key=lambda index: (-vocabulary.counts[index], vocabulary.labels[index]))
    return {vocabulary.labels[index]: int(vocabulary.counts[index]) for index in order[:count]}


def _on_the_hub(data: str) -> bool:
    """Whether the run's corpus is a Hub dataset (not the built-in one, not local files)."""
    return data != SYNTHETIC_DATA and detect_format(data) == "hub"


def widget_example(context: RunContext, words: int = 60) -> str | None:
    """An example input for the Hub's widget: the start of the first test document where the corpus is public (a
    Hub dataset or the built-in one), else the catalogue's description of the most frequent label that has one;
    none otherwise, as a private corpus's text never goes into a card."""
    data = context.args.data
    test = context.splits.get("test")
    if (data == SYNTHETIC_DATA or _on_the_hub(data)) and test is not None and len(test):
        return " ".join(test[0]["text"].split()[:words])
    described = [label for label in top_labels(context, len(context.vocabulary)) if label in context.descriptions]
    return context.descriptions[described[0]] if described else None


def backbone_card_metadata(backbone: str) -> dict[str, Any]:
    """The license and languages of the backbone, from its model card: a local folder's README.md, or a Hub
    repo's, fetched as its weights were (none where the Hub cannot be reached or the card says none)."""
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import HfHubHTTPError

    path = Path(backbone) / "README.md"
    if not path.is_file() and not is_hub_id(backbone):
        return {}
    try:
        data = ModelCard.load(path if path.is_file() else backbone).data
    except (OSError, ValueError, HfHubHTTPError) as error:
        logger.info(f"the model card names no license or language: {backbone}'s card could not be read ({error})")
        return {}
    return {"license": data.license, "language": data.language}


def stage_lengths(context: RunContext) -> dict[str, dict[str, Any]]:
    """How many epochs the ranker and the fine-tuning ran and why each stopped (runs of older versions: unknown)."""
    stages = {}
    ranker = context.folder / "ranker"
    if context.args.planting in ("contextual", "both") and ranker.exists():
        contextual = load_ranker(ranker).config.metrics.get("contextual", {})
        stages["ranker"] = {key: value for key, value in contextual.items() if key not in ("history",)}
    summary = context.folder / FINETUNING_SUMMARY
    if summary.exists():
        stages["fine-tuning"] = json.loads(summary.read_text())
    return stages


__all__ = [
    "backbone_card_metadata",
    "card_stage",
    "changed_options",
    "stage_lengths",
    "top_labels",
    "widget_example",
]
