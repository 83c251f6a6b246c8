"""The label tree stage: the labels clustered on their training documents, and the matcher that shortlists them.

Built before fine-tuning, on the fresh classifier's own document vectors, so that the matcher trains with the head
and, from `shortlist_min_labels` labels on, the head trains on each document's shortlist instead of every label.
"""

from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from accelerate import PartialState
from safetensors.torch import load_file, save_file
from transformers.utils import logging

from ..files import atomic_path
from ..label_tree import build_label_tree, document_features, pifa_node_weights, tree_tables
from ..lexical import tfidf_vectorizer
from ..modeling_plant import PlantForMultiLabelClassification
from .data import RunContext, inference_inputs
from .memory import document_embeddings
from .options import stage_options

logger = logging.get_logger(__name__)

LABEL_TREE_FILE = "label_tree.safetensors"
# A node classifier starts as the cosine of the document with the node's PIFA centroid, scaled to logits of a
# useful range: sigmoid(10 cos - 5) is one half at a cosine of 0.5.
_CENTROID_SCALE, _CENTROID_BIAS = 10.0, -5.0


@stage_options(
    "label tree", "Label tree and shortlist", at_least={"label_tree_arity": 2, "label_tree_leaf_size": 1,
                                                        "shortlist_beam": 1, "shortlist_negatives": 0}
)  # fmt: skip
class LabelTreeArguments:
    """The label tree whose matcher shortlists the labels the head scores, as XR-Transformer's does."""

    # The options that are PlantConfig fields of the same name, handed to the classifier's config as they are.
    head_options: ClassVar[tuple[str, ...]] = ("shortlist_beam", "shortlist_min_labels", "shortlist_negatives")

    label_tree: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={
            "help": "Cluster the labels into a tree (balanced k-means on their training documents' mean states and "
            "TF-IDF n-grams) whose matcher, a classifier per node trained with the head, shortlists each "
            "document's labels; from shortlist_min_labels labels on the head scores only the shortlist, in training "
            "and inference. auto: a tree where the labels reach shortlist_min_labels; on: always (the shortlist "
            "still starts at shortlist_min_labels); off: never."
        },
    )
    label_tree_arity: int = field(default=16, metadata={"help": "Clusters each node of the tree splits into."})
    label_tree_leaf_size: int = field(default=100, metadata={"help": "Labels of a leaf cluster at the most."})
    shortlist_beam: int = field(
        default=10, metadata={"help": "Leaf clusters kept per document by the matcher's beam search."}
    )
    shortlist_min_labels: int | None = field(
        default=32768,
        metadata={
            "help": "The label count from which the head scores only the shortlist (below it, every label: "
            "cheaper there than the matcher is worth). None: always every label."
        },
    )
    shortlist_negatives: int = field(
        default=32, metadata={"help": "Random labels added to each training document's shortlist."}
    )


def many_labels(args: Any, num_labels: int) -> bool:
    """Whether `num_labels` reach `--shortlist_min_labels`: where the head scores shortlists, and by default a label
    tree is built, the ranker's label tables take sparse gradients and the lexical channel is a label tree too."""
    return args.shortlist_min_labels is not None and num_labels >= args.shortlist_min_labels


def wants_label_tree(context: RunContext) -> bool:
    """Whether the run builds a label tree (`--label_tree`, auto: from `--shortlist_min_labels` labels on)."""
    args = context.args
    if args.label_tree == "auto":
        return many_labels(args, len(context.vocabulary))
    return args.label_tree == "on"


def label_tree_stage(context: RunContext, model: PlantForMultiLabelClassification) -> None:
    """Give the fresh classifier the run's label tree (`<output_dir>/label_tree`, built unless it is there), its
    matcher started at the nodes' PIFA centroids."""
    if not wants_label_tree(context):
        return
    path = context.folder / "label_tree" / LABEL_TREE_FILE
    context.begin_stage("label tree", path)
    if not path.exists():
        # Every process takes part in the prediction loop (it is collective); the main one clusters and saves.
        embeddings = document_embeddings(context, model, *inference_inputs(context, model, "train"), "label tree")
        if context.is_main:
            _build(context, embeddings, path)
        PartialState().wait_for_everyone()
    tree = load_file(str(path))
    model.set_label_tree(tree["children"], tree["leaf_labels"], tree["node_weights"], tree["node_bias"])


def _build(context: RunContext, embeddings: torch.Tensor, path: Path) -> None:
    """Cluster the labels on the training split (its documents' `embeddings` and TF-IDF) and save the tree with its
    nodes' starting classifiers."""
    args, train = context.args, context.splits["train"]
    tfidf = tfidf_vectorizer(args.lexical_ngrams, args.lexical_min_df).fit_transform(train["text"]).tocsr()
    label_ids = context.tokenized("train")["label_ids"]
    structure = build_label_tree(
        document_features(embeddings.numpy(), tfidf),
        label_ids,
        len(context.vocabulary),
        arity=args.label_tree_arity,
        leaf_size=args.label_tree_leaf_size,
        seed=context.training.seed,
    )
    children, leaf_labels = tree_tables(structure, len(context.vocabulary))
    weights = _CENTROID_SCALE * pifa_node_weights(embeddings, label_ids, children, leaf_labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        bias = torch.full((children.shape[0],), _CENTROID_BIAS)
        save_file(
            {"children": children, "leaf_labels": leaf_labels, "node_weights": weights, "node_bias": bias}, str(partial)
        )
    leaves = int((leaf_labels >= 0).any(1).sum())
    sizes = (leaf_labels >= 0).sum(1).numpy()
    logger.info(
        f"label tree: {len(context.vocabulary)} labels in {leaves} leaf clusters of {int(np.min(sizes[sizes > 0]))}"
        f"-{int(sizes.max())} labels, {children.shape[0]} nodes -> {path}"
    )


__all__ = ["LABEL_TREE_FILE", "LabelTreeArguments", "label_tree_stage", "many_labels", "wants_label_tree"]
