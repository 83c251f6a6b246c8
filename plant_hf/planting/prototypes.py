"""Label weights initialised from the planted attention: a prototype per label.

Planting says where each label's evidence lies in a document; what the label's weights still need is the direction
that tells the contexts its attention reads in its own documents from those it reads elsewhere. From the training
split: `m_l`, the mean context of label `l` over its own documents (its prototype); `r_l`, the mean over a random
sample of documents (the reference, nearly all negatives); `s_l`, the variance per dimension of the sample's contexts
around `r_l`. The weights point from the reference to the prototype,

    w_l = (m_l - r_l) / max(s_l, |m_l - r_l|^2 / margin),    c_l = -w_l . (m_l + r_l) / 2 + log(p_l / (1 - p_l)),

so that a label's logit is its prior log-odds (`p_l`: its share of the training documents) half way between the two.
From the reference to the prototype it rises by `|m_l - r_l|^2 / s_l`, the class-mean classifier's own margin, but by
`margin` at the most: uncapped, the well separated labels would get weights so large that fine-tuning can no longer
move them, and the others keep weights in proportion to how far their prototype stands from the reference. A label
seen once starts as a nearest-prototype classifier of its one document, not from random weights that fine-tuning
must first turn towards its few examples (BENCHMARKS.md, what each rare-label mechanism does).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..modeling_plant import PlantForMultiLabelClassification, PlantLabelAttention

# Bound on (reference documents x labels): the reference costs as much as that many single-label contexts.
_REFERENCE_BUDGET = 2**22
# Labels whose weights are computed at once from their prototypes.
_INIT_BLOCK = 2**16
# The most a label's logit rises from its reference context to its prototype: uncapped, well separated labels got
# weights fine-tuning could not move, and tiny backbones diverged.
PROTOTYPE_MARGIN = 8.0
# Training documents below which a label's context gate starts above one half, towards the mean state.
CONTEXT_GATE_SHRINKAGE = 5.0
# The least share of the mean state a label's context starts with. PLANT sums a learned attention, which starts near
# uniform (the mean state), and the planted one (V = A'H + P'H): every label starts at least half on the mean state.
CONTEXT_GATE_FLOOR = 0.5
# Keeps gates learnable: a sigmoid saturated at a label with no training documents would pass no gradient.
_GATE_LOGIT_BOUND = 8.0


@dataclass
class LabelPrototypes:
    """Per-label context statistics of a training split under the planted attention."""

    positive_mean: torch.Tensor  # (labels, value size): mean context of each label over its own documents
    positive_count: torch.Tensor  # (labels,): documents that went into it
    reference_mean: torch.Tensor  # (labels, value size): mean context over the reference sample
    reference_variance: torch.Tensor  # (labels,): variance per dimension of the sample's contexts around that mean
    reference_documents: int


def _states(model: PlantForMultiLabelClassification, batch: dict[str, torch.Tensor]):
    """Token states, mask and ids of a batch: cached states as they are, token ids through the backbone."""
    if "token_states" in batch:
        return batch["token_states"], batch["attention_mask"].bool(), batch.get("input_ids")
    encoded = model.encode(batch["input_ids"], batch["attention_mask"])
    return encoded.hidden_states, encoded.attention_mask, encoded.input_ids


def _padded_labels(label_lists: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(1, max(len(labels) for labels in label_lists))
    padded = torch.full((len(label_lists), width), -1, dtype=torch.long)
    for row, labels in enumerate(label_lists):
        padded[row, : len(labels)] = torch.as_tensor(list(labels), dtype=torch.long)
    return padded


@torch.no_grad()
def label_prototypes(
    model: PlantForMultiLabelClassification,
    documents: torch.utils.data.Dataset,
    collator,
    batch_size: int = 16,
    reference_documents: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> LabelPrototypes:
    """The context statistics of `documents` (items with `label_ids`, and `token_states` or `input_ids` chunks that
    `collator` pads, without targets) under `model`'s label attention.

    The reference sample holds at most `reference_documents` documents, fewer when there are so many labels that
    their contexts on the sample would cost more than a few million single-label contexts.
    """
    attention: PlantLabelAttention = model.score
    device = attention.label_queries.device
    num_labels, width = attention.label_weights.shape
    totals = torch.zeros(num_labels, width, dtype=torch.float64, device=device)
    counts = torch.zeros(num_labels, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for begin in tqdm(range(0, len(documents), batch_size), desc="Prototypes", unit="batch", disable=not progress):
        items = [documents[index] for index in range(begin, min(begin + batch_size, len(documents)))]
        states, mask, ids = _states(model, _to(collator([_without_labels(item) for item in items]), device))
        label_ids = _padded_labels([item["label_ids"] for item in items]).to(device)
        contexts = attention.label_contexts(states, mask, label_ids, ids)
        real = label_ids >= 0
        totals.index_add_(0, label_ids[real], contexts[real].double())
        counts.index_add_(0, label_ids[real], torch.ones(int(real.sum()), dtype=torch.float64, device=device))
    # In place and one table at a time: at a million labels each (labels x width) table in fp64 takes gigabytes.
    positive_mean = totals.div_(counts.clamp(min=1).unsqueeze(1)).float()
    del totals
    sample_size = max(1, min(reference_documents, len(documents), _REFERENCE_BUDGET // num_labels))
    sample = np.random.default_rng(seed).choice(len(documents), size=sample_size, replace=False)
    reference, square = _reference_sums(model, documents, collator, sorted(sample.tolist()), device)
    model.train(was_training)
    reference.div_(sample_size)
    # The variance per dimension, averaged over the dimensions: E|x|^2 - |E x|^2, over the width.
    variance = (square / sample_size - torch.linalg.vector_norm(reference, dim=-1).square()).clamp(min=0) / width
    return LabelPrototypes(
        positive_mean=positive_mean,
        positive_count=counts.float(),
        reference_mean=reference.float(),
        reference_variance=variance.float(),
        reference_documents=sample_size,
    )


def _reference_sums(model, documents, collator, sample: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of the contexts of every label over the sample documents `(labels, width)` and of their squared norms
    `(labels,)`, one document at a time and in blocks of labels (peak memory: one block of labels x one document's
    tokens)."""
    attention: PlantLabelAttention = model.score
    num_labels, width = attention.label_weights.shape
    total = torch.zeros(num_labels, width, dtype=torch.float64, device=device)
    square = torch.zeros(num_labels, dtype=torch.float64, device=device)
    for index in sample:
        states, mask, ids = _states(model, _to(collator([_without_labels(documents[index])]), device))
        block = max(1, 2**24 // max(1, states.shape[1]))
        for start in range(0, num_labels, block):
            labels = torch.arange(start, min(start + block, num_labels), device=device).unsqueeze(0)
            contexts = attention.label_contexts(states, mask, labels, ids)[0].double()
            total[start : start + labels.shape[1]] += contexts
            square[start : start + labels.shape[1]] += contexts.square().sum(-1)
    return total, square


def _without_labels(item: dict) -> dict:
    return {name: value for name, value in item.items() if name != "label_ids"}


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {name: value.to(device) for name, value in batch.items()}


def prior_log_odds(label_counts: Sequence[int], num_documents: int) -> torch.Tensor:
    """`log(p_l / (1 - p_l))` of each label's share `p_l` of the training documents; a label in none or in all of
    them counts half a document less or more, so that its odds stay finite."""
    counts = np.clip(np.asarray(label_counts, dtype=np.float64), 0.5, num_documents - 0.5)
    return torch.as_tensor(np.log(counts / (num_documents - counts)), dtype=torch.float32)


@torch.no_grad()
def initialize_label_bias(attention: PlantLabelAttention, label_counts: Sequence[int], num_documents: int) -> None:
    """Start each label's bias at its prior log-odds, so that fine-tuning does not spend its first epochs pushing
    every logit down (through the label weights too, turning them away from the labels' evidence)."""
    attention.label_bias.copy_(prior_log_odds(label_counts, num_documents).to(attention.label_bias))


@torch.no_grad()
def initialize_context_gates(
    attention: PlantLabelAttention,
    label_counts: Sequence[int],
    shrinkage: float = CONTEXT_GATE_SHRINKAGE,
    floor: float = CONTEXT_GATE_FLOOR,
) -> None:
    """Start each label's context gate at `g_l = max(floor, k / (k + n_l))` (`k`: `shrinkage`, `n_l`: the label's
    training documents): the share of the mean state in its context falls as its examples grow, from `k / (k + 1)`
    for a label seen once down to `floor` for frequent ones (fine-tuning takes it on from there)."""
    counts = torch.as_tensor(np.asarray(label_counts, dtype=np.float64), dtype=torch.float32)
    logits = (math.log(shrinkage) - torch.log(counts.clamp(min=1e-3))).clamp(min=math.log(floor / (1 - floor)))
    logits = logits.clamp(-_GATE_LOGIT_BOUND, _GATE_LOGIT_BOUND)
    attention.label_context_gate.copy_(logits.to(attention.label_context_gate))


@torch.no_grad()
def initialize_label_weights(
    attention: PlantLabelAttention,
    prototypes: LabelPrototypes,
    label_counts: Sequence[int],
    num_documents: int,
    margin: float = PROTOTYPE_MARGIN,
) -> None:
    """Set the label weights and biases to the prototype classifier of the module docstring (in blocks of labels,
    so that the temporaries stay small at a million labels)."""
    prior = prior_log_odds(label_counts, num_documents).to(attention.label_bias.device)
    for start in range(0, attention.label_weights.shape[0], _INIT_BLOCK):
        rows = slice(start, start + _INIT_BLOCK)
        positive, reference = prototypes.positive_mean[rows], prototypes.reference_mean[rows]
        difference = positive - reference
        scale = torch.maximum(prototypes.reference_variance[rows], difference.square().sum(-1) / margin)
        weights = difference / scale.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)
        bias = -(weights * (positive + reference) / 2).sum(-1) + prior[rows]
        attention.label_weights[rows] = weights.to(attention.label_weights.dtype)
        attention.label_bias[rows] = bias.to(attention.label_bias.dtype)


__all__ = [
    "CONTEXT_GATE_FLOOR",
    "CONTEXT_GATE_SHRINKAGE",
    "PROTOTYPE_MARGIN",
    "LabelPrototypes",
    "initialize_context_gates",
    "initialize_label_bias",
    "initialize_label_weights",
    "label_prototypes",
    "prior_log_odds",
]
