"""PLANT: a label-wise attention classifier on any transformers backbone.

For a document with token states `H` (T x d) the head scores token `t` for label `l` as
`s_lt = K_t . U_l + g_t` (keys `K = H W_k`, label queries `U`, a label-independent token salience
`g = H v`), attends with a masked fp32 softmax over tokens, and predicts `z_l = sum_t A_lt (H_t . w_l) + c_l`.
The `L x d` matrix of per-label contexts is never formed: `H_t . w_l` for all tokens and labels is one product.
"""

import inspect
import os
import sys
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.utils import can_return_tuple, logging

from .configuration_plant import PlantConfig
from .pipeline_plant import PlantClassificationPipeline  # noqa: F401  (saved with the model for remote pipelines)

logger = logging.get_logger(__name__)

# The logit of a label that the shortlist leaves out: probability below 1e-34, yet sigmoid(-x) = 1 / (1 + exp(x))
# stays finite in fp32 (exp overflows above 88), as pipelines compute it.
UNSCORED_LOGIT = -80.0


@dataclass
class PlantOutput(ModelOutput):
    """
    Output of [`PlantForMultiLabelClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean binary cross-entropy over documents and labels (fp32), when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            One score per label; `sigmoid(logits)` are the label probabilities.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The token states the head read (the backbone's last layer, or the given `token_states`), one tensor of
            shape `(batch_size, tokens, hidden_size)` flattened over chunks. Returned only when
            `output_hidden_states=True`.
        label_attentions (`torch.FloatTensor` of shape `(batch_size, num_labels, sequence_length)`, *optional*):
            Each label's attention over the input tokens, aligned with `input_ids` (flattened over chunks when
            the input was given as chunks). Returned only when `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    label_attentions: torch.FloatTensor | None = None


@dataclass
class PlantTokenStates(ModelOutput):
    """
    The token states the label attention reads, in chunk layout: chunk after chunk, each `chunk_size` long.

    Args:
        hidden_states (`torch.FloatTensor` of shape `(batch_size, tokens, hidden_size)`):
            Backbone states; zero at padding.
        attention_mask (`torch.BoolTensor` of shape `(batch_size, tokens)`):
            True at real tokens.
        input_ids (`torch.LongTensor` of shape `(batch_size, tokens)`, *optional*):
            The token ids at those positions, when the input was given as ids.
    """

    hidden_states: torch.FloatTensor | None = None
    attention_mask: torch.BoolTensor | None = None
    input_ids: torch.LongTensor | None = None


@dataclass
class DocumentChunks:
    """A batch of documents split into `(batch, chunks, chunk_length)` pieces for the backbone."""

    inputs: dict[str, torch.Tensor]
    attention_mask: torch.BoolTensor
    # For each document, the input position that each chunk position holds (a special token repeated in every chunk
    # points at its one input position); None when the input was already in chunks.
    source: torch.LongTensor | None = None
    input_length: int = 0

    @property
    def num_chunks(self) -> int:
        return self.attention_mask.shape[1]

    def chunk(self, index: int) -> tuple[dict[str, torch.Tensor], torch.BoolTensor]:
        """Chunk `index` of every document: inputs of shape `(batch, chunk_length, ...)`."""
        return {name: value[:, index] for name, value in self.inputs.items()}, self.attention_mask[:, index]

    def flat(self) -> tuple[dict[str, torch.Tensor], torch.BoolTensor]:
        """All chunks of all documents as one batch of shape `(batch * chunks, chunk_length, ...)`."""
        return (
            {name: value.flatten(0, 1) for name, value in self.inputs.items()},
            self.attention_mask.flatten(0, 1),
        )

    def to_input_layout(self, per_token: torch.Tensor) -> torch.Tensor:
        """Map `(batch, labels, chunks * chunk_length)` values back onto the input's token positions (the values of
        a special token repeated in every chunk are summed onto its input position)."""
        if self.source is None:
            return per_token
        batch, labels, _ = per_token.shape
        real = self.attention_mask.flatten(1)[:, None, :]
        index = self.source[:, None, :].expand(batch, labels, -1)
        restored = per_token.new_zeros(batch, labels, self.input_length)
        return restored.scatter_add(2, index, per_token.masked_fill(~real, 0))


def chunk_documents(
    inputs: dict[str, torch.Tensor],
    attention_mask: torch.Tensor | None,
    chunk_size: int | None,
    max_chunks: int | None = None,
    pad_token_id: int | None = None,
    special_ids: tuple[list[int], list[int]] = ([], []),
) -> DocumentChunks:
    """
    Split documents into chunks for the backbone.

    `inputs` holds `input_ids` or `inputs_embeds` (and optionally `token_type_ids`) of shape `(batch, tokens, ...)`,
    or already chunked as `(batch, chunks, chunk_length, ...)`. The real tokens of flat documents are moved to the
    front before chunking, so that left padding, right padding and no padding give the backbone the same chunks
    (with the same positions); chunks that would hold only padding are not formed. `special_ids` are the tokens the
    tokenizer puts before and after a text: a flat document of ids that begins and ends with them is cut as the
    tokenizer cuts a long text into chunks, each chunk carrying them.
    """
    main = inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]
    prechunked = main.dim() == (3 if "input_ids" in inputs else 4)
    token_shape = main.shape[: 3 if prechunked else 2]
    if attention_mask is not None and attention_mask.shape != token_shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(token_shape)}.")
    if prechunked:
        mask = (
            torch.ones(token_shape, dtype=torch.bool, device=main.device) if attention_mask is None else attention_mask
        )
        chunks = DocumentChunks(
            inputs=dict(inputs), attention_mask=mask.bool(), input_length=token_shape[1] * token_shape[2]
        )
    elif attention_mask is None and (chunk_size is None or token_shape[1] <= chunk_size):
        chunks = DocumentChunks(
            inputs={name: value.unsqueeze(1) for name, value in inputs.items()},
            attention_mask=torch.ones(token_shape, dtype=torch.bool, device=main.device).unsqueeze(1),
            input_length=token_shape[1],
        )
    else:
        mask = (
            torch.ones(token_shape, dtype=torch.bool, device=main.device) if attention_mask is None else attention_mask
        )
        chunks = _split_flat_documents(inputs, mask.bool(), chunk_size, pad_token_id, special_ids)
    if max_chunks is not None and chunks.num_chunks > max_chunks:
        cut = int(chunks.attention_mask[:, max_chunks:].sum())
        logger.warning(
            f"Documents span {chunks.num_chunks} chunks but max_chunks={max_chunks}: {cut} tokens beyond the "
            "limit are ignored. Raise max_chunks, or set streaming=True to read documents of any length."
        )
        chunks.inputs = {name: value[:, :max_chunks] for name, value in chunks.inputs.items()}
        chunks.attention_mask = chunks.attention_mask[:, :max_chunks]
        if chunks.source is not None:
            kept = max_chunks * chunks.attention_mask.shape[-1]
            chunks.source = chunks.source[:, :kept]
    return chunks


def document_pieces(
    positions: list[int], ids: list[int] | None, chunk_size: int | None, special_ids: tuple[list[int], list[int]]
) -> list[list[int]]:
    """The input positions of each chunk of one document (`positions`: its real tokens, in order; `ids`: their ids)."""
    if chunk_size is None or len(positions) <= chunk_size:
        return [positions]
    prefix, suffix = special_ids
    width = chunk_size - len(prefix) - len(suffix)
    framed = ids is not None and (prefix or suffix) and width > 0
    if framed and ids[: len(prefix)] == prefix and ids[len(ids) - len(suffix) :] == suffix:
        head, body, tail = (
            positions[: len(prefix)],
            positions[len(prefix) : len(positions) - len(suffix)],
            positions[len(positions) - len(suffix) :],
        )
        return [head + body[start : start + width] + tail for start in range(0, len(body), width)]
    return [positions[start : start + chunk_size] for start in range(0, len(positions), chunk_size)]


def _split_flat_documents(
    inputs: dict[str, torch.Tensor],
    mask: torch.BoolTensor,
    chunk_size: int | None,
    pad_token_id: int | None,
    special_ids: tuple[list[int], list[int]],
) -> DocumentChunks:
    batch, length = mask.shape
    # One copy to the host for the whole batch: the cut is decided per document on lists of positions.
    real_rows = mask.cpu().tolist()
    id_rows = inputs["input_ids"].cpu().tolist() if "input_ids" in inputs else None
    documents = []
    for row, flags in enumerate(real_rows):
        positions = [position for position, real in enumerate(flags) if real]
        row_ids = None if id_rows is None else [id_rows[row][position] for position in positions]
        documents.append(document_pieces(positions, row_ids, chunk_size, special_ids))
    num_chunks = max(len(pieces) for pieces in documents)
    chunk_length = max(1, max(len(piece) for pieces in documents for piece in pieces))
    source = torch.zeros(batch, num_chunks, chunk_length, dtype=torch.long)
    real = torch.zeros(batch, num_chunks, chunk_length, dtype=torch.bool)
    for row, pieces in enumerate(documents):
        for index, piece in enumerate(pieces):
            source[row, index, : len(piece)] = torch.tensor(piece, dtype=torch.long)
            real[row, index, : len(piece)] = True
    source, real = source.to(mask.device), real.to(mask.device)
    pad_values = {"input_ids": 0 if pad_token_id is None else pad_token_id, "inputs_embeds": 0, "token_type_ids": 0}

    def gathered(value: torch.Tensor, pad_value) -> torch.Tensor:
        flat_source = source.view(batch, -1)
        index = flat_source.view(batch, -1, *([1] * (value.dim() - 2))).expand(-1, -1, *value.shape[2:])
        picked = value.gather(1, index).view(batch, num_chunks, chunk_length, *value.shape[2:])
        keep = real.view(batch, num_chunks, chunk_length, *([1] * (value.dim() - 2)))
        return torch.where(keep, picked, torch.full_like(picked, pad_value))

    return DocumentChunks(
        inputs={name: gathered(value, pad_values[name]) for name, value in inputs.items()},
        attention_mask=real,
        source=source.view(batch, -1),
        input_length=length,
    )


@dataclass
class LabelAttentionState:
    """Running per-label statistics of the attention over the tokens read so far, one entry per label block.

    Without inattention a block holds the online-softmax triple (running max, sum of weights, weighted sum of
    values); with inattention it holds the `k` best scores seen so far and their values.
    """

    blocks: list[tuple[torch.Tensor, ...]]
    scores: list[list[torch.Tensor]] | None = None  # per block, per fold: (batch, tokens, block) when maps are kept
    pooled: tuple[torch.Tensor, torch.Tensor] | None = None  # with a context gate: sum of value states, token count


def _online_softmax_step(
    scores: torch.Tensor, values: torch.Tensor, running_max: torch.Tensor, total: torch.Tensor, weighted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold `scores`/`values` of shape `(batch, tokens, labels)` into a per-label softmax over tokens.

    The max only stabilises the exponentials and cancels out of the result, so it carries no gradient. A label
    whose tokens are all masked (`-inf`) keeps zero weight instead of producing NaN.
    """
    new_max = torch.maximum(running_max, scores.amax(dim=1)).detach()
    shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
    weights = torch.exp(scores - shift.unsqueeze(1))
    rescale = torch.exp(running_max - shift)
    total = total * rescale + weights.sum(dim=1)
    weighted = weighted * rescale + torch.einsum("btl,btl->bl", weights, values)
    return new_max, total, weighted


def _product(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`a @ b` with the operands in `dtype`, returned in the wider of the operands' own dtypes."""
    return (a.to(dtype) @ b.to(dtype)).to(torch.promote_types(a.dtype, b.dtype))


class _LabelSoftmaxFold(torch.autograd.Function):
    """`_online_softmax_step` on scores `keys @ queries.T + salience` and values `value_states @ label_weights.T`
    that keeps no `(batch, tokens, labels)` tensor for the backward pass: it recomputes scores and values there
    from its (small) inputs, so that training memory does not grow with tokens x labels.

    The products over tokens x labels, forward and backward, take their operands in `matmul_dtype` (bf16 runs
    them on the half-precision units); exponentials, maxima and sums stay in fp32.
    """

    @staticmethod
    def forward(ctx, keys, salience, queries, value_states, label_weights, running_max, total, weighted, matmul_dtype):
        weights = _product(keys, queries.T, matmul_dtype).add_(salience.unsqueeze(-1))
        new_max = torch.maximum(running_max, weights.amax(dim=1))
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        weights.sub_(shift.unsqueeze(1)).exp_()
        rescale = torch.exp(running_max - shift)
        values = _product(value_states, label_weights.T, matmul_dtype)
        total = total * rescale + weights.sum(dim=1)
        weighted = weighted * rescale + values.mul_(weights).sum(dim=1)
        ctx.save_for_backward(keys, salience, queries, value_states, label_weights, shift, rescale)
        ctx.matmul_dtype = matmul_dtype
        ctx.mark_non_differentiable(new_max)
        return new_max, total, weighted

    @staticmethod
    def backward(ctx, _, grad_total, grad_weighted):
        keys, salience, queries, value_states, label_weights, shift, rescale = ctx.saved_tensors
        dtype = ctx.matmul_dtype
        weights = _product(keys, queries.T, dtype).add_(salience.unsqueeze(-1)).sub_(shift.unsqueeze(1)).exp_()
        grad_weighted, grad_total = grad_weighted.unsqueeze(1), grad_total.unsqueeze(1)
        grad_values = (weights * grad_weighted).to(dtype)
        # d/ds_t of (total, weighted) is w_t (1, v_t): the shift carries no gradient, as in _online_softmax_step.
        grad_scores = _product(value_states, label_weights.T, dtype).mul_(grad_weighted).add_(grad_total).mul_(weights)
        del weights
        needs = ctx.needs_input_grad
        grad_salience = grad_scores.sum(-1) if needs[1] else None
        grad_scores = grad_scores.to(dtype)
        return (
            _product(grad_scores, queries, dtype) if needs[0] else None,
            grad_salience,
            _product(grad_scores.flatten(0, 1).T, keys.flatten(0, 1), dtype) if needs[2] else None,
            _product(grad_values, label_weights, dtype) if needs[3] else None,
            _product(grad_values.flatten(0, 1).T, value_states.flatten(0, 1), dtype) if needs[4] else None,
            None,
            grad_total.squeeze(1) * rescale if needs[6] else None,
            grad_weighted.squeeze(1) * rescale if needs[7] else None,
            None,
        )


def _top_k_step(
    scores: torch.Tensor, values: torch.Tensor, top_scores: torch.Tensor, top_values: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per label, the `k` best scores among those kept so far and the new ones, with their values."""
    scores = torch.cat([top_scores, scores], dim=1)
    values = torch.cat([top_values, values], dim=1)
    top_scores, index = scores.topk(min(k, scores.shape[1]), dim=1)
    return top_scores, values.gather(1, index)


class PlantLabelAttention(nn.Module):
    """
    Label-wise attention over token states, computed in label blocks and foldable chunk by chunk.

    `s_lt = K_t . U_l + g_t`: a per-label bias would not change a softmax over tokens, so the only bias is the
    label-independent token salience `g_t = H_t . v`. The label bias `label_bias` enters the logits.
    With a static prior (`prior_rank`), token factors `F` and token biases `f` of the vocabulary and label factors
    `E` add `F_{x_t} . E_l + f_{x_t}` to the scores, where `x_t` is the token's id. With `value_dim` the label
    weights act on a shared low-rank projection of the states (`H_t P . w_l`), which divides the cost of the
    values and the size of the label weights by `hidden_size / value_dim`. With `context_gate` each label's context
    is `(1 - g_l)` its attention context plus `g_l` the mean value state, `g_l = sigmoid(label_context_gate[l])`.
    """

    # The parameters that score tokens: what a ranker trains and what planting copies.
    PLANTABLE = (
        "key.weight",
        "salience.weight",
        "label_queries",
        "prior_token_factors",
        "prior_token_bias",
        "prior_label_factors",
    )
    # The tables of one row per label that a shortlisted step reads only in part.
    SPARSE_TABLES = ("label_queries", "label_weights", "prior_label_factors")

    def __init__(
        self,
        hidden_size: int,
        attention_dim: int,
        num_labels: int,
        inattention_k: int | None = None,
        label_block_size: int | None = None,
        vocab_size: int | None = None,
        prior_rank: int | None = None,
        value_dim: int | None = None,
        context_gate: bool = False,
    ):
        super().__init__()
        self.key = nn.Linear(hidden_size, attention_dim, bias=False)
        self.salience = nn.Linear(hidden_size, 1, bias=False)
        self.label_queries = nn.Parameter(torch.empty(num_labels, attention_dim))
        # Not named `value`: LoRA targets such as BERT's `value` must never match the head.
        self.value_projection = None if value_dim is None else nn.Linear(hidden_size, value_dim, bias=False)
        self.label_weights = nn.Parameter(torch.empty(num_labels, value_dim or hidden_size))
        self.label_bias = nn.Parameter(torch.empty(num_labels))
        if context_gate:
            self.label_context_gate = nn.Parameter(torch.empty(num_labels))
        if prior_rank is not None:
            if vocab_size is None:
                raise ValueError("A static prior needs the vocabulary size.")
            self.prior_token_factors = nn.Parameter(torch.empty(vocab_size, prior_rank))
            self.prior_token_bias = nn.Parameter(torch.empty(vocab_size))
            self.prior_label_factors = nn.Parameter(torch.empty(num_labels, prior_rank))
        self.inattention_k = inattention_k
        self.label_block_size = label_block_size
        self.sparse_gradients = False

    @property
    def num_labels(self) -> int:
        return self.label_queries.shape[0]

    def enable_sparse_gradients(self) -> list[nn.Parameter]:
        """From now on, rows of the label tables read for a list of labels (a shortlist) reach them through an
        embedding lookup whose gradient is sparse: a step touches only those rows, not a dense table per label
        (the optimizer must take sparse gradients, as `torch.optim.SparseAdam` does). The tables concerned."""
        self.sparse_gradients = True
        return [getattr(self, name) for name in self.SPARSE_TABLES if hasattr(self, name)]

    def rows(self, table: str, labels: slice | torch.Tensor) -> torch.Tensor:
        """The rows of a label table (`label_queries`, `label_weights`, `prior_label_factors`) for `labels`, fp32.

        Entries of a `labels` tensor below 0 are padding: zero rows, which the caller masks. With sparse gradients
        they read no row at all, so that a lazy optimizer leaves every row no step read where it is.
        """
        weight = getattr(self, table)
        if not isinstance(labels, torch.Tensor):
            return weight[labels].float()
        read = labels >= 0
        if not self.sparse_gradients:
            return weight[labels.clamp(min=0)].float() * read.unsqueeze(-1)
        found = torch.zeros(*labels.shape, weight.shape[1], dtype=torch.float32, device=weight.device)
        found[read] = F.embedding(labels[read], weight, sparse=True).float()
        return found

    def _values(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states if self.value_projection is None else self.value_projection(hidden_states)

    @property
    def has_prior(self) -> bool:
        return hasattr(self, "prior_token_factors")

    @property
    def has_context_gate(self) -> bool:
        return hasattr(self, "label_context_gate")

    def context_gates(self, labels: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """`g_l`, the share of the mean value state in each label's context (fp32)."""
        return torch.sigmoid(self.label_context_gate[labels].float())

    def label_blocks(self) -> list[slice]:
        size = self.label_block_size or self.num_labels
        return [slice(start, min(start + size, self.num_labels)) for start in range(0, self.num_labels, size)]

    def project_tokens(
        self, hidden_states: torch.Tensor | None, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys `(batch, tokens, key_dim)` and salience `(batch, tokens)` (`-inf` at masked tokens).

        With a prior the keys carry the token factors after the projected states; `hidden_states=None` scores by
        the prior alone.
        """
        keys, salience = [], torch.zeros(attention_mask.shape, device=attention_mask.device)
        if hidden_states is not None:
            keys.append(self.key(hidden_states))
            salience = self.salience(hidden_states).squeeze(-1)
        if self.has_prior:
            if input_ids is None:
                raise ValueError("The static prior scores token ids: pass input_ids, not inputs_embeds.")
            keys.append(self.prior_token_factors.float()[input_ids])
            salience = salience + self.prior_token_bias.float()[input_ids]
        return torch.cat(keys, dim=-1), salience.masked_fill(~attention_mask.bool(), float("-inf"))

    def queries(self, labels: slice | torch.Tensor, contextual: bool = True) -> torch.Tensor:
        """Label queries matching the keys of `project_tokens` (with or without the contextual part)."""
        parts = [self.rows("label_queries", labels)] if contextual else []
        if self.has_prior:
            parts.append(self.rows("prior_label_factors", labels))
        return torch.cat(parts, dim=-1)

    def block_scores(self, keys: torch.Tensor, salience: torch.Tensor, labels: slice) -> torch.Tensor:
        """Attention scores `(batch, tokens, labels in block)`; `-inf` at masked tokens."""
        return keys @ self.queries(labels).T + salience.unsqueeze(-1)

    def document_label_scores(
        self,
        hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor,
        label_ids: torch.Tensor,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores of each document's own labels over its tokens, `(batch, labels per document, tokens)`.

        `label_ids` is `(batch, labels per document)`; entries `< 0` are padding and score `-inf`. With
        `hidden_states=None` only the static prior scores.
        """
        with torch.autocast(attention_mask.device.type, enabled=False):
            hidden_states = None if hidden_states is None else hidden_states.float()
            keys, salience = self.project_tokens(hidden_states, attention_mask, input_ids)
            queries = self.queries(label_ids, contextual=hidden_states is not None)
            scores = torch.einsum("btd,bmd->bmt", keys, queries) + salience.unsqueeze(1)
            return scores.masked_fill((label_ids < 0).unsqueeze(-1), float("-inf"))

    def attention_weights(self, scores: torch.Tensor) -> torch.Tensor:
        """The attention weights over the last dimension of `scores` (those of `document_label_scores`): the
        softmax the logits use, inattention included; all-masked rows (padding labels) get zero weight."""
        if self.inattention_k is not None and self.inattention_k < scores.shape[-1]:
            kth = scores.topk(self.inattention_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)

    def label_contexts(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        label_ids: torch.Tensor,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What each document's own labels read, `(batch, labels per document, value size)`: the attention-weighted
        value states, so that a label's logit is its context `. label_weights[l] + label_bias[l]`."""
        with torch.autocast(attention_mask.device.type, enabled=False):
            hidden_states = hidden_states.float()
            scores = self.document_label_scores(hidden_states, attention_mask, label_ids, input_ids)
            weights = self.attention_weights(scores)
            value_states = self._values(hidden_states)
            contexts = weights @ value_states
            if not self.has_context_gate:
                return contexts
            mask = attention_mask.float()
            mean = torch.einsum("bt,btv->bv", mask, value_states) / mask.sum(1, keepdim=True).clamp(min=1)
            gates = self.context_gates(label_ids.clamp(min=0)).unsqueeze(-1)
            return (1 - gates) * contexts + gates * mean.unsqueeze(1)

    def init_state(self, batch_size: int, device: torch.device, keep_scores: bool = False) -> LabelAttentionState:
        blocks = []
        for labels in self.label_blocks():
            width = labels.stop - labels.start
            if self.inattention_k is None:
                running_max = torch.full((batch_size, width), float("-inf"), device=device)
                zeros = torch.zeros(batch_size, width, device=device)
                blocks.append((running_max, zeros, zeros))
            else:
                empty = torch.empty(batch_size, 0, width, device=device)
                blocks.append((empty, empty))
        pooled = None
        if self.has_context_gate:
            pooled = (torch.zeros(batch_size, self.label_weights.shape[1], device=device),
                      torch.zeros(batch_size, device=device))  # fmt: skip
        return LabelAttentionState(blocks=blocks, scores=[[] for _ in blocks] if keep_scores else None, pooled=pooled)

    def fold(
        self,
        state: LabelAttentionState,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
    ) -> LabelAttentionState:
        """Fold the tokens `hidden_states` `(batch, tokens, hidden)` into the running attention `state`.

        The head computes in fp32; under bf16 autocast the softmax fold's products over tokens x labels take bf16
        operands (see `_LabelSoftmaxFold`). fp16 autocast keeps them in fp32: large scores would overflow fp16.
        """
        device = hidden_states.device.type
        bf16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
        matmul_dtype = torch.bfloat16 if bf16 else torch.float32
        with torch.autocast(device, enabled=False):
            hidden_states = hidden_states.float()
            keys, salience = self.project_tokens(hidden_states, attention_mask, input_ids)
            value_states = self._values(hidden_states)
            if state.pooled is not None:
                mask = attention_mask.float()
                total, count = state.pooled
                state.pooled = (total + torch.einsum("bt,btv->bv", mask, value_states), count + mask.sum(1))
            # The softmax fold keeps no (tokens x labels) tensor for the backward pass; the top-k fold does, so
            # under autograd each of its blocks is recomputed there, keeping one block's intermediates at a time.
            recompute = torch.is_grad_enabled() and len(state.blocks) > 1 and self.inattention_k is not None
            blocks = []
            for index, labels in enumerate(self.label_blocks()):
                step = partial(self._block_step, labels, matmul_dtype)
                args = (keys, salience, value_states, *state.blocks[index])
                blocks.append(checkpoint(step, *args, use_reentrant=False) if recompute else step(*args))
                if state.scores is not None:
                    state.scores[index].append(self.block_scores(keys, salience, labels).detach())
        state.blocks = blocks
        return state

    def _block_step(
        self, labels: slice, matmul_dtype: torch.dtype, keys, salience, value_states, *block_state
    ) -> tuple[torch.Tensor, ...]:
        label_weights = self.rows("label_weights", labels)
        if self.inattention_k is None:
            queries = self.queries(labels)
            return _LabelSoftmaxFold.apply(
                keys, salience, queries, value_states, label_weights, *block_state, matmul_dtype
            )
        scores = self.block_scores(keys, salience, labels)
        return _top_k_step(scores, value_states @ label_weights.T, *block_state, k=self.inattention_k)

    def finalize(self, state: LabelAttentionState) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits `(batch, num_labels)` and, when scores were kept, attention maps `(batch, num_labels, tokens)`."""
        logits, maps = [], []
        for index, block in enumerate(state.blocks):
            if self.inattention_k is None:
                running_max, total, weighted = block
                threshold = None
            else:
                top_scores, top_values = block
                start = torch.full_like(top_scores[:, 0], float("-inf"))
                running_max, total, weighted = _online_softmax_step(
                    top_scores, top_values, start, torch.zeros_like(start), torch.zeros_like(start)
                )
                threshold = top_scores[:, -1] if top_scores.shape[1] else start
            logits.append(weighted / total.clamp_min(torch.finfo(total.dtype).tiny))
            if state.scores is not None:
                maps.append(_attention_map(torch.cat(state.scores[index], dim=1), running_max, total, threshold))
        logits = torch.cat(logits, dim=-1)
        if state.pooled is not None:
            total, count = state.pooled
            with torch.autocast(total.device.type, enabled=False):
                pooled = (total / count.clamp(min=1).unsqueeze(-1)) @ self.label_weights.float().T
                gates = self.context_gates()
                logits = (1 - gates) * logits + gates * pooled
        logits = logits + self.label_bias.float()
        return logits, (torch.cat(maps, dim=-1).transpose(1, 2) if maps else None)


def _attention_map(
    scores: torch.Tensor, running_max: torch.Tensor, total: torch.Tensor, threshold: torch.Tensor | None
) -> torch.Tensor:
    """The softmax weights behind the logits, `(batch, tokens, labels)`, from the kept scores and final statistics.

    With inattention, tokens scoring below the k-th best get no weight (tokens tied with it keep theirs).
    """
    shift = torch.where(torch.isfinite(running_max), running_max, torch.zeros_like(running_max)).unsqueeze(1)
    weights = torch.exp(scores - shift)
    if threshold is not None:
        weights = weights.masked_fill(scores < threshold.unsqueeze(1), 0.0)
    return weights / total.clamp_min(torch.finfo(total.dtype).tiny).unsqueeze(1)


def document_mean(losses: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """The mean over documents of each document's mean of `losses` `(batch, items)` over its `counted` items.

    Each document weighs the same however many items it counts, as in the full head's mean over every label: so
    the mean of equal shares of a batch, over processes or accumulation steps, is the whole batch's.
    """
    counted = counted.to(losses.dtype)
    return ((losses * counted).sum(1) / counted.sum(1).clamp(min=1.0)).mean()


def mean_token_states(summed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Documents' mean token states, L2-normalised (fp32), from the sums of their real tokens' states and the
    counts of those tokens; a document without a real token gets zeros."""
    return F.normalize(summed.float() / counts.float().clamp_min(1.0).unsqueeze(-1), dim=-1)


def masked_state_sums(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of each document's real token states, `(batch, hidden)` in fp32, and the count of those tokens."""
    mask = attention_mask.bool()
    summed = torch.einsum("bth,bt->bh", hidden_states.float(), mask.float())
    return summed, mask.sum(dim=1)


class PlantDocumentMemory(nn.Module):
    """
    A retrieval memory: entries (training documents), each a key (a mean token state, L2-normalised) with a set of
    labels, and label descriptions, each a key with its one label. A document's memory score for a label is the
    softmax weight, over the `top_k` entries most similar to the document's own mean state, of the retrieved entries
    that carry the label: a label seen once is scored as soon as its one document is among the nearest, without a
    trained parameter. Its description score, for the labels that no entry carries (never seen in training), is
    the softmax weight of the label's description among the `top_k` descriptions nearest to the document.

    Entry `e`'s labels are `labels[offsets[e]:offsets[e + 1]]`. A model saves its memory beside its weights, in
    `memory.safetensors`, and `from_pretrained` loads it from there.
    """

    TENSORS = ("keys", "offsets", "labels", "description_keys", "description_labels")

    def __init__(self, hidden_size: int, num_labels: int, top_k: int, temperature: float):
        super().__init__()
        self.num_labels, self.top_k, self.temperature = num_labels, top_k, temperature
        # Not in the model's state dict: the memory has its own file (a model is saved without it until it has one).
        empty = {
            "keys": torch.zeros(0, hidden_size),
            "offsets": torch.zeros(1, dtype=torch.long),
            "labels": torch.zeros(0, dtype=torch.long),
            "description_keys": torch.zeros(0, hidden_size),
            "description_labels": torch.zeros(0, dtype=torch.long),
            "documented": torch.zeros(num_labels, dtype=torch.bool),
        }
        for name, tensor in empty.items():
            self.register_buffer(name, tensor, persistent=False)

    def _fill(self, **tensors: torch.Tensor) -> "PlantDocumentMemory":
        """Set the memory's tensors, checked against each other and the label count."""
        tensors = {**{name: getattr(self, name) for name in self.TENSORS}, **tensors}
        keys, offsets, labels = tensors["keys"], tensors["offsets"].long(), tensors["labels"].long()
        description_keys, description_labels = tensors["description_keys"], tensors["description_labels"].long()
        if keys.dim() != 2 or offsets.shape != (keys.shape[0] + 1,) or int(offsets[-1]) != labels.numel():
            raise ValueError("The memory's keys, offsets and labels do not describe one memory.")
        if description_keys.shape != (description_labels.numel(), keys.shape[1]):
            raise ValueError("The memory's description keys and labels do not match its key size.")
        for ids in (labels, description_labels):
            if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < self.num_labels:
                raise ValueError(f"Memory labels must be label ids in [0, {self.num_labels}).")
        self.keys, self.offsets, self.labels = keys, offsets, labels
        self.description_keys, self.description_labels = description_keys, description_labels
        self.documented = torch.zeros(self.num_labels, dtype=torch.bool, device=labels.device).index_fill_(
            0, labels, True
        )
        return self

    @classmethod
    def from_entries(
        cls,
        keys: torch.Tensor,
        label_sets: list[list[int]],
        num_labels: int,
        top_k: int,
        temperature: float,
        descriptions: tuple[torch.Tensor, list[int]] | None = None,
    ) -> "PlantDocumentMemory":
        """A memory of these entries: `keys` `(entries, hidden)` (normalised here) and each entry's label ids, and
        `descriptions`: their keys `(descriptions, hidden)` and each one's label id."""
        if keys.dim() != 2 or keys.shape[0] != len(label_sets):
            raise ValueError(f"{len(label_sets)} label sets for keys of shape {tuple(keys.shape)}.")
        memory = cls(keys.shape[1], num_labels, top_k, temperature)
        lengths = torch.tensor([0] + [len(labels) for labels in label_sets])
        tensors = {
            "keys": F.normalize(keys.detach().float(), dim=-1).to(keys.dtype),
            "offsets": lengths.cumsum(0),
            "labels": torch.tensor([label for labels in label_sets for label in labels], dtype=torch.long),
        }
        if descriptions is not None:
            tensors["description_keys"] = F.normalize(descriptions[0].detach().float(), dim=-1)
            tensors["description_labels"] = torch.tensor(descriptions[1], dtype=torch.long)
        return memory._fill(**tensors)

    @classmethod
    def read(cls, path: str, num_labels: int, top_k: int, temperature: float) -> "PlantDocumentMemory":
        """The memory saved at `path`, over `num_labels` labels; refused where its parts do not fit together."""
        from safetensors import safe_open

        with safe_open(path, framework="pt") as saved:
            saved_names = set(saved.keys())
            tensors = {name: saved.get_tensor(name) for name in cls.TENSORS if name in saved_names}
        if "keys" not in tensors:
            raise ValueError(f"{path}: not a memory file (no keys); write it again.")
        try:
            return cls(tensors["keys"].shape[-1], num_labels, top_k, temperature)._fill(**tensors)
        except ValueError as error:
            raise ValueError(f"{path}: {error} Write it again.") from None

    @classmethod
    def load(cls, path: str, config: PlantConfig) -> "PlantDocumentMemory":
        """The memory saved at `path` for a model of this config; refused where they do not fit."""
        memory = cls.read(path, config.num_labels, config.memory_top_k, config.memory_temperature)
        found = (len(memory), memory.keys.shape[1], memory.labels.numel(), memory.description_labels.numel())
        expected = (
            config.memory_size,
            config.text_config.hidden_size,
            config.memory_labels,
            config.memory_descriptions,
        )
        if found != expected:
            raise ValueError(
                f"{path}: a memory of {found[0]} entries of size {found[1]} with {found[2]} labels and {found[3]} "
                f"descriptions, where the model's config expects {expected[0]}, {expected[1]}, {expected[2]} and "
                f"{expected[3]}: it belongs to another model."
            )
        return memory

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        save_file({name: getattr(self, name).detach().contiguous().cpu() for name in self.TENSORS}, path)

    def joined(self, other: "PlantDocumentMemory") -> "PlantDocumentMemory":
        """This memory's entries, then `other`'s (its descriptions are this one's), with this one's settings."""
        joined = PlantDocumentMemory(self.keys.shape[1], self.num_labels, self.top_k, self.temperature)
        return joined._fill(
            keys=torch.cat([self.keys, other.keys.to(self.keys)]),
            offsets=torch.cat([self.offsets, other.offsets[1:].to(self.offsets) + self.offsets[-1]]),
            labels=torch.cat([self.labels, other.labels.to(self.labels)]),
            description_keys=self.description_keys,
            description_labels=self.description_labels,
        )

    def __len__(self) -> int:
        return self.keys.shape[0]

    def _nearest(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        similarities = (queries.to(keys.dtype) @ keys.T).float()
        top = similarities.topk(min(self.top_k, keys.shape[0]), dim=1)
        return top.indices, torch.softmax(top.values / self.temperature, dim=1)

    def retrieve(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The entries nearest to each normalised query, `(batch, k)`, and their softmax weights (fp32)."""
        return self._nearest(queries, self.keys)

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Each label's memory score, `(batch, num_labels)` in [0, 1] (fp32), for normalised `queries`."""
        scores = queries.new_zeros(queries.shape[0], self.num_labels, dtype=torch.float32)
        if len(self) == 0:
            return scores
        entries, weights = self.retrieve(queries)
        starts, counts = self.offsets[entries].flatten(), (self.offsets[entries + 1] - self.offsets[entries]).flatten()
        # Every (document, retrieved entry, label of the entry) triple, flattened.
        pair = torch.arange(counts.numel(), device=counts.device).repeat_interleave(counts)
        first = (counts.cumsum(0) - counts).repeat_interleave(counts)
        position = starts.repeat_interleave(counts) + torch.arange(pair.numel(), device=counts.device) - first
        rows = torch.div(pair, entries.shape[1], rounding_mode="floor")
        return scores.index_put_((rows, self.labels[position]), weights.flatten()[pair], accumulate=True)

    def carriers(self, entries: torch.Tensor, label: int) -> torch.Tensor:
        """Which of these entries carry `label` (a bool per entry)."""
        spans = zip(self.offsets[entries].tolist(), self.offsets[entries + 1].tolist(), strict=True)
        return torch.tensor([bool((self.labels[start:end] == label).any()) for start, end in spans], dtype=torch.bool)

    def description_scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Each label's description score, `(batch, num_labels)` in [0, 1] (fp32): 0 for the labels that entries
        carry, whose evidence is their documents."""
        scores = queries.new_zeros(queries.shape[0], self.num_labels, dtype=torch.float32)
        undocumented = ~self.documented[self.description_labels]
        keys, labels = self.description_keys[undocumented], self.description_labels[undocumented]
        if labels.numel() == 0:
            return scores
        entries, weights = self._nearest(queries, keys)
        return scores.scatter_add_(1, labels[entries], weights)

    def fuse(
        self,
        logits: torch.Tensor,
        queries: torch.Tensor,
        weight: float,
        description_weight: float = 0.0,
        scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The logits of `(1 - d) [(1 - m) sigmoid(logits) + m memory] + d descriptions` (fp32), `m` the `weight`
        and `d` the `description_weight`; `scores`: the memory's scores of `queries`, where already computed."""
        mixture = torch.sigmoid(logits.float())
        if weight:
            mixture = (1.0 - weight) * mixture + weight * (self.scores(queries) if scores is None else scores)
        if description_weight:
            mixture = (1.0 - description_weight) * mixture + description_weight * self.description_scores(queries)
        tiny = 1e-7  # the mixture's logit stays finite where both sides are 0 or 1
        return torch.logit(mixture.clamp(tiny, 1.0 - tiny))


# The retrieval memory's file in a model folder (beside the weights, not in them).
MEMORY_FILE = "memory.safetensors"

# Checkpoints saved before the head was named `score` (as PEFT's sequence-classification recipe expects) load as well.
_EARLIER_HEAD_NAMES = {r"^label_attention\.value\.": "score.value_projection.", r"^label_attention\.": "score."}


def tree_parents(children: torch.Tensor) -> torch.Tensor:
    """Each node's parent in a tree given by its child table `(nodes, arity)` (-1 padded); -1 for the root."""
    parents = torch.full((children.shape[0],), -1, dtype=torch.long, device=children.device)
    listed = children >= 0
    rows = torch.arange(children.shape[0], device=children.device).unsqueeze(1).expand_as(children)
    return parents.index_put_((children[listed],), rows[listed])


class PlantLabelMatcher(nn.Module):
    """
    A label tree with a linear classifier per node on the document's mean token state: the beam search down the
    tree shortlists the labels that the head then scores, as XR-Transformer's matcher does.

    The tree (node 0 is the root) is `node_children` `(nodes, arity)`, each node's child nodes, and `leaf_labels`
    `(nodes, leaf_size)`, the labels of each leaf cluster, both padded with -1. Node `n` scores
    `log sigmoid(e . node_weights[n] + node_bias[n])` for a document embedding `e`; a path's score is the sum over
    its nodes (the probability-tree product), and the beam keeps the `beam` best paths at each depth.
    """

    def __init__(self, hidden_size: int, num_nodes: int, arity: int, leaf_size: int):
        super().__init__()
        self.node_weights = nn.Parameter(torch.zeros(num_nodes, hidden_size))
        self.node_bias = nn.Parameter(torch.zeros(num_nodes))
        self.register_buffer("node_children", torch.full((num_nodes, arity), -1, dtype=torch.long))
        self.register_buffer("leaf_labels", torch.full((num_nodes, leaf_size), -1, dtype=torch.long))

    @property
    def depth(self) -> int:
        """Steps from the root down to the deepest leaf."""
        frontier, steps = torch.zeros(1, dtype=torch.long, device=self.node_children.device), 0
        while True:
            below = self.node_children[frontier]
            below = below[below >= 0]
            if below.numel() == 0:
                return steps
            frontier, steps = below, steps + 1

    def set_tree(self, children: torch.Tensor, leaf_labels: torch.Tensor) -> None:
        """Install a tree of this matcher's node count (its classifiers keep their values)."""
        if children.shape[0] != self.node_children.shape[0] or leaf_labels.shape[0] != self.leaf_labels.shape[0]:
            raise ValueError(
                f"A tree of {children.shape[0]} nodes does not fit a matcher of {self.node_children.shape[0]} nodes."
            )
        self.node_children = children.to(self.node_children.device, torch.long)
        self.leaf_labels = leaf_labels.to(self.leaf_labels.device, torch.long)

    def node_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Every node's classifier logit, `(batch, nodes)` in fp32."""
        with torch.autocast(embeddings.device.type, enabled=False):
            return embeddings.float() @ self.node_weights.float().T + self.node_bias.float()

    def node_log_probs(self, embeddings: torch.Tensor) -> torch.Tensor:
        """`log sigmoid` of every node's classifier, `(batch, nodes)` in fp32 (the root's is 0)."""
        log_probs = F.logsigmoid(self.node_logits(embeddings))
        return log_probs.index_fill(1, torch.zeros(1, dtype=torch.long, device=log_probs.device), 0.0)

    @torch.no_grad()
    def beam_search(self, embeddings: torch.Tensor, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `beam` best leaf clusters of each document, `(batch, beam)` node ids (-1: fewer leaves), with their
        path scores. A leaf reached above the deepest level stays in the beam with its score."""
        log_probs = self.node_log_probs(embeddings)
        batch = embeddings.shape[0]
        nodes = torch.zeros(batch, 1, dtype=torch.long, device=embeddings.device)
        scores = torch.zeros(batch, 1, device=embeddings.device)
        for _ in range(self.depth):
            below = self.node_children[nodes.clamp(min=0)]  # (batch, beam, arity)
            leaf = below[..., 0] < 0
            below = torch.where(leaf.unsqueeze(-1), torch.full_like(below, -1), below)
            below[..., 0] = torch.where(leaf, nodes, below[..., 0])
            gained = torch.where(
                leaf.unsqueeze(-1), 0.0, log_probs.gather(1, below.clamp(min=0).flatten(1)).view_as(below)
            )
            candidates = (scores.unsqueeze(-1) + gained).masked_fill(below < 0, float("-inf")).flatten(1)
            scores, best = candidates.topk(min(beam, candidates.shape[1]), dim=1)
            nodes = below.flatten(1).gather(1, best).masked_fill(~torch.isfinite(scores), -1)
        return nodes, scores

    def shortlist(self, embeddings: torch.Tensor, beam: int) -> torch.Tensor:
        """The labels of each document's `beam` best leaf clusters, `(batch, beam x leaf_size)`, -1 padded."""
        nodes, _ = self.beam_search(embeddings, beam)
        labels = self.leaf_labels[nodes.clamp(min=0)].masked_fill((nodes < 0).unsqueeze(-1), -1)
        return labels.flatten(1)

    def node_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Each node's target for multi-hot `labels` `(batch, num_labels)`: whether any label below it is one."""
        leaf_hits = labels.float().gather(1, self.leaf_labels.clamp(min=0).flatten().expand(labels.shape[0], -1))
        leaf_hits = leaf_hits.view(labels.shape[0], *self.leaf_labels.shape).masked_fill(self.leaf_labels < 0, 0)
        targets = leaf_hits.amax(-1)
        for _ in range(self.depth):  # a parent is positive where a child is
            below = targets.gather(1, self.node_children.clamp(min=0).flatten().expand(labels.shape[0], -1))
            below = below.view(labels.shape[0], *self.node_children.shape).masked_fill(self.node_children < 0, 0)
            targets = torch.maximum(targets, below.amax(-1))
        return targets

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The probabilistic label tree's loss: each node's binary cross-entropy on the documents whose parent
        node is positive (every document for the root's children), averaged over a document's nodes, then over
        the documents."""
        targets = self.node_targets(labels)
        parents = tree_parents(self.node_children)
        counted = targets[:, parents.clamp(min=0)].masked_fill((parents < 0).unsqueeze(0), 0.0)
        losses = F.binary_cross_entropy_with_logits(self.node_logits(embeddings), targets, reduction="none")
        return document_mean(losses, counted)


class PlantPreTrainedModel(PreTrainedModel):
    config: PlantConfig
    config_class = PlantConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _keep_in_fp32_modules = ["score", "matcher"]
    _keep_in_fp32_modules_strict = ["score", "matcher"]
    # Heads and poolers of the checkpoints a backbone may come from.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^score\.", r"^classifier\.", r"^cls\.", r"pooler\."]
    # The loss is a mean over documents and labels: Trainer must not rescale it by token counts.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        # Weights load from safetensors only: a folder holding pickled weights alone is refused, never unpickled
        # (`use_safetensors=False` opts in).
        kwargs.setdefault("use_safetensors", True)
        kwargs.setdefault("key_mapping", _EARLIER_HEAD_NAMES)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if getattr(model.config, "memory_size", 0):
            from transformers.utils import cached_file

            hub = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            try:
                path = cached_file(
                    str(pretrained_model_name_or_path), MEMORY_FILE, **{k: kwargs[k] for k in hub if k in kwargs}
                )
            except OSError as error:
                raise OSError(
                    f"{pretrained_model_name_or_path}: its config.json records a retrieval memory of "
                    f"{model.config.memory_size} documents, but {MEMORY_FILE} cannot be found beside the weights "
                    f"({error}). Restore that file, or set memory_size to 0 in config.json to load the model "
                    "without its memory."
                ) from None
            model.set_memory(PlantDocumentMemory.load(path, model.config).to(model.device))
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        memory = getattr(self, "memory", None)
        if memory is not None and kwargs.get("is_main_process", True):
            memory.save(os.path.join(save_directory, MEMORY_FILE))

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PlantLabelMatcher):
            init.zeros_(module.node_weights)
            init.zeros_(module.node_bias)
        if isinstance(module, PlantLabelAttention):
            init.normal_(module.label_queries, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.label_weights, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.label_bias)
            init.zeros_(module.salience.weight)
            if module.has_context_gate:
                init.zeros_(module.label_context_gate)
            if module.has_prior:
                # Zero label factors and token biases: an unplanted prior adds nothing, yet still learns.
                init.normal_(module.prior_token_factors, mean=0.0, std=self.config.initializer_range)
                init.zeros_(module.prior_token_bias)
                init.zeros_(module.prior_label_factors)


class PlantForMultiLabelClassification(PlantPreTrainedModel):
    """
    A backbone (`AutoModel`) with a PLANT label-wise attention head for multi-label classification.

    Example:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig
    >>> from plant_hf import PlantConfig, PlantForMultiLabelClassification

    >>> backbone = LlamaConfig(
    ...     vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ... )
    >>> model = PlantForMultiLabelClassification(PlantConfig(text_config=backbone, num_labels=5))
    >>> input_ids = torch.randint(3, 128, (2, 10))
    >>> out = model(input_ids=input_ids, labels=torch.zeros(2, 5))
    >>> out.logits.shape, out.loss.dtype
    (torch.Size([2, 5]), torch.float32)
    ```
    """

    def __init__(self, config: PlantConfig):
        super().__init__(config)
        self.model = _backbone_from_config(config.text_config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.score = PlantLabelAttention(
            hidden_size=config.text_config.hidden_size,
            attention_dim=config.label_attention_dim,
            num_labels=config.num_labels,
            inattention_k=config.inattention_k,
            label_block_size=config.label_block_size,
            vocab_size=config.text_config.vocab_size,
            prior_rank=config.static_prior_rank,
            value_dim=config.label_value_dim,
            context_gate=config.context_gate,
        )
        self.memory: PlantDocumentMemory | None = None  # from_pretrained loads it from MEMORY_FILE
        self.matcher = None
        if config.label_tree_nodes:
            self.matcher = PlantLabelMatcher(
                config.text_config.hidden_size,
                config.label_tree_nodes,
                config.label_tree_arity,
                config.label_tree_leaf_size,
            )
        self.post_init()
        _register_with_peft()

    @classmethod
    def from_backbone(
        cls,
        pretrained_model_name_or_path: str,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        **kwargs,
    ) -> "PlantForMultiLabelClassification":
        """
        Build a PLANT classifier on a pretrained backbone and load the backbone's weights.

        The checkpoint may be a `*ForCausalLM`, a bare base model or an encoder (`*ForMaskedLM` too); its own head
        is dropped. Keyword arguments naming [`PlantConfig`] fields (`chunk_size`, `inattention_k`, ...) configure
        the head; the rest (`dtype`, `quantization_config`, `device_map`, `revision`, ...) go to `from_pretrained`.
        The head stays in fp32 whatever the backbone's dtype.

        Example:

        ```python
        >>> model = PlantForMultiLabelClassification.from_backbone(
        ...     "mistralai/Mistral-7B-v0.3", id2label={0: "A01", 1: "B02"}, chunk_size=512, dtype=torch.bfloat16
        ... )  # doctest: +SKIP
        ```
        """
        head_fields = set(PlantConfig.__annotations__) - {"text_config"}
        config_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in head_fields}
        hub_kwargs = {
            name: kwargs[name]
            for name in ("cache_dir", "revision", "token", "local_files_only", "subfolder", "trust_remote_code")
            if name in kwargs
        }
        text_config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if "chunk_prefix_ids" not in config_kwargs and "chunk_suffix_ids" not in config_kwargs:
            config_kwargs.update(_backbone_special_ids(pretrained_model_name_or_path, hub_kwargs))
        if num_labels is not None:
            config_kwargs["num_labels"] = num_labels
        config = PlantConfig(text_config=text_config, id2label=id2label, **config_kwargs)
        prefix = _backbone_class(text_config).base_model_prefix
        if prefix and prefix != cls.base_model_prefix and "key_mapping" not in kwargs:
            kwargs["key_mapping"] = {rf"^{prefix}\.": f"{cls.base_model_prefix}."}
        # The head is new by construction: the load report lists only what is wrong with the backbone's weights.
        own = cls.__dict__.get("_keys_to_ignore_on_load_missing")
        cls._keys_to_ignore_on_load_missing = [*(own or []), r"^score\."]
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)
        finally:
            cls._keys_to_ignore_on_load_missing = own
        logger.info(f"{cls.__name__}: backbone loaded from {pretrained_model_name_or_path}; the head starts untrained.")
        model.score.float()
        return model

    def plant(self, attention_state: dict[str, torch.Tensor]) -> list[str]:
        """Copy planted attention weights (trained by a ranker) into the label attention; return what was copied.

        Only the parts that score tokens may be planted: `key.weight`, `salience.weight`, `label_queries` and the
        static prior's `prior_*` tensors, each of the shape this model has. The label order must be the model's.
        """
        own = dict(self.score.named_parameters())
        plantable = sorted(set(self.score.PLANTABLE) & set(own))
        unknown = set(attention_state) - set(plantable)
        if unknown:
            raise ValueError(f"Cannot plant {sorted(unknown)} into this model: only {plantable} score tokens.")
        for name, value in attention_state.items():
            if value.shape != own[name].shape:
                raise ValueError(
                    f"Planted {name} has shape {tuple(value.shape)}, this model's has {tuple(own[name].shape)}."
                )
        with torch.no_grad():
            for name, value in attention_state.items():
                own[name].copy_(value.to(own[name].dtype))
        return sorted(attention_state)

    def encode(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
    ) -> PlantTokenStates:
        """Backbone states of every token the label attention reads, in chunk layout."""
        return self._flat_states(self._chunk(input_ids, attention_mask, token_type_ids, inputs_embeds))

    def set_memory(self, memory: PlantDocumentMemory | None) -> None:
        """Carry this retrieval memory (None: none), recorded in the config so that the saved model loads with it;
        `config.memory_weight` says how much of it the probabilities take."""
        if memory is not None and memory.num_labels != self.config.num_labels:
            raise ValueError(f"A memory over {memory.num_labels} labels for a model of {self.config.num_labels}.")
        self.memory = memory
        self.config.memory_size = 0 if memory is None else len(memory)
        self.config.memory_labels = 0 if memory is None else memory.labels.numel()
        self.config.memory_descriptions = 0 if memory is None else memory.description_labels.numel()
        if memory is not None:
            self.config.memory_top_k, self.config.memory_temperature = memory.top_k, memory.temperature
        else:
            self.config.memory_weight = self.config.memory_description_weight = 0.0

    def set_label_tree(
        self,
        children: torch.Tensor,
        leaf_labels: torch.Tensor,
        node_weights: torch.Tensor | None = None,
        node_bias: torch.Tensor | None = None,
    ) -> None:
        """Give the model a label tree (`PlantLabelMatcher`'s tables, as `plant_hf.label_tree.tree_tables` makes
        them) and a fresh matcher over it, its node classifiers started at `node_weights` and `node_bias` (e.g. the
        nodes' PIFA centroids, scaled) or at zero; the config records the tree's shape."""
        labels = leaf_labels[leaf_labels >= 0].sort().values
        if not torch.equal(labels.cpu(), torch.arange(self.config.num_labels)):
            raise ValueError(f"The label tree must hold each of this model's {self.config.num_labels} labels once.")
        self.config.label_tree_nodes, self.config.label_tree_arity = children.shape
        self.config.label_tree_leaf_size = leaf_labels.shape[1]
        device = self.score.label_bias.device
        self.matcher = PlantLabelMatcher(self.config.text_config.hidden_size, *children.shape, leaf_labels.shape[1])
        self.matcher.to(device).set_tree(children, leaf_labels)
        with torch.no_grad():
            for parameter, start in ((self.matcher.node_weights, node_weights), (self.matcher.node_bias, node_bias)):
                if start is not None:
                    parameter.copy_(start)

    @torch.no_grad()
    def document_embeddings(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        token_states: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """Each document's mean token state over its real tokens (all its chunks), L2-normalised, `(batch,
        hidden_size)` in fp32: its key in the retrieval memory, and its query to it."""
        if token_states is not None:
            return mean_token_states(*masked_state_sums(token_states, self._states_mask(token_states, attention_mask)))
        chunks = self._chunk(input_ids, attention_mask, token_type_ids, inputs_embeds)
        summed, counts = 0.0, 0
        for index in range(chunks.num_chunks):  # one chunk at a time: memory does not grow with the length
            inputs, mask = chunks.chunk(index)
            chunk_sum, chunk_count = masked_state_sums(self._run_backbone(inputs, mask), mask)
            summed, counts = summed + chunk_sum, counts + chunk_count
        return mean_token_states(summed, counts)

    @torch.no_grad()
    def label_attention_maps(
        self,
        label_ids: torch.LongTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """The attention of chosen labels over the input tokens, `(batch, labels per document, tokens)`.

        `label_ids` is `(batch, labels per document)` (entries < 0 are padding). The weights are those the logits
        use (inattention included) and align with `input_ids`, as `label_attentions` of the forward pass does, but
        only for these labels, so that explaining a few predictions costs little whatever the label count.
        """
        chunks = self._chunk(input_ids, attention_mask, token_type_ids, inputs_embeds)
        states = self._flat_states(chunks)
        scores = self.score.document_label_scores(
            states.hidden_states, states.attention_mask, label_ids, states.input_ids
        )
        return chunks.to_input_layout(self.score.attention_weights(scores))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        token_states: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> PlantOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)` or `(batch_size, chunks, chunk_length)`):
            Token ids. Flat documents longer than `config.chunk_size` are split into chunks here; pre-chunked input
            is encoded chunk by chunk as given. With `token_states`, the ids of the tokens whose states are given.
        token_states (`torch.FloatTensor` of shape `(batch_size, tokens, hidden_size)`, *optional*):
            Backbone states computed beforehand (a frozen backbone's cache): the backbone is skipped and only the
            head runs. `attention_mask` is then `(batch_size, tokens)`.
        labels (`torch.Tensor` of shape `(batch_size, num_labels)`, *optional*):
            Multi-hot targets (0/1, or soft targets in [0, 1]) for the binary cross-entropy loss.
        output_attentions (`bool`, *optional*):
            Also return each label's attention over the input tokens (`label_attentions`).
        output_hidden_states (`bool`, *optional*):
            Also return the token states the head read (`hidden_states`).
        """
        for name, given in (("token_states", token_states), ("inputs_embeds", inputs_embeds)):
            if given is not None and not bool(torch.isfinite(given).all()):
                raise ValueError(f"{name} hold NaN or infinite values: the head would turn them into NaN logits.")
        weights = (self.config.memory_weight, self.config.memory_description_weight)
        remember = self.memory is not None and max(weights) > 0
        targets = None if labels is None else self._targets(labels)
        keep_sums = remember or (targets is not None and self.matcher is not None)
        shortlist = None
        remembered = None  # the memory's scores, where both the shortlist and the mixture need them
        if self.shortlisting:
            flat = self._states(input_ids, attention_mask, token_type_ids, inputs_embeds, token_states)
            sums = masked_state_sums(flat.hidden_states, flat.attention_mask)
            embeddings = mean_token_states(*sums)
            if self.memory is not None and len(self.memory):
                remembered = self.memory.scores(embeddings)
            logits, shortlist = self._shortlisted_logits(flat, embeddings, targets, remembered)
            states, maps = flat.hidden_states, None
        elif token_states is not None:
            mask = self._states_mask(token_states, attention_mask)
            logits, maps = self._attend_to_states(token_states, mask, input_ids, bool(output_attentions))
            states, sums = token_states, masked_state_sums(token_states, mask) if keep_sums else None
        else:
            chunks = self._chunk(input_ids, attention_mask, token_type_ids, inputs_embeds)
            logits, maps, states, sums = self._attend_to_chunks(
                chunks, bool(output_attentions), bool(output_hidden_states), keep_sums
            )
            maps = None if maps is None else chunks.to_input_layout(maps)
        embeddings = None if sums is None else mean_token_states(*sums)
        if remember:
            logits = self.memory.fuse(logits, embeddings, *weights, scores=remembered)
        loss = None
        if targets is not None:
            if shortlist is None:
                loss = F.binary_cross_entropy_with_logits(logits.float(), targets.to(logits.device))
            else:  # the positives, the matcher's hard negatives and a few random labels
                chosen = shortlist.clamp(min=0)
                losses = F.binary_cross_entropy_with_logits(
                    logits.float().gather(1, chosen), targets.to(logits.device).gather(1, chosen), reduction="none"
                )
                loss = document_mean(losses, shortlist >= 0)
            if self.matcher is not None:
                loss = loss + self.matcher.loss(embeddings, targets.to(embeddings.device))
        hidden_states = (states,) if output_hidden_states else None
        return PlantOutput(loss=loss, logits=logits, hidden_states=hidden_states, label_attentions=maps)

    @property
    def sparse_label_tables(self) -> bool:
        """Whether a training step reads only some rows of the label tables (those of the shortlists), where
        `PlantTrainer` gives the tables sparse gradients."""
        return self.shortlisting

    @property
    def shortlisting(self) -> bool:
        """Whether the head scores only the matcher's shortlist: with a label tree, from `shortlist_min_labels`
        labels on."""
        least = self.config.shortlist_min_labels
        return self.matcher is not None and least is not None and self.config.num_labels >= least

    @torch.no_grad()
    def shortlist(self, embeddings: torch.Tensor, memory_scores: torch.Tensor | None = None) -> torch.Tensor:
        """The labels the head scores for documents of these `document_embeddings`, `(batch, labels)`, -1 padded,
        each once: those of the matcher's `shortlist_beam` best leaf clusters and those of the memory's retrieved
        entries (where the model has a memory; `memory_scores`: its scores, where already computed)."""
        if self.matcher is None:
            raise ValueError("This model has no label tree to shortlist labels with (set_label_tree gives it one).")
        shortlist = self.matcher.shortlist(embeddings, self.config.shortlist_beam)
        if self.memory is not None and len(self.memory):
            remembered = self.memory.scores(embeddings) if memory_scores is None else memory_scores
            values, retrieved = remembered.topk(max(int((remembered > 0).sum(1).max()), 1), dim=1)
            shortlist = torch.cat([shortlist, retrieved.masked_fill(values <= 0, -1)], dim=1)
        return _distinct(shortlist)

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        """`labels` checked as multi-hot (or soft) targets of every label, in fp32."""
        expected = (labels.shape[0], self.config.num_labels)
        if labels.dim() != 2 or tuple(labels.shape) != expected:
            raise ValueError(
                f"labels must be multi-hot of shape (batch_size, num_labels) = {expected}, got {tuple(labels.shape)}."
            )
        targets = labels.to(torch.float32)
        if not bool(((targets >= 0) & (targets <= 1)).all()):  # NaN fails both comparisons
            raise ValueError("labels must be targets in [0, 1] (multi-hot, or soft), without NaN.")
        return targets

    def _states(self, input_ids, attention_mask, token_type_ids, inputs_embeds, token_states) -> PlantTokenStates:
        """The token states the head reads, per document: the given ones, or the backbone's over all chunks."""
        if token_states is None:
            return self._flat_states(self._chunk(input_ids, attention_mask, token_type_ids, inputs_embeds))
        mask = self._states_mask(token_states, attention_mask)
        return PlantTokenStates(hidden_states=token_states, attention_mask=mask, input_ids=input_ids)

    def _shortlisted_logits(
        self,
        states: PlantTokenStates,
        embeddings: torch.Tensor,
        targets: torch.Tensor | None,
        memory_scores: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the shortlisted labels (the others get `UNSCORED_LOGIT`) and the labels scored `(batch, labels)`,
        -1 padded: the shortlist and, in training mode, each document's positives and `shortlist_negatives` random
        labels (never in evaluation, where scoring the positives would flatter the dev metrics)."""
        shortlist = self.shortlist(embeddings, memory_scores)
        if targets is not None and self.training:  # in evaluation, the positives must earn their place
            positive = targets > 0
            values, positives = positive.float().topk(max(int(positive.sum(1).max()), 1), dim=1)
            random = torch.randint(
                0, self.config.num_labels, (targets.shape[0], self.config.shortlist_negatives), device=targets.device
            )
            shortlist = torch.cat([shortlist, positives.masked_fill(values <= 0, -1), random], dim=1)
        shortlist = _distinct(shortlist)
        # Padding (-1) reads no row of the label tables (`rows`); its scores go to the spare column below.
        contexts = self.score.label_contexts(
            self.dropout(states.hidden_states), states.attention_mask, shortlist, states.input_ids
        )
        scores = torch.einsum("bmv,bmv->bm", contexts, self.score.rows("label_weights", shortlist))
        scores = scores + self.score.label_bias.float()[shortlist.clamp(min=0)]
        logits = scores.new_full((scores.shape[0], self.config.num_labels + 1), UNSCORED_LOGIT)
        padded = shortlist.masked_fill(shortlist < 0, self.config.num_labels)  # the spare column takes the padding
        return logits.scatter(1, padded, scores)[:, :-1], shortlist

    def _attend_to_chunks(
        self, chunks: DocumentChunks, keep_maps: bool, keep_states: bool, keep_sums: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """Logits, attention maps (`keep_maps`), the token states read (`keep_states`) and the sums and counts of
        each document's real token states (`keep_sums`)."""
        batch_size = chunks.attention_mask.shape[0]
        state = self.score.init_state(batch_size, chunks.attention_mask.device, keep_scores=keep_maps)
        sums = None
        if self.config.streaming:
            kept = []
            for index in range(chunks.num_chunks):
                inputs, mask = chunks.chunk(index)
                hidden_states = self._run_backbone(inputs, mask)
                kept += [hidden_states] if keep_states else []
                if keep_sums:
                    chunk_sums = masked_state_sums(hidden_states, mask)
                    sums = chunk_sums if sums is None else (sums[0] + chunk_sums[0], sums[1] + chunk_sums[1])
                state = self.score.fold(state, self.dropout(hidden_states), mask, inputs.get("input_ids"))
            read = torch.cat(kept, dim=1) if keep_states else None
        else:
            states = self._flat_states(chunks)
            read = states.hidden_states if keep_states else None
            sums = masked_state_sums(states.hidden_states, states.attention_mask) if keep_sums else None
            hidden_states = self.dropout(states.hidden_states)
            state = self.score.fold(state, hidden_states, states.attention_mask, states.input_ids)
        logits, maps = self.score.finalize(state)
        return logits, maps, read, sums

    def _flat_states(self, chunks: DocumentChunks) -> PlantTokenStates:
        """The backbone run over all chunks at once, its states laid out per document `(batch, tokens, hidden)`."""
        batch_size = chunks.attention_mask.shape[0]
        inputs, mask = chunks.flat()
        hidden_states = self._run_backbone(inputs, mask)
        ids = inputs.get("input_ids")
        return PlantTokenStates(
            hidden_states=hidden_states.view(batch_size, -1, hidden_states.shape[-1]),
            attention_mask=mask.view(batch_size, -1),
            input_ids=None if ids is None else ids.reshape(batch_size, -1),
        )

    @staticmethod
    def _states_mask(token_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.BoolTensor:
        """The mask of given token states: all real where none is given."""
        if attention_mask is None:
            return torch.ones(token_states.shape[:2], dtype=torch.bool, device=token_states.device)
        if attention_mask.shape != token_states.shape[:2]:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(token_states.shape[:2])}."
            )
        return attention_mask.bool()

    def _attend_to_states(
        self,
        token_states: torch.Tensor,
        attention_mask: torch.BoolTensor,
        input_ids: torch.Tensor | None,
        keep_maps: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        state = self.score.init_state(token_states.shape[0], token_states.device, keep_scores=keep_maps)
        state = self.score.fold(state, self.dropout(token_states), attention_mask, input_ids)
        return self.score.finalize(state)

    def _chunk(self, input_ids, attention_mask, token_type_ids, inputs_embeds) -> DocumentChunks:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        inputs = {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "token_type_ids": token_type_ids}
        return chunk_documents(
            {name: value for name, value in inputs.items() if value is not None},
            attention_mask,
            chunk_size=self.config.chunk_size,
            max_chunks=self.config.max_chunks,
            pad_token_id=getattr(self.config.text_config, "pad_token_id", None),
            special_ids=(self.config.chunk_prefix_ids or [], self.config.chunk_suffix_ids or []),
        )

    def _run_backbone(self, inputs: dict[str, torch.Tensor], attention_mask: torch.BoolTensor) -> torch.Tensor:
        """Encode `(rows, chunk_length)` pieces; rows without a real token are skipped and come back as zeros."""
        rows, length = attention_mask.shape
        hidden_size = self.config.text_config.hidden_size
        nonempty = attention_mask.any(dim=1).nonzero().squeeze(1)
        if nonempty.numel() == 0:
            return torch.zeros(rows, length, hidden_size, device=attention_mask.device)
        backbone_inputs = {name: value.index_select(0, nonempty) for name, value in inputs.items()}
        if "use_cache" in _forward_parameters(self.model):
            backbone_inputs["use_cache"] = False
        outputs = self.model(attention_mask=attention_mask.index_select(0, nonempty).long(), **backbone_inputs)
        hidden_states = getattr(outputs, "last_hidden_state", None)
        if hidden_states is None:
            raise ValueError(
                f"The backbone {type(self.model).__name__} returned no `last_hidden_state`; PLANT needs a backbone "
                "that outputs token hidden states (an encoder or a decoder's base model)."
            )
        if nonempty.numel() == rows:
            return hidden_states
        return hidden_states.new_zeros(rows, length, hidden_size).index_copy(0, nonempty, hidden_states)


def chunk_special_ids(tokenizer) -> dict[str, list[int]]:
    """The special tokens `tokenizer` puts before and after a text, as PlantConfig's `chunk_prefix_ids` and
    `chunk_suffix_ids`."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    framed = tokenizer("x")["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return {"chunk_prefix_ids": framed[:start], "chunk_suffix_ids": framed[start + len(plain) :]}
    return {}


def _backbone_special_ids(pretrained_model_name_or_path: str, hub_kwargs: dict) -> dict[str, list[int]]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
    except (OSError, ValueError):
        logger.info(
            f"No tokenizer loads from {pretrained_model_name_or_path}: long documents given in one piece are cut "
            "into chunks without repeating its special tokens (set chunk_prefix_ids / chunk_suffix_ids)."
        )
        return {}
    return chunk_special_ids(tokenizer)


def _backbone_class(text_config) -> type:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(text_config)]
    except KeyError:
        raise ValueError(
            f"No AutoModel class is registered for backbone config {type(text_config).__name__} "
            f"(model_type {text_config.model_type!r}); PLANT needs a backbone that AutoModel can build."
        ) from None


def _backbone_from_config(text_config) -> PreTrainedModel:
    """The backbone's base model, without a pooler where the class has one (the head never reads it)."""
    kwargs = {}
    if "add_pooling_layer" in inspect.signature(_backbone_class(text_config).__init__).parameters:
        kwargs["add_pooling_layer"] = False
    return AutoModel.from_config(text_config, **kwargs)


# Backbone families whose default LoRA targets PEFT knows. No family's defaults name another's modules, so on any
# one backbone their union selects exactly that family's own defaults.
PEFT_DEFAULT_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "bert", "roberta", "xlm-roberta")


def _register_with_peft() -> None:
    """Let PEFT choose a PLANT model's default LoRA targets (`target_modules=None`) as it does for its backbone.

    Only once PEFT is imported (a script that builds a PEFT model has imported it): importing it here would slow
    every model load for users who never adapt one.
    """
    if "peft" not in sys.modules:
        return
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    union = {name for family in PEFT_DEFAULT_FAMILIES for name in defaults.get(family, ())}
    defaults.setdefault(PlantConfig.model_type, sorted(union))


def _forward_parameters(module: nn.Module) -> set[str]:
    return set(inspect.signature(module.forward).parameters)


def _distinct(ids: torch.Tensor) -> torch.Tensor:
    """Each row's ids sorted, with repeats and padding set to -1."""
    ordered = ids.sort(dim=1).values
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return ordered.masked_fill(repeated | (ordered < 0), -1)


__all__ = [
    "PlantDocumentMemory",
    "PlantForMultiLabelClassification",
    "PlantLabelAttention",
    "PlantLabelMatcher",
    "PlantOutput",
    "PlantPreTrainedModel",
    "chunk_special_ids",
    "document_pieces",
]
