"""Learning to rank a document's tokens by their MIG grade for each of its labels.

Two losses, both ordinary ones (autograd, mixed precision, LoRA, gradient accumulation and Trainer work unchanged,
where LambdaRank injects hand-made gradients with a custom backward pass):
- the listwise loss (ListNet's top-one form, Cao et al., 2007), the contextual ranker's default: the softmax over a
  document's tokens is matched to their grades. What is planted is used as an attention, and this loss trains
  exactly that attention, at bounded scores;
- ApproxNDCG (Qin, Liu and Li, 2010): each token's rank is approximated by `1 + sum_j sigmoid((s_j - s_i) /
  temperature)`, which makes NDCG itself differentiable; its cost is kept linear in the document length by
  approximating ranks only for the relevant tokens (NDCG sums over them alone). It rewards the order alone, so
  its scores drift apart without bound: planted as an attention they are a near argmax.

Two rankers train the scoring part of a [`PlantLabelAttention`], so that what they learn is planted verbatim:
- [`DocumentRanker`]: backbone token states (cached from a frozen backbone, or from a LoRA-adapted one) through
  the key projection and the token salience, against the label queries;
- [`StaticRanker`]: token factors, token biases and label factors fitted to the MIG grades alone, no backbone;
  planted as an additive prior on the attention scores.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ..cache import CachedDocumentCollator
from ..data import PlantDataCollator
from ..modeling_plant import PlantForMultiLabelClassification, PlantLabelAttention
from .mig import MIGTable


def _gains(grades: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    return (torch.pow(2.0, grades.float()) - 1.0) * token_mask.unsqueeze(1)


def approx_ndcg_loss(
    scores: torch.Tensor,
    grades: torch.Tensor,
    token_mask: torch.Tensor,
    temperature: float = 1.0,
    max_relevant: int = 64,
) -> torch.Tensor:
    """Mean `1 - ApproxNDCG` over the ranked lists that have a relevant token.

    Args:
        scores: `(batch, lists, tokens)`; may be `-inf` at padding.
        grades: `(batch, lists, tokens)` integer relevance (gain `2^grade - 1`).
        token_mask: `(batch, tokens)`, True at real tokens.
        max_relevant: approximate the ranks of at most this many best-graded tokens per list (and compare with
            the ideal DCG of the same tokens), bounding memory at `batch x lists x max_relevant x tokens`.
    """
    token_mask = token_mask.bool()
    gains = _gains(grades, token_mask)
    relevant = int((gains > 0).sum(-1).max()) if gains.numel() else 0
    if relevant == 0:
        return scores.sum() * 0.0
    finite = torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores)).float()
    top_gains, index = gains.topk(min(relevant, max_relevant), dim=-1)
    own = finite.gather(-1, index)
    pairwise = torch.sigmoid((finite.unsqueeze(-2) - own.unsqueeze(-1)) / temperature)
    ranks = 0.5 + (pairwise * token_mask[:, None, None, :]).sum(-1)
    dcg = (top_gains / torch.log2(1.0 + ranks)).sum(-1)
    positions = torch.arange(top_gains.shape[-1], device=scores.device)
    ideal = (top_gains / torch.log2(positions + 2.0)).sum(-1)
    has_relevant = ideal > 0
    return (1.0 - dcg[has_relevant] / ideal[has_relevant]).mean()


def listwise_loss(
    scores: torch.Tensor, grades: torch.Tensor, token_mask: torch.Tensor, smoothing: float = 0.1
) -> torch.Tensor:
    """Mean cross-entropy between each list's softmax over its tokens and a target proportional to the tokens'
    grades, mixed with `smoothing` of the uniform distribution (ListNet, Cao et al., 2007, top-one form).

    Its optimum is an attention that spreads over the graded tokens as their grades say, at bounded scores: a
    planted attention that the classifier can still reshape, where ApproxNDCG's optimum is an ordering at any
    scale, which as a softmax is a near argmax.
    """
    token_mask = token_mask.bool().unsqueeze(1).expand_as(grades)
    weights = grades.float() * token_mask
    mass = weights.sum(-1, keepdim=True)
    has_relevant = mass.squeeze(-1) > 0
    if not has_relevant.any():
        return scores.sum() * 0.0
    uniform = token_mask.float() / token_mask.sum(-1, keepdim=True).clamp(min=1)
    target = (1 - smoothing) * weights / mass.clamp(min=1e-12) + smoothing * uniform
    masked = scores.float().masked_fill(~token_mask, float("-inf"))
    # Lists without a relevant token (padding labels score -inf everywhere) are left out, and must stay finite.
    masked = masked.masked_fill(~has_relevant.unsqueeze(-1), 0.0)
    log_p = torch.log_softmax(masked, dim=-1).masked_fill(~token_mask, 0.0)
    return -(target * log_p).sum(-1)[has_relevant].mean()


def ndcg_at_k(scores: torch.Tensor, grades: torch.Tensor, token_mask: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Exact nDCG@k of each list's token ranking, `(batch, lists)`; NaN for lists without a relevant token."""
    token_mask = token_mask.bool()
    gains = _gains(grades, token_mask)
    ranked = torch.where(token_mask.unsqueeze(1), scores.float(), torch.full_like(scores.float(), float("-inf")))
    k = min(k, scores.shape[-1])
    order = ranked.argsort(dim=-1, descending=True, stable=True)[..., :k]
    discounts = 1.0 / torch.log2(torch.arange(k, device=scores.device) + 2.0)
    dcg = (gains.gather(-1, order) * discounts).sum(-1)
    ideal = (gains.sort(dim=-1, descending=True).values[..., :k] * discounts).sum(-1)
    return torch.where(ideal > 0, dcg / ideal.clamp(min=1e-12), torch.full_like(dcg, float("nan")))


@dataclass
class RankerOutput(ModelOutput):
    """
    Args:
        loss: `1 - ApproxNDCG`, averaged over the batch's lists with a relevant token.
        ndcg: `(batch, 2)`: per document, the sum of its lists' exact nDCG@k and the number of lists counted.
    """

    loss: torch.FloatTensor | None = None
    ndcg: torch.FloatTensor | None = None


def _per_document_ndcg(ndcg: torch.Tensor) -> torch.Tensor:
    counted = ~torch.isnan(ndcg)
    return torch.stack([torch.where(counted, ndcg, 0.0).sum(-1), counted.sum(-1).float()], dim=-1)


class DocumentRanker(nn.Module):
    """Ranks each document's tokens for each of its labels with a label attention's scores.

    Batches carry either `token_states` (cached, from a frozen backbone) or `input_ids` (encoded here by
    `encoder`, whose backbone may carry LoRA adapters), plus `attention_mask`, the `token_ids` at the states'
    positions, the documents' `label_ids` (padded with -1) and the MIG `grades` `(batch, labels, tokens)`.
    With `contextual=False` only the attention's static prior scores the tokens (no states are read).
    `sparse_label_tables`: a step reads only its documents' labels' rows, so `PlantTrainer` may give the label
    tables sparse gradients (worth it at many labels).
    """

    accepts_loss_kwargs = False

    def __init__(
        self,
        attention: PlantLabelAttention,
        encoder: PlantForMultiLabelClassification | None = None,
        contextual: bool = True,
        temperature: float = 1.0,
        max_relevant: int = 64,
        ndcg_k: int = 10,
        loss: str = "listwise",
        sparse_label_tables: bool = False,
    ):
        super().__init__()
        if loss not in ("listwise", "approx_ndcg"):
            raise ValueError(f"Unknown ranker loss {loss!r}: listwise or approx_ndcg.")
        if encoder is not None and encoder.score is not attention:
            raise ValueError("With an encoder, the ranked attention must be the encoder's own head (its `score`).")
        # Registered once (through the encoder when there is one), so that checkpoints hold each weight once.
        self.encoder = encoder
        self.score = attention if encoder is None else None
        self.contextual = contextual
        self.temperature = temperature
        self.max_relevant = max_relevant
        self.ndcg_k = ndcg_k
        self.loss = loss
        self.sparse_label_tables = sparse_label_tables

    @property
    def attention(self) -> PlantLabelAttention:
        return self.encoder.score if self.encoder is not None else self.score

    def forward(
        self,
        label_ids: torch.Tensor,
        grades: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        token_states: torch.Tensor | None = None,
    ) -> RankerOutput:
        """`input_ids`: the ids of the tokens whose `token_states` are given, or, without states, the chunked
        documents `(batch, chunks, chunk_length)` for the encoder."""
        if token_states is None and self.contextual:
            if self.encoder is None:
                raise ValueError("This ranker has no encoder: pass token_states (cached backbone states).")
            encoded = self.encoder.encode(input_ids, attention_mask)
            token_states, attention_mask, input_ids = encoded.hidden_states, encoded.attention_mask, encoded.input_ids
        elif input_ids is not None and input_ids.dim() == 3:
            input_ids, attention_mask = input_ids.flatten(1), attention_mask.flatten(1)
        states = token_states if self.contextual else None
        scores = self.attention.document_label_scores(states, attention_mask, label_ids, input_ids)
        if self.loss == "listwise":
            loss = listwise_loss(scores, grades, attention_mask)
        else:
            loss = approx_ndcg_loss(scores, grades, attention_mask, self.temperature, self.max_relevant)
        ndcg = ndcg_at_k(scores.detach(), grades, attention_mask, self.ndcg_k)
        return RankerOutput(loss=loss, ndcg=_per_document_ndcg(ndcg))


class StaticRanker(nn.Module):
    """Fits a label attention's static prior (token factors, token biases, label factors) to the MIG grades.

    Batches carry `label_ids` `(batch,)`, lists of token ids `input_ids` `(batch, tokens)` with their `grades` and
    an `attention_mask`. No backbone is involved.
    """

    accepts_loss_kwargs = False

    def __init__(
        self,
        attention: PlantLabelAttention,
        temperature: float = 1.0,
        ndcg_k: int = 10,
        sparse_label_tables: bool = False,
    ):
        super().__init__()
        if not attention.has_prior:
            raise ValueError("The static ranker trains a static prior: build the attention with prior_rank.")
        self.score = attention
        self.temperature = temperature
        self.ndcg_k = ndcg_k
        self.sparse_label_tables = sparse_label_tables

    def forward(
        self, label_ids: torch.Tensor, input_ids: torch.Tensor, grades: torch.Tensor, attention_mask: torch.Tensor
    ) -> RankerOutput:
        scores = self.score.document_label_scores(None, attention_mask, label_ids.unsqueeze(1), input_ids)
        grades = grades.unsqueeze(1)
        loss = approx_ndcg_loss(scores, grades, attention_mask, self.temperature, max_relevant=scores.shape[-1])
        ndcg = ndcg_at_k(scores.detach(), grades, attention_mask, self.ndcg_k)
        return RankerOutput(loss=loss, ndcg=_per_document_ndcg(ndcg))


@dataclass
class RankerCollator:
    """Batches documents for a [`DocumentRanker`]: pads them (cached states, or chunked token ids), keeps at most
    `max_labels` labels per document (a random subset, to bound memory), and looks the grades of their tokens up
    in the MIG table."""

    mig: MIGTable
    max_labels: int = 32
    pad_token_id: int = 0
    seed: int = 0

    def __post_init__(self):
        self._generator = np.random.default_rng(self.seed)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if "token_states" in features[0]:
            batch = CachedDocumentCollator()(features)
        else:
            batch = PlantDataCollator(num_labels=0, pad_token_id=self.pad_token_id)(
                [{"input_ids": feature["input_ids"]} for feature in features]
            )
        label_ids = torch.full((len(features), self.max_labels), -1, dtype=torch.long)
        for row, feature in enumerate(features):
            labels = np.asarray(feature["label_ids"], dtype=np.int64)
            if labels.size > self.max_labels:
                labels = self._generator.choice(labels, size=self.max_labels, replace=False)
            label_ids[row, : labels.size] = torch.from_numpy(labels)
        label_ids = label_ids[:, : max(1, int((label_ids >= 0).sum(1).max()))]
        token_ids = batch["input_ids"].flatten(1)
        grades = self.mig.lookup_grades(token_ids.unsqueeze(1), label_ids.clamp(min=0).unsqueeze(-1))
        batch["label_ids"] = label_ids
        batch["grades"] = grades.masked_fill((label_ids < 0).unsqueeze(-1), 0)
        return batch


@dataclass
class StaticListCollator:
    """Lists for the static ranker: each label's MIG tokens plus `negatives` tokens drawn by document frequency
    (frequent words are the ones a ranker must learn to put below the evidence)."""

    mig: MIGTable
    negatives: int = 256
    seed: int = 0

    def __post_init__(self):
        frequency = self.mig.token_counts.astype(np.float64)
        self._sampling = frequency / frequency.sum()
        self._generator = np.random.default_rng(self.seed)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        labels = np.array([feature["label_id"] for feature in features], dtype=np.int64)
        positives = [self.mig.label_tokens(label)[0] for label in labels]
        sampled = self._generator.choice(self._sampling.size, size=(labels.size, self.negatives), p=self._sampling)
        width = max(len(tokens) for tokens in positives) + self.negatives
        token_ids = torch.zeros(labels.size, width, dtype=torch.long)
        token_mask = torch.zeros(labels.size, width, dtype=torch.bool)
        for row, tokens in enumerate(positives):
            row_tokens = np.concatenate([tokens, sampled[row]])
            token_ids[row, : row_tokens.size] = torch.from_numpy(row_tokens)
            token_mask[row, : row_tokens.size] = True
        label_ids = torch.from_numpy(labels)
        grades = self.mig.lookup_grades(token_ids, label_ids.unsqueeze(-1)).masked_fill(~token_mask, 0)
        return {"label_ids": label_ids, "input_ids": token_ids, "grades": grades, "attention_mask": token_mask}


__all__ = [
    "DocumentRanker",
    "RankerCollator",
    "RankerOutput",
    "StaticListCollator",
    "StaticRanker",
    "approx_ndcg_loss",
    "listwise_loss",
    "ndcg_at_k",
]
