"""The label tree: balanced hierarchical k-means of the labels on their PIFA embeddings, as XR-Transformer builds it.

A label's PIFA embedding is the normalised sum of the features of its training documents; the features are the
documents' mean token states (the model's own, L2-normalised) beside their TF-IDF n-grams. napkinxc clusters the
labels (balanced k-means, `arity` clusters a node, until a cluster holds at most `leaf_size` labels); the tree goes
into the model's `PlantLabelMatcher` as two index tables.
"""

import tempfile
from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse
from transformers.utils import logging

from .modeling_plant import tree_parents

logger = logging.get_logger(__name__)

# napkinxc's tree format: (parent node, node, label), -1 for the root's parent and for nodes without a label.
TreeStructure = list[tuple[int, int, int]]


def document_features(embeddings: np.ndarray, tfidf: sparse.csr_matrix | None = None) -> sparse.csr_matrix:
    """Each document's features for the PIFA embeddings: its L2-normalised mean token state beside its L2-normalised
    TF-IDF row (where given), each part of unit length."""
    dense = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    parts = [sparse.csr_matrix(dense.astype(np.float32))]
    if tfidf is not None:
        norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1))).ravel()
        parts.append(sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ tfidf)
    return sparse.hstack(parts, format="csr", dtype=np.float32)


def build_label_tree(
    features: sparse.csr_matrix,
    label_ids: Sequence[Sequence[int]],
    num_labels: int,
    arity: int = 16,
    leaf_size: int = 100,
    seed: int = 0,
) -> TreeStructure:
    """Cluster `num_labels` labels by the PIFA embeddings of the training documents' `features` (their label ids in
    `label_ids`); the same inputs and seed give the same tree. Labels without a training document have no
    embedding: they are spread over the clusters as k-means places empty vectors."""
    from napkinxc.models import PLT

    if features.shape[0] != len(label_ids):
        raise ValueError(f"{features.shape[0]} feature rows for {len(label_ids)} documents.")
    rows = [[int(label) for label in labels] for labels in label_ids]
    documented = {label for labels in rows for label in labels}
    # One featureless document carries the labels no training document has, so that napkinxc knows every label;
    # an empty row adds nothing to any label's embedding.
    undocumented = [label for label in range(num_labels) if label not in documented]
    if undocumented:
        features = sparse.vstack([features, sparse.csr_matrix((1, features.shape[1]), dtype=np.float32)], "csr")
        rows.append(undocumented)
    with tempfile.TemporaryDirectory() as folder:
        clustering = PLT(folder, arity=arity, max_leaves=leaf_size, kmeans_balanced=True, seed=seed, threads=1)
        clustering.build_tree(features, rows)
        return [tuple(map(int, node)) for node in clustering.get_tree_structure()]


def tree_tables(structure: TreeStructure, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The matcher's tables of a tree: each cluster node's child clusters `(nodes, arity)` and each leaf cluster's
    labels `(nodes, leaf size)`, -1 padded, the root first and the nodes in breadth-first order."""
    children: dict[int, list[int]] = {}
    labels: dict[int, list[int]] = {}
    roots = []
    for parent, node, label in structure:
        if parent < 0:
            roots.append(node)
        elif label >= 0:
            labels.setdefault(parent, []).append(label)
        else:
            children.setdefault(parent, []).append(node)
    if len(roots) != 1:
        raise ValueError(f"A label tree has one root; this one has {len(roots)}.")
    order, position = [roots[0]], 0
    while position < len(order):
        node = order[position]
        if node in children and node in labels:
            raise ValueError(f"Node {node} of the label tree holds both clusters and labels.")
        order += children.get(node, [])
        position += 1
    placed = sorted(label for node in order for label in labels.get(node, []))
    if placed != list(range(num_labels)):
        raise ValueError(
            f"The label tree must hold each of the {num_labels} labels once; it holds {len(placed)} labels, "
            f"{len(set(placed))} of them distinct."
        )
    index = {node: rank for rank, node in enumerate(order)}
    arity = max((len(kids) for kids in children.values()), default=1)
    leaf_size = max(len(members) for members in labels.values())
    child_table = torch.full((len(order), arity), -1, dtype=torch.long)
    label_table = torch.full((len(order), leaf_size), -1, dtype=torch.long)
    for node, rank in index.items():
        kids = [index[kid] for kid in children.get(node, [])]
        child_table[rank, : len(kids)] = torch.tensor(kids, dtype=torch.long)
        members = sorted(labels.get(node, []))
        label_table[rank, : len(members)] = torch.tensor(members, dtype=torch.long)
    return child_table, label_table


def pifa_node_weights(
    embeddings: torch.Tensor, label_ids: Sequence[Sequence[int]], children: torch.Tensor, leaf_labels: torch.Tensor
) -> torch.Tensor:
    """Each node's PIFA centroid on the documents' embeddings `(documents, hidden)`: the normalised sum of the
    embeddings of the documents that carry a label below it, each document once (zeros where none does)."""
    num_nodes = children.shape[0]
    parent = tree_parents(children)
    leaf_of = torch.full((int(leaf_labels.max()) + 1,), -1, dtype=torch.long)
    placed = leaf_labels >= 0
    leaf_of[leaf_labels[placed]] = torch.arange(num_nodes).unsqueeze(1).expand_as(leaf_labels)[placed]
    documents = torch.tensor([row for row, labels in enumerate(label_ids) for _ in labels], dtype=torch.long)
    nodes = leaf_of[torch.tensor([label for labels in label_ids for label in labels], dtype=torch.long)]
    pairs = []
    while nodes.numel():  # each (document, node) pair from the label's leaf up to the root's children
        kept = nodes > 0
        documents, nodes = documents[kept], nodes[kept]
        pairs.append(documents * num_nodes + nodes)
        nodes = parent[nodes]
    pairs = torch.cat(pairs).unique()
    sums = torch.zeros(num_nodes, embeddings.shape[1]).index_add_(
        0, pairs % num_nodes, embeddings.float()[pairs // num_nodes]
    )
    return torch.nn.functional.normalize(sums, dim=-1)


__all__ = ["build_label_tree", "document_features", "pifa_node_weights", "tree_tables"]
