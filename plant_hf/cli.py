"""The `plant-hf` command line: each subcommand is a dataclass of arguments and one function of the Python API."""

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from transformers import HfArgumentParser


@dataclass
class EvaluateArguments:
    """Evaluate a prediction file against a corpus split: a JSON report and a PNG plot per frequency bucket."""

    predictions: str = field(
        metadata={"help": 'JSON lines of ranked predictions: {"id": ..., "labels": [best, ...], "scores": [...]}.'}
    )
    data: str = field(
        metadata={
            "help": "The corpus: a folder (JSON lines, CAML CSV, AttentionXML or xmc-base layout) or a Hub dataset "
            "id. Its training split gives the label frequencies and propensities."
        }
    )
    split: str = field(default="test", metadata={"help": "The split the predictions are for."})
    output: str | None = field(
        default=None, metadata={"help": "JSON report path; unset: <predictions name>.metrics.json beside them."}
    )
    plot: str | None = field(
        default=None, metadata={"help": "PNG plot path; unset: <predictions name>.buckets.png beside them."}
    )
    ks: list[int] = field(default_factory=lambda: [1, 3, 5], metadata={"help": "Cut-offs k of P@k, nDCG@k, PSP@k..."})
    threshold: float = field(default=0.5, metadata={"help": "Score threshold of the F1 metrics."})
    propensity_a: float = field(default=0.55, metadata={"help": "Parameter A of the Jain et al. propensities."})
    propensity_b: float = field(default=1.5, metadata={"help": "Parameter B of the Jain et al. propensities."})
    on_error: Literal["raise", "skip"] = field(
        default="raise", metadata={"help": "On a bad record in the corpus: stop with an error, or skip and count it."}
    )


def run_evaluate(args: EvaluateArguments) -> dict[str, Any]:
    from .training.evaluation import (
        evaluate_prediction_file,
        format_metrics_table,
        plot_frequency_buckets,
        write_report,
    )

    stem = Path(args.predictions)
    output = Path(args.output or stem.with_name(stem.name.split(".")[0] + ".metrics.json"))
    plot = Path(args.plot or stem.with_name(stem.name.split(".")[0] + ".buckets.png"))
    report = evaluate_prediction_file(
        args.predictions,
        args.data,
        split=args.split,
        ks=args.ks,
        threshold=args.threshold,
        propensity_a=args.propensity_a,
        propensity_b=args.propensity_b,
        on_error=args.on_error,
    )
    write_report(report, output)
    plot_frequency_buckets(report, plot, title=f"{Path(args.data).name} [{args.split}]")
    print(format_metrics_table(report))
    print(report["meta"]["unseen_labels"])
    print(f"report: {output}\nplot:   {plot}")
    return report


@dataclass
class DocumentReadingArguments:
    """The trained model and the documents it reads, and where it runs."""

    _argument_group_name: ClassVar[str] = "Model and documents"

    model: str = field(metadata={"help": "The model folder (or Hub id)."})
    input: str = field(
        metadata={"help": 'JSON lines of documents: {"id": ..., "text": ...}; "labels" optional (explain shows them).'}
    )

    text_field: str = field(default="text", metadata={"help": "Text field of the input lines."})
    batch_size: int = field(default=16, metadata={"help": "Documents per batch."})
    on_error: Literal["raise", "skip"] = field(
        default="raise", metadata={"help": "On a bad input line: stop with an error, or skip and count it."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if present)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model folder's own code."})
    lexical: bool = field(
        default=True,
        metadata={
            "help": "Fuse the model's lexical channel into its probabilities, where it has one (config.lexical_weight "
            "above 0). --lexical false: the model's own probabilities."
        },
    )


@dataclass
class PredictArguments:
    """Predict the labels of documents with a trained PLANT model: JSON lines in, JSON lines out."""

    output: str = field(metadata={"help": 'Where to write {"id", "labels": [best, ...], "scores": [...]} lines.'})
    top_k: int = field(default=20, metadata={"help": "Labels kept per document (0: all)."})
    threshold: str | None = field(
        default=None,
        metadata={
            "help": "Keep only labels at least this probable: a probability, or `label` for each label's own "
            "threshold, tuned on the dev split by plant-hf fit."
        },
    )


@dataclass
class ExplainArguments:
    """Write one self-contained HTML page per document showing the words each predicted label attends to."""

    output_dir: str = field(metadata={"help": "Folder for the pages (one per document, and index.html)."})
    top_k: int = field(default=10, metadata={"help": "Predicted labels per page."})
    limit: int | None = field(default=None, metadata={"help": "Explain only the first this many documents."})
    label_descriptions: str | None = field(
        default=None,
        metadata={
            "help": 'What each label means: JSON lines {"label": ..., "description": ...}, a CSV with label and '
            "description columns, or one JSON object label -> description (default: the model folder's own "
            "label_descriptions.json, where it was trained with a label catalogue)."
        },
    )


@dataclass
class CardArguments:
    """Regenerate a model folder's model card from its training record and an evaluation report."""

    model: str = field(metadata={"help": "The model folder (written by plant-hf fit)."})
    report: str | None = field(default=None, metadata={"help": "An evaluation report (default: the folder's own)."})
    model_id: str | None = field(default=None, metadata={"help": "The Hub id the card names (default: folder)."})


@dataclass
class PushArguments:
    """Upload a model folder (weights, remote code, tokenizer, label map, card), or a LoRA adapter, in one commit."""

    folder: str = field(metadata={"help": "The model folder, or an adapter folder to push alone."})
    repo_id: str = field(metadata={"help": "The Hub repository, e.g. my-org/plant-icd10."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the stored login)."})
    commit_message: str | None = field(default=None, metadata={"help": "The commit's message."})


def _pipeline(model: str, device: str | None, trust_remote_code: bool):
    import torch
    from transformers import AutoModel, AutoTokenizer, pipeline

    from . import TASK

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Loaded here rather than by the pipeline, whose errors bury the cause under one traceback per class it tried.
    classifier = AutoModel.from_pretrained(model, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    return pipeline(TASK, model=classifier, tokenizer=tokenizer, device=device)


def _documents(path: str, text_field: str, on_error: str):
    from .data import read_jsonl

    documents, report = read_jsonl(path, text_field=text_field, labels_field=None, on_error=on_error)
    print(report)
    return documents


def _threshold(value: str | None) -> float | str | None:
    """`--threshold` as the pipeline takes it: a probability, `label`, or nothing."""
    if value is None or value == "label":
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--threshold {value}: give a probability such as 0.5, or `label`.") from None


def run_predict(reading: DocumentReadingArguments, args: PredictArguments) -> None:
    from tqdm.auto import tqdm

    from .data import write_predictions

    threshold = _threshold(args.threshold)
    if not Path(args.output).resolve().parent.is_dir():
        raise ValueError(f"--output {args.output}: its folder does not exist; create it or write elsewhere.")
    documents = _documents(reading.input, reading.text_field, reading.on_error)
    classify = _pipeline(reading.model, reading.device, reading.trust_remote_code)
    # A generator makes the pipeline yield each document as it is done, so that the bar moves with the work.
    texts = (text for text in documents["text"])
    top_k = args.top_k or None  # 0: every label
    outputs = classify(texts, batch_size=reading.batch_size, top_k=top_k, threshold=threshold, lexical=reading.lexical)
    predictions = list(tqdm(outputs, total=len(documents), desc="Predicting", unit="doc"))
    write_predictions(
        args.output,
        documents["id"],
        ([entry["label"] for entry in document] for document in predictions),
        ([entry["score"] for entry in document] for document in predictions),
    )
    print(f"{len(predictions)} documents predicted -> {args.output}")


def run_explain(reading: DocumentReadingArguments, args: ExplainArguments) -> None:
    import datetime

    from tqdm.auto import tqdm

    from .explanation import explanation_index, explanation_page

    descriptions = _label_descriptions(args.label_descriptions, reading.model)
    documents = _documents(reading.input, reading.text_field, reading.on_error)
    if args.limit is not None:
        documents = documents.select(range(min(args.limit, len(documents))))
    classify = _pipeline(reading.model, reading.device, reading.trust_remote_code)
    config = classify.model.config
    thresholds = dict(zip(config.id2label.values(), config.label_thresholds or [], strict=False))
    made = {"model": reading.model, "created": datetime.date.today().isoformat()}
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    texts = (text for text in documents["text"])
    explained = classify(
        texts, batch_size=reading.batch_size, top_k=args.top_k, explain=True, explain_words=0, lexical=reading.lexical
    )
    for index, (document, predictions) in enumerate(
        tqdm(zip(documents, explained, strict=True), total=len(documents), desc="Explaining", unit="doc")
    ):
        name = f"{index:05d}-{''.join(c if c.isalnum() or c in '-_' else '_' for c in document['id'])[:60]}.html"
        gold = document["labels"]
        page = explanation_page(
            document["text"], predictions, gold, title=document["id"], thresholds=thresholds,
            descriptions=descriptions, **made,
        )  # fmt: skip
        (folder / name).write_text(page, encoding="utf-8")
        labels = [[entry["label"], round(entry["score"], 4)] for entry in predictions]
        rows.append({"page": name, "id": document["id"], "labels": labels, "gold": gold or None})
    (folder / "index.html").write_text(explanation_index(rows, **made), encoding="utf-8")
    print(f"{len(rows)} pages -> {folder / 'index.html'}")


def _label_descriptions(path: str | None, model: str) -> dict[str, str]:
    """The descriptions given, or those the model folder carries (none for a Hub id or a model without them)."""
    from .data.catalogue import LABEL_DESCRIPTIONS_FILE, read_label_descriptions

    own = Path(model) / LABEL_DESCRIPTIONS_FILE
    if path is None and own.is_file():
        path = own
    return read_label_descriptions(path) if path is not None else {}


def run_card(args: CardArguments) -> None:
    import json

    from .hub import write_model_card

    report = json.loads(Path(args.report).read_text()) if args.report else None
    print(f"model card -> {write_model_card(args.model, report, model_id=args.model_id)}")


def run_push(args: PushArguments) -> None:
    from .hub import push_to_hub

    url = push_to_hub(
        args.folder, args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message
    )
    print(f"pushed {args.folder} -> {url}")


def _recipe(stages: str) -> Callable[..., Any]:
    """A command running the recipe's stages up to `stages` (`build_mig`, `pretrain` or `fit`)."""

    def run(args, training):
        from . import recipe

        return getattr(recipe, stages)(args, training)

    return run


@dataclass
class Command:
    # The argument dataclasses, imported only where the command is run or its options shown (the recipe's pull in
    # Trainer, seconds of imports that `predict --help` need not wait for).
    arguments: Callable[[], tuple[type, ...]]
    run: Callable[..., Any]
    help: str
    # The recipe's commands parse one dataclass per stage (a group of --help each) and run on their union.
    recipe: bool = False


def _recipe_arguments() -> tuple[type, ...]:
    from .recipe import STAGE_ARGUMENTS
    from .training.trainer import PlantTrainingArguments

    return (*STAGE_ARGUMENTS, PlantTrainingArguments)


def _commands() -> dict[str, Command]:
    recipe = _recipe_arguments
    return {
        "fit": Command(
            recipe,
            _recipe("fit"),
            "The whole recipe: MIG -> ranker -> plant -> fine-tune -> evaluate -> model card (no arguments: a demo "
            "on a built-in corpus with the offline MiniLM). Also takes a YAML/JSON file of the same options.",
            recipe=True,
        ),
        "mig": Command(
            recipe,
            _recipe("build_mig"),
            "The recipe's MIG table of the training split (token-label evidence) into <output_dir>/mig; fit's "
            "options, and fit on the same folder reuses it.",
            recipe=True,
        ),
        "pretrain": Command(
            recipe,
            _recipe("pretrain"),
            "The recipe up to the ranker (MIG table, then the label attention pretrained to rank tokens by MIG "
            "grade) into <output_dir>; fit's options, and fit on the same folder reuses both.",
            recipe=True,
        ),
        "evaluate": Command(
            lambda: (EvaluateArguments,), run_evaluate, "Score a prediction file: JSON report and PNG plot."
        ),
        "predict": Command(
            lambda: (DocumentReadingArguments, PredictArguments),
            run_predict,
            "Predict labels of documents (JSON lines).",
        ),
        "explain": Command(
            lambda: (DocumentReadingArguments, ExplainArguments),
            run_explain,
            "HTML pages of the words each label reads.",
        ),
        "card": Command(lambda: (CardArguments,), run_card, "Regenerate a model folder's model card."),
        "push": Command(
            lambda: (PushArguments,), run_push, "Upload a model (or adapter) folder to the Hub in one commit."
        ),
    }


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line, with the options of `command` (the others' subcommands are named, their options not read
    in)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="plant-hf",
        description="PLANT planted label-wise attention for extreme multi-label text classification.",
    )
    parser.add_argument("--version", action="version", version=f"plant-hf {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback, not only its message")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    for name, entry in _commands().items():
        arguments = entry.arguments() if name == command else ()
        commands.add_parser(
            name,
            dataclass_types=list(arguments),
            help=entry.help,
            description=entry.help if entry.recipe or not arguments else arguments[-1].__doc__,
        )
    return parser


def parse_command(argv: Sequence[str]) -> tuple[str, list[Any]]:
    """The subcommand and its argument dataclasses (for the recipe's commands: its options and Trainer's), from
    options or from one YAML/JSON file of them."""
    commands = _commands()
    if len(argv) == 2 and argv[0] in commands and argv[1].endswith((".yaml", ".yml", ".json")):
        name, parser = argv[0], HfArgumentParser(commands[argv[0]].arguments())
        read = parser.parse_json_file if argv[1].endswith(".json") else parser.parse_yaml_file
        parts = list(read(argv[1]))
    else:
        namespace = build_parser(argv[0] if argv and argv[0] in commands else None).parse_args(argv)
        name, parts = (
            namespace.command,
            [
                kind(**{item.name: getattr(namespace, item.name) for item in dataclasses.fields(kind) if item.init})
                for kind in commands[namespace.command].arguments()
            ],
        )
    if commands[name].recipe:
        from .recipe import PlantArguments

        parts = [PlantArguments.from_stages(*parts[:-1]), parts[-1]]
    return name, parts


def _log_to_stdout() -> None:
    """The library's progress messages (plant_hf's loggers, at INFO) on standard output, as the command's own."""
    import logging

    logger = logging.getLogger("plant_hf")
    if not any(getattr(handler, "plant_hf_cli", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.plant_hf_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _expected_failures() -> tuple[type[BaseException], ...]:
    """What a bad input, a missing file, a damaged checkpoint or an unreachable Hub raises: told in a line or two,
    not a traceback."""
    from safetensors import SafetensorError

    return ValueError, OSError, SafetensorError, ImportError


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; an expected failure ends it with its message and exit status 2 (`--debug`: the traceback)."""
    import logging

    # bitsandbytes (imported by transformers' Trainer wherever peft is installed) warns on every import that its
    # optional CPU kernels are not installed; nothing the user can act on in a command's output.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [argument for argument in argv if argument != "--debug"]
    name = argv[0] if argv and not argv[0].startswith("-") else "plant-hf"
    try:
        name, arguments = parse_command(argv)
        _log_to_stdout()
        _commands()[name].run(*arguments)
    except _expected_failures() as error:
        if debug:
            raise
        print(f"plant-hf {name}: error: {error}\n(--debug shows where it was raised)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
