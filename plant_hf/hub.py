"""Model cards generated from what a run actually did, rendered through `huggingface_hub.ModelCard`."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .data.catalogue import LABEL_DESCRIPTIONS_FILE, read_label_descriptions
from .files import PARTIAL_SUFFIX, write_json
from .training.evaluation import HEADLINE_METRICS, metric_name, percent

TEMPLATE = Path(__file__).with_name("model_cards") / "plant_model_card.md"
# Written next to the weights: what the card is generated from, so that it can be regenerated later.
TRAINING_INFO_FILE = "plant_training.json"
EVAL_REPORT_FILE = "eval_report.json"
# How the card names each ranker loss.
RANKER_LOSSES = {"listwise": "listwise loss on the MIG grades", "approx_ndcg": "ApproxNDCG"}
# What a model folder uploads: weights (safetensors only), configs, remote code, tokenizer, labels, card, and the
# lexical channel (napkinxc's classifiers are its own binary format, read by its C++ loader, not unpickled).
UPLOADED = ["*.safetensors", "*.json", "*.py", "*.md", "*.txt", "*.model", "*.tiktoken", "lexical/*"]
NEVER_UPLOADED = [
    "pytorch_model*.bin",
    "training_args.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.ckpt",
    "checkpoint-*/**",
    f"*{PARTIAL_SUFFIX}",
]


@dataclass
class TrainingInfo:
    """How a model was trained, as the model card tells it."""

    base_model: str
    dataset: str
    num_labels: int
    train_documents: int
    mig: dict[str, Any] = field(default_factory=dict)
    planting: dict[str, Any] = field(default_factory=dict)
    finetuning: dict[str, Any] = field(default_factory=dict)
    # The label tree's shape and shortlist settings, where the model has one.
    label_tree: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # The options of the run that differ from plant-hf's defaults (the card shows these first).
    changed: dict[str, Any] = field(default_factory=dict)
    # Per training stage (ranker, fine-tuning): epochs run, best epoch, why it stopped, dev metric by epoch.
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The most frequent training labels with their document counts (a sample of the label set).
    top_labels: dict[str, int] = field(default_factory=dict)
    # Hub metadata: the backbone's license and languages (from its card where it ships one), Hub datasets trained on.
    license: str | None = None
    language: list[str] | str | None = None
    datasets: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    # An example input for the Hub's inference widget (never a private corpus's text).
    widget: str | None = None

    def save(self, folder: str | Path) -> None:
        write_json(Path(folder) / TRAINING_INFO_FILE, asdict(self))

    @classmethod
    def load(cls, folder: str | Path) -> "TrainingInfo":
        return cls(**json.loads((Path(folder) / TRAINING_INFO_FILE).read_text()))


def render_model_card(
    info: TrainingInfo,
    report: dict[str, Any],
    model_id: str = "path/to/model",
    model_name: str | None = None,
    descriptions: dict[str, str] | None = None,
) -> ModelCard:
    """The model card of a trained model: YAML metadata with a `model-index` of the evaluation results, and a
    body telling the recipe, the results overall and per label-frequency bucket, how to load it, and its limits.

    `model_id` is what the card's loading snippets load (a Hub repo id, or the folder), `model_name` the name of its
    results (default: the repo's or folder's name), `descriptions` the label catalogue's, where there is one."""
    descriptions = descriptions or {}
    split = report.get("meta", {}).get("split", "test")
    dataset_name = info.datasets[0] if info.datasets else Path(info.dataset).name or info.dataset
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        license=info.license,
        language=info.language,
        datasets=info.datasets or None,
        tags=["plant-hf", "plant", "extreme-multi-label-classification", "label-attention", "multi-label"],
        base_model=info.base_model if is_hub_id(info.base_model) else None,
        widget=[{"text": info.widget}] if info.widget else None,
        model_name=model_name or model_id.rstrip("/").rsplit("/", 1)[-1],
        eval_results=[
            EvalResult(
                task_type="text-classification",
                task_name="Extreme multi-label classification",
                dataset_type=dataset_name,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=name,
                metric_name=metric_name(name),
                metric_value=round(100 * report[name], 2),
            )
            for name in HEADLINE_METRICS
            if isinstance(report.get(name), float) and report[name] == report[name]
        ],
    )
    planting = info.planting
    planting_summary = "none: the attention starts from random initialisation"
    if planting.get("kind"):
        loss = RANKER_LOSSES[planting.get("loss") or "approx_ndcg"]
        planting_summary = (
            f"{planting['kind']} ranker ({loss}); held-out token-ranking nDCG@{planting.get('ndcg_k', 10)} "
            f"{percent(planting.get('random_init'))} at random init -> {percent(planting.get('trained'))} planted"
        )
    buckets = [
        {
            "name": name,
            "labels": values.get("labels"),
            "documents": values.get("documents"),
            "p1": percent(values.get("P@1")),
            "p5": percent(values.get("P@5")),
            "psp5": percent(values.get("PSP@5")),
            "r5": percent(values.get("R@5")),
        }
        for name, values in report.get("by_frequency", {}).items()
        if values.get("documents")
    ]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=f"PLANT classifier on {Path(info.base_model).name or info.base_model}",
        model_id=model_id,
        num_labels=info.num_labels,
        base_model_display=info.base_model,
        dataset=info.dataset,
        train_documents=info.train_documents,
        mig_summary=", ".join(f"{key} {value}" for key, value in info.mig.items()) or "not built",
        planting_summary=planting_summary,
        finetune_summary=", ".join(f"{key} {value}" for key, value in info.finetuning.items()),
        label_tree_summary=_label_tree_summary(info.label_tree, info.num_labels, report.get("label_tree")),
        memory_summary=_memory_summary(report.get("memory")),
        lexical_summary=_lexical_summary(report.get("lexical")),
        eval_summary=f"{split} split, top-k predictions scored with plant_hf.metrics",
        changed=sorted(info.changed.items()),
        hyperparameters=json.dumps(info.hyperparameters, indent=1, default=str),
        top_labels=[(name, count, descriptions.get(name)) for name, count in info.top_labels.items()],
        catalogue=len(descriptions),
        versions=sorted(info.versions.items()),
        eval_split=split,
        eval_documents=report.get("documents"),
        results=[(metric_name(name), percent(report.get(name))) for name in HEADLINE_METRICS],
        buckets=buckets,
        stages=[_stage_row(name, length) for name, length in info.stages.items()],
    )


def _label_tree_summary(tree: dict[str, Any], num_labels: int, measured: dict[str, Any] | None) -> str:
    """The label tree as the card tells it (from the model's config, and the evaluation's `measured` shortlist)."""
    if not tree:
        return "none: the head scores every label"
    least = tree["shortlist_min_labels"]
    scoring = (
        "the head scores only each document's shortlist"
        if least is not None and num_labels >= least
        else f"the head scores every label (it shortlists from {least} labels on)"
    )
    return (
        f"{tree['nodes']} nodes, {tree['arity']} children a node, leaf clusters of at most {tree['leaf_size']} labels "
        f"(balanced k-means on PIFA embeddings); the matcher, trained with the head, keeps {tree['beam']} leaf "
        f"clusters a document; {scoring}"
        + (
            f"; on the evaluation split its shortlists ({measured['shortlist_size']:.0f} labels on average, with the "
            f"memory's) held {100 * measured['recall']:.1f}% of the documents' labels"
            if measured
            else ""
        )
    )


def _memory_summary(memory: dict[str, Any] | None) -> str:
    """The retrieval memory as the card tells it (from the evaluation report, which tuned its weight)."""
    if not memory:
        return "none: the probabilities are the head's own"
    described = memory.get("description_weight") or 0.0
    if not memory["weight"] and not described:
        return "built, but given weight 0 on dev: the probabilities are the head's own"
    summary = (
        f"{memory['entries']} documents' mean token states with their labels (memory.safetensors); the "
        f"{memory['top_k']} nearest to a document vote for their labels (softmax of the cosine similarity at "
        f"temperature {memory['temperature']:g}), mixed into the probabilities at weight {memory['weight']:g} (tuned "
        "on dev) by the model itself, in both pipelines"
    )
    if described:
        summary += (
            f"; the {memory['descriptions']} labels without training documents are scored from their descriptions "
            f"at weight {described:g}"
        )
    return summary


def _lexical_summary(lexical: dict[str, Any] | None) -> str:
    """The lexical channel as the card tells it (from the evaluation report, which tuned its weight)."""
    if not lexical:
        return "none: the probabilities are the model's own"
    if not lexical["weight"]:
        return "trained, but given weight 0 on dev: the probabilities are the model's own"
    return (
        "a linear classifier per label on TF-IDF word n-grams of the whole text (napkinxc), its probabilities "
        f"fused with the model's at weight {lexical['weight']:g} (tuned on dev; the channel trained on "
        f"{lexical.get('trained on', 'train')}) by the `xmc-classification` pipeline; `text-classification` returns "
        "the model's own"
    )


def _stage_row(name: str, length: dict[str, Any]) -> dict[str, Any]:
    """A training stage's length as the card's table shows it: the dev metric by epoch in percent."""
    curve = next((key for key in length if key.endswith("_by_epoch")), None)
    metric = curve[len("dev_") : -len("_by_epoch")] if curve else ""
    return {
        "name": name,
        "epochs": length.get("epochs"),
        "best_epoch": length.get("best_epoch"),
        "stopped": length.get("stopped", ""),
        "minutes": "-" if length.get("seconds") is None else f"{length['seconds'] / 60:.1f}",
        "curve": f"{metric}: " + ", ".join(f"{100 * value:.2f}" for value in length[curve]) if curve else "-",
    }


def write_model_card(folder: str | Path, report: dict[str, Any] | None = None, model_id: str | None = None) -> Path:
    """(Re)generate a model folder's README.md from its training info and evaluation report (by default the
    report saved in the folder)."""
    folder = Path(folder)
    if not (folder / TRAINING_INFO_FILE).exists():
        raise FileNotFoundError(
            f"{folder} has no {TRAINING_INFO_FILE}: the card is generated from what training did, which plant-hf fit "
            "records next to the weights."
        )
    if report is None:
        report_path = folder / EVAL_REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    path = folder / "README.md"
    # A run's model folder is `<run>/model`: its results are named after the run.
    name = None if model_id else (folder.resolve().parent.name if folder.name == "model" else folder.name)
    catalogue = folder / LABEL_DESCRIPTIONS_FILE
    descriptions = read_label_descriptions(catalogue) if catalogue.is_file() else None
    info = TrainingInfo.load(folder)
    render_model_card(info, report, model_id=model_id or str(folder), model_name=name, descriptions=descriptions).save(
        path
    )
    return path


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repo id (`org/name`) rather than a local path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def framework_versions() -> dict[str, str]:
    """The versions of the libraries a model was trained with, as its card lists them."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("plant-hf", "transformers", "torch", "peft", "accelerate", "datasets", "tokenizers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Upload a model folder (weights, remote code, tokenizer, label map and card), or a LoRA adapter folder
    alone, to the Hub in one commit; returns the commit's URL.

    Only safetensors weights leave the machine: a folder holding pickled weights is refused.
    """
    folder = Path(folder)
    is_model = (folder / "config.json").exists() and any(folder.glob("*.safetensors"))
    is_adapter = (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
    if not (is_model or is_adapter):
        raise FileNotFoundError(
            f"{folder} is neither a model folder (config.json and safetensors weights) nor a LoRA adapter folder "
            "(adapter_config.json and adapter_model.safetensors)."
        )
    pickled = [path.name for pattern in ("*.bin", "*.pt", "*.pth", "*.pkl") for path in folder.glob(pattern)]
    if pickled:
        raise ValueError(f"{folder} holds pickled weights {pickled}; only safetensors are pushed. Remove them.")
    api = api or HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if (folder / TRAINING_INFO_FILE).exists():  # the card names the repo it is pushed to
        write_model_card(folder, model_id=repo.repo_id)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo.repo_id,
        repo_type="model",
        commit_message=commit_message or f"Upload PLANT {'adapter' if is_adapter and not is_model else 'model'}",
        allow_patterns=UPLOADED,
        ignore_patterns=NEVER_UPLOADED,
    )
    return str(getattr(commit, "commit_url", commit))


__all__ = [
    "EVAL_REPORT_FILE",
    "TRAINING_INFO_FILE",
    "TrainingInfo",
    "framework_versions",
    "is_hub_id",
    "push_to_hub",
    "render_model_card",
    "write_model_card",
]
