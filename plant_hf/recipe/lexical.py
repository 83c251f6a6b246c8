"""Stage 7 of the recipe: the lexical channel, TF-IDF linear classifiers on the whole text of the training documents,
trained beside the neural model (its weight in the fused probabilities is tuned on dev by the evaluation stage)."""

from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from ..lexical import LEXICAL_FOLDER, SETTINGS_FILE, LexicalRanker
from .data import RunContext
from .label_tree import many_labels
from .options import stage_options


@stage_options("lexical", "Lexical channel", at_least={"lexical_ngrams": 1, "lexical_min_df": 1})
class LexicalArguments:
    """The lexical channel: what it reads and how its classifiers learn."""

    lexical: bool = field(
        default=True,
        metadata={
            "help": "Train a linear classifier per label on TF-IDF word n-grams of each whole document (napkinxc, "
            "squared hinge) and fuse its probabilities with the model's, (1 - w) model + w lexical, w tuned on dev "
            "(0 where it does not help); saved in the model folder's lexical/ and used by the xmc-classification "
            "pipeline, predict and explain. --lexical false: the model alone."
        },
    )
    lexical_model: Literal["auto", "br", "plt"] = field(
        default="auto",
        metadata={
            "help": "br: a classifier per label over every training document (best on rare labels; its training "
            "grows with labels x documents); plt: a probabilistic label tree, 16 children a node, whose classifiers "
            "see only their node's documents (a few times faster at thousands of labels, logarithmic in the labels "
            "at millions; weaker on labels seen a handful of times). auto: br below shortlist_min_labels labels, "
            "plt from there, where a classifier per label over every document would take days."
        },
    )
    lexical_ngrams: int = field(default=2, metadata={"help": "Longest word n-gram of the lexical features."})
    lexical_min_df: int = field(
        default=2, metadata={"help": "Least number of training documents a lexical feature must occur in."}
    )
    lexical_c: float = field(
        default=10.0, metadata={"help": "Cost of the lexical classifiers' errors (liblinear's C; higher fits closer)."}
    )


def lexical_stage(context: RunContext) -> LexicalRanker | None:
    """Train the lexical channel on the training split into `<output_dir>/lexical` (kept when already there)."""
    if not context.args.lexical:
        return None
    folder = context.folder / LEXICAL_FOLDER
    context.begin_stage("lexical channel", folder / SETTINGS_FILE)
    return train_channel(context, ("train",), folder)


def dev_held_out(context: RunContext) -> bool:
    """Whether the dev split was carved from the training split (test is its own) of a run that trains on all of
    it: what the lexical channel and the memory may take back once their weights are chosen."""
    held_out = "dev" in context.notes and "test" not in context.notes
    return held_out and context.args.train_fraction == 1.0


def train_channel(context: RunContext, splits: tuple[str, ...], folder: Path, again: bool = False) -> LexicalRanker:
    """The channel trained on the documents of `splits` (the model's labels only) into `folder` by the main process,
    unless it is already there (`again`: in its place), then loaded by every process."""
    args, vocabulary = context.args, context.vocabulary
    if context.is_main and (again or not folder.exists()):
        texts = [text for split in splits for text in context.splits[split]["text"]]
        label_ids = [row for split in splits for row in vocabulary.encode(context.splits[split]["labels"])]
        LexicalRanker.fit(
            texts,
            label_ids,
            vocabulary.labels,
            folder,
            ngrams=args.lexical_ngrams,
            min_df=args.lexical_min_df,
            c=args.lexical_c,
            model=lexical_classifiers(args, len(vocabulary)),
        )
    from accelerate import PartialState

    PartialState().wait_for_everyone()
    return LexicalRanker.load(folder, vocabulary.labels)


def lexical_classifiers(args: Any, num_labels: int) -> str:
    """The channel's classifiers for `num_labels` labels: `lexical_model`, its `auto` resolved by the label count at
    which the head shortlists (`shortlist_min_labels`)."""
    if args.lexical_model != "auto":
        return args.lexical_model
    return "plt" if many_labels(args, num_labels) else "br"


__all__ = ["LexicalArguments", "dev_held_out", "lexical_classifiers", "lexical_stage", "train_channel"]
