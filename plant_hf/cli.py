"""The `plant-hf` command line: each subcommand is a dataclass of arguments and one function of the Python API."""

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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


def run_mig(args):
    from .training.pretrain import run_mig

    return run_mig(args)


def run_pretrain(args, training):
    from .training.pretrain import run_pretrain

    return run_pretrain(args, training)


def run_fit(args, training):
    from .training.recipe import fit

    return fit(args, training)


@dataclass
class Command:
    arguments: tuple[type, ...]
    run: Callable[..., Any]
    help: str


def _commands() -> dict[str, Command]:
    from .planting.pretraining import RankerTrainingArguments
    from .training.pretrain import MigArguments, PretrainArguments
    from .training.recipe import PlantArguments
    from .training.trainer import PlantTrainingArguments

    return {
        "fit": Command(
            (PlantArguments, PlantTrainingArguments),
            run_fit,
            "The whole recipe: MIG -> ranker -> plant -> fine-tune -> evaluate -> model card (no arguments: a demo "
            "on a built-in corpus with the offline MiniLM). Also takes a YAML/JSON file of the same options.",
        ),
        "mig": Command((MigArguments,), run_mig, "Build the MIG table of a training split (token-label evidence)."),
        "pretrain": Command(
            (PretrainArguments, RankerTrainingArguments),
            run_pretrain,
            "Pretrain the label attention as a ranker of tokens by MIG grade (planting, step 2).",
        ),
        "evaluate": Command((EvaluateArguments,), run_evaluate, "Score a prediction file: JSON report and PNG plot."),
    }


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="plant-hf",
        description="PLANT planted label-wise attention for extreme multi-label text classification.",
    )
    parser.add_argument("--version", action="version", version=f"plant-hf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    for name, command in _commands().items():
        commands.add_parser(
            name, dataclass_types=list(command.arguments), help=command.help, description=command.arguments[0].__doc__
        )
    return parser


def parse_command(argv: Sequence[str]) -> tuple[str, list[Any]]:
    """The subcommand and its argument dataclasses, from options or from one YAML/JSON file of them."""
    commands = _commands()
    if len(argv) == 2 and argv[0] in commands and argv[1].endswith((".yaml", ".yml", ".json")):
        parser = HfArgumentParser(commands[argv[0]].arguments)
        read = parser.parse_json_file if argv[1].endswith(".json") else parser.parse_yaml_file
        return argv[0], list(read(argv[1]))
    namespace = build_parser().parse_args(argv)
    return namespace.command, [
        kind(**{item.name: getattr(namespace, item.name) for item in dataclasses.fields(kind) if item.init})
        for kind in commands[namespace.command].arguments
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; errors about the input end it with their message and exit status 2."""
    name, arguments = parse_command(list(sys.argv[1:] if argv is None else argv))
    try:
        _commands()[name].run(*arguments)
    except (ValueError, FileNotFoundError) as error:
        print(f"plant-hf {name}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
