"""Stage 2 of the recipe: the MIG table, which tokens are evidence for which label, from the training split only."""

from dataclasses import field

import numpy as np
from transformers.utils import logging

from ..planting import MIGTable, build_mig_table
from .data import RunContext
from .options import stage_options

logger = logging.get_logger(__name__)


@stage_options("mig", "MIG table", at_least={"mig_top_k": 1, "mig_grades": 1})
class MigArguments:
    """The token-label mutual information table that the ranker learns to rank by."""

    mig_top_k: int = field(default=256, metadata={"help": "Tokens kept per label."})
    mig_grades: int = field(default=8, metadata={"help": "Relevance grades of the kept tokens (1..G)."})


def mig_stage(context: RunContext) -> MIGTable | None:
    """The run's MIG table (`<output_dir>/mig`), built by the main process unless it is there; none without planting.
    A table of another tokenizer or label set is refused."""
    if context.args.planting == "none":
        return None
    folder = context.folder / "mig"
    context.begin_stage("MIG table", folder / "mig_config.json")
    with context.training.main_process_first(desc="MIG table"):
        if context.is_main and not (folder / "mig_config.json").exists():
            train = context.splits["train"]
            table = build_mig_table(
                train["text"],
                train["labels"],
                context.tokenizer,
                top_k=context.args.mig_top_k,
                num_grades=context.args.mig_grades,
                catalogue=context.vocabulary.labels,
            )
            table.save(folder)
            logger.info(
                f"MIG table of {table.num_labels} labels x {table.config.stats['distinct_tokens']} tokens "
                f"({table.token_ids.size} kept pairs) from {table.config.num_documents} training documents in "
                f"{table.config.stats['seconds']} s -> {folder}"
            )
            _report_labels_without_evidence(table, set(np.flatnonzero(context.vocabulary.counts == 0).tolist()))
    table = MIGTable.load(folder)
    table.check_compatible(context.tokenizer, context.vocabulary.labels, name=str(folder))
    return table


def _report_labels_without_evidence(table: MIGTable, undocumented: set[int]) -> None:
    """Name the labels of training documents that no token is evidence for (e.g. one in every training document:
    knowing a token tells nothing about it); the ranker has nothing to rank for them, so their attention is planted
    untrained. Labels of the catalogue without training documents have no evidence by construction."""
    empty = [
        table.config.labels[label]
        for label in np.flatnonzero(np.diff(table.label_indptr) == 0)
        if label not in undocumented
    ]
    if empty:
        logger.warning(
            f"{len(empty)} of {table.num_labels} labels have no evidence token in the MIG table (e.g. "
            f"{', '.join(map(repr, empty[:5]))}): their attention is not planted from data; their label weights "
            "still start from their documents."
        )


__all__ = ["MigArguments", "mig_stage"]
