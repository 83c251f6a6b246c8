"""The PLANT recipe, one module per stage: data -> MIG table -> ranker -> planting, label tree and fine-tuning ->
retrieval memory -> lexical channel -> evaluation -> model card.

Each stage owns its options (one dataclass, one group of `plant-hf fit --help`) and a runner that writes into the run
folder (`output_dir`) and skips its work when its output is already there: running the same command again continues
where a run stopped, `resume=True` also continues an interrupted ranker or fine-tuning from its last checkpoint, and
`plant-hf mig` / `plant-hf pretrain` run the first stages of the same recipe, with the same options, into the same
folder, so that `plant-hf fit` on it skips them. The command line, `training_scripts/train_plant.py` (also under
`accelerate launch` or `torchrun`) and Python all call these functions.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..planting import MIGTable
from ..training.evaluation import format_metrics_table
from ..training.trainer import PlantTrainingArguments
from .card import card_stage, stage_lengths
from .data import DataArguments, RunContext, prepare_run
from .evaluation import EvaluationArguments, evaluate_stage, predict_top_k, split_predictions
from .finetuning import FinetuningArguments, classifier, finetune_stage
from .label_tree import LabelTreeArguments
from .lexical import LexicalArguments, lexical_stage
from .memory import MemoryArguments, memory_stage
from .mig import MigArguments, mig_stage
from .ranker import RankerArguments, ranker_stage

logger = logging.get_logger(__name__)

# The recipe's option groups in the order of its stages (Trainer's options follow them).
STAGE_ARGUMENTS = (
    DataArguments,
    MigArguments,
    RankerArguments,
    LabelTreeArguments,
    FinetuningArguments,
    MemoryArguments,
    LexicalArguments,
    EvaluationArguments,
)


@dataclass
class PlantArguments(
    EvaluationArguments,
    LexicalArguments,
    MemoryArguments,
    FinetuningArguments,
    LabelTreeArguments,
    RankerArguments,
    MigArguments,
    DataArguments,
):
    """The options of every stage of the PLANT recipe (Trainer's options come alongside)."""

    @classmethod
    def from_stages(cls, *parts: Any) -> "PlantArguments":
        """One set of options from the stages' dataclasses, as the command line parses them."""
        return cls(**{key: value for part in parts for key, value in vars(part).items()})


def build_mig(args: PlantArguments, training: PlantTrainingArguments) -> MIGTable:
    """The recipe's first two stages: the run folder's MIG table (`<output_dir>/mig`)."""
    table = mig_stage(prepare_run(args, training))
    if table is None:
        raise ValueError("--planting none builds no MIG table: choose contextual, static or both.")
    return table


def pretrain(args: PlantArguments, training: PlantTrainingArguments) -> Path:
    """The recipe up to the ranker: the run folder's MIG table and pretrained ranker (`<output_dir>/ranker`)."""
    context = prepare_run(args, training)
    folder = ranker_stage(context, mig_stage(context))
    if folder is None:
        raise ValueError("--planting none trains no ranker: choose contextual, static or both.")
    return folder


def fit(args: PlantArguments, training: PlantTrainingArguments) -> dict[str, Any]:
    """Run the whole recipe into `training.output_dir`; returns the test report."""
    context = prepare_run(args, training)
    ranker = ranker_stage(context, mig_stage(context))
    model_folder = finetune_stage(context, ranker)
    memory = memory_stage(context, model_folder)
    report = evaluate_stage(context, model_folder, lexical_stage(context), memory)
    card_stage(context, model_folder, report)
    if context.is_main:
        logger.info(format_metrics_table(report))
        for stage, length in stage_lengths(context).items():
            logger.info(
                f"{stage}: {length['epochs']:g} epochs (best: epoch {length['best_epoch']}); {length['stopped']}"
            )
        evaluation = context.folder / "eval"
        logger.info(
            f"model -> {model_folder} (its card: README.md)\n"
            f"test report, plot and predictions -> {evaluation}\n"
            "next:\n"
            f"  plant-hf predict --model {model_folder} --input docs.jsonl --output predictions.jsonl\n"
            f"  plant-hf explain --model {model_folder} --input docs.jsonl --output_dir pages\n"
            f"  plant-hf push --folder {model_folder} --repo_id <user>/<name>"
        )
    return report


__all__ = [
    "STAGE_ARGUMENTS",
    "PlantArguments",
    "RunContext",
    "build_mig",
    "classifier",
    "fit",
    "predict_top_k",
    "prepare_run",
    "pretrain",
    "split_predictions",
]
