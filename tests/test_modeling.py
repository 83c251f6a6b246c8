"""The label-wise attention head: its math, its equivalences, and that it never produces NaN."""

import pytest
import torch
from torch.nn import functional as F

from plant_hf import PlantForMultiLabelClassification

from conftest import DECODERS, random_ids, tiny_model, word_tokenizer


def reference_logits(model, hidden_states, attention_mask, inattention_k=None):
    """The head written out directly over all tokens at once: masked softmax, then attention-weighted values."""
    head = model.score
    hidden_states = hidden_states.float()
    scores = hidden_states @ head.key.weight.T @ head.label_queries.T + hidden_states @ head.salience.weight.T
    scores = scores.masked_fill(~attention_mask.bool().unsqueeze(-1), float("-inf"))
    if inattention_k is not None:
        kth = scores.topk(inattention_k, dim=1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    attention = torch.nan_to_num(torch.softmax(scores, dim=1), nan=0.0)
    value_states = hidden_states if head.value_projection is None else head.value_projection(hidden_states)
    return (attention * (value_states @ head.label_weights.T)).sum(1) + head.label_bias


def parameter_grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(first, second, atol=1e-5):
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=atol, rtol=1e-4, msg=name)


def test_forward_shapes_loss_and_maps(backbone_name):
    model = tiny_model(backbone_name, num_labels=5)
    input_ids = random_ids(3, 9)
    labels = torch.randint(0, 2, (3, 5)).float()
    out = model(input_ids=input_ids, labels=labels, output_attentions=True)
    assert out.logits.shape == (3, 5) and out.logits.dtype == torch.float32
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels))
    assert out.label_attentions.shape == (3, 5, 9)
    torch.testing.assert_close(out.label_attentions.sum(-1), torch.ones(3, 5))
    assert model(input_ids=input_ids).label_attentions is None


@pytest.mark.parametrize(("inattention_k", "low_rank"), [(None, None), (3, None), (None, 8)])
def test_logits_follow_the_written_out_formula(backbone_name, inattention_k, low_rank):
    model = tiny_model(
        backbone_name, num_labels=7, inattention_k=inattention_k, label_attention_dim=low_rank, label_value_dim=low_rank
    )
    if low_rank:
        assert model.score.label_weights.shape == model.score.label_queries.shape == (7, 8)
    input_ids = random_ids(2, 11)
    mask = torch.ones_like(input_ids)
    mask[1, 8:] = 0
    states = model.encode(input_ids, mask)
    expected = reference_logits(model, states.hidden_states, states.attention_mask, inattention_k)
    torch.testing.assert_close(model(input_ids=input_ids, attention_mask=mask).logits, expected)


def test_chunked_document_attends_over_all_independently_encoded_chunks():
    model = tiny_model("llama", num_labels=6, chunk_size=8)
    input_ids = random_ids(1, 30)
    with torch.no_grad():
        hidden = torch.cat([model.model(input_ids=piece).last_hidden_state for piece in input_ids.split(8, dim=1)], 1)
        expected = reference_logits(model, hidden, torch.ones(1, 30))
        torch.testing.assert_close(model(input_ids=input_ids).logits, expected)
        # the same document read whole by the backbone gives different states: chunking really happened
        assert not torch.allclose(model.model(input_ids=input_ids).last_hidden_state, hidden)


def assert_equivalent(backbone_name: str, first: dict, second: dict, batch: int, length: int) -> None:
    """Two head settings on the same weights give the same logits, attention maps and gradients."""
    num_labels = first["num_labels"]
    model_a, model_b = tiny_model(backbone_name, **first), tiny_model(backbone_name, **second)
    model_b.load_state_dict(model_a.state_dict())
    input_ids, labels = random_ids(batch, length, seed=1), torch.randint(0, 2, (batch, num_labels)).float()
    mask = torch.ones_like(input_ids)
    mask[0, length // 2 :] = 0  # right padding
    mask[-1, :3] = 0  # left padding
    out_a = model_a(input_ids=input_ids, attention_mask=mask, labels=labels, output_attentions=True)
    out_b = model_b(input_ids=input_ids, attention_mask=mask, labels=labels, output_attentions=True)
    torch.testing.assert_close(out_b.logits, out_a.logits)
    torch.testing.assert_close(out_b.label_attentions, out_a.label_attentions)
    assert_same_grads(parameter_grads(model_b, out_b.loss), parameter_grads(model_a, out_a.loss))


@pytest.mark.parametrize("inattention_k", [None, 4])
@pytest.mark.parametrize("streaming", [False, True])
def test_label_blocks_equal_unblocked_scores_and_gradients(inattention_k, streaming):
    whole = dict(num_labels=10, inattention_k=inattention_k, chunk_size=8, streaming=streaming, label_value_dim=12)
    assert_equivalent("mistral", whole, dict(whole, label_block_size=3), batch=2, length=21)


@pytest.mark.parametrize("inattention_k", [None, 5])
def test_streaming_equals_attention_over_concatenated_chunks(backbone_name, inattention_k):
    concatenated = dict(num_labels=6, chunk_size=7, inattention_k=inattention_k)
    assert_equivalent(backbone_name, concatenated, dict(concatenated, streaming=True), batch=3, length=26)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_left_right_and_no_padding_give_the_same_logits(backbone_name, chunk_size):
    model = tiny_model(backbone_name, num_labels=5, chunk_size=chunk_size, inattention_k=3)
    documents = [random_ids(1, length, seed=length)[0] for length in (9, 5, 2)]
    alone = torch.cat([model(input_ids=doc[None]).logits for doc in documents])
    width = max(len(doc) for doc in documents)
    for side in ("right", "left"):
        ids = torch.zeros(len(documents), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, doc in enumerate(documents):
            where = slice(0, len(doc)) if side == "right" else slice(width - len(doc), width)
            ids[row, where], mask[row, where] = doc, 1
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        torch.testing.assert_close(out.logits, alone, atol=1e-5, rtol=1e-4, msg=side)
        assert torch.all(out.label_attentions[mask[:, None, :].expand_as(out.label_attentions) == 0] == 0)


@pytest.mark.parametrize("streaming", [False, True])
def test_inattention_with_k_at_least_the_length_is_no_inattention(streaming):
    input_ids = random_ids(2, 12)
    off = tiny_model("phi3", chunk_size=5, streaming=streaming)
    for k in (12, 40):
        on = tiny_model("phi3", chunk_size=5, streaming=streaming, inattention_k=k)
        on.load_state_dict(off.state_dict())
        torch.testing.assert_close(on(input_ids=input_ids).logits, off(input_ids=input_ids).logits)
    small = tiny_model("phi3", chunk_size=5, streaming=streaming, inattention_k=2)
    small.load_state_dict(off.state_dict())
    assert not torch.allclose(small(input_ids=input_ids).logits, off(input_ids=input_ids).logits)
    maps = small(input_ids=input_ids, output_attentions=True).label_attentions
    assert torch.all((maps > 0).sum(-1) == 2)


@pytest.mark.parametrize("inattention_k", [None, 1])
@pytest.mark.parametrize("streaming", [False, True])
def test_empty_document_gives_the_label_bias_without_nan(inattention_k, streaming):
    model = tiny_model("llama", chunk_size=4, streaming=streaming, inattention_k=inattention_k).train()
    with torch.no_grad():
        model.score.label_bias.normal_()
    input_ids = random_ids(2, 9)
    mask = torch.ones_like(input_ids)
    mask[0] = 0
    out = model(input_ids=input_ids, attention_mask=mask, labels=torch.ones(2, 6), output_attentions=True)
    torch.testing.assert_close(out.logits[0], model.score.label_bias)
    assert torch.isfinite(out.logits).all() and torch.all(out.label_attentions[0] == 0)
    assert all(torch.isfinite(grad).all() for grad in parameter_grads(model, out.loss).values())


def test_batch_of_only_empty_documents():
    model = tiny_model("bert")
    out = model(input_ids=random_ids(2, 5), attention_mask=torch.zeros(2, 5), labels=torch.ones(2, 6))
    torch.testing.assert_close(out.logits, model.score.label_bias.expand(2, 6))


def test_very_large_scores_stay_finite():
    model = tiny_model("llama", inattention_k=None).train()
    with torch.no_grad():
        model.score.label_queries.mul_(1e6)
        model.score.salience.weight.mul_(1e6)
    out = model(input_ids=random_ids(2, 10), labels=torch.ones(2, 6))
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(grad).all() for grad in parameter_grads(model, out.loss).values())


def test_softmax_fold_passes_gradcheck_with_masked_tokens_and_empty_documents():
    from plant_hf.modeling_plant import _LabelSoftmaxFold

    batch, tokens, labels = 3, 7, 5
    double = dict(dtype=torch.float64)
    keys, values = torch.randn(batch, tokens, 4, **double), torch.randn(batch, tokens, 6, **double)
    queries, weights = torch.randn(labels, 4, **double), torch.randn(labels, 6, **double)
    salience = torch.randn(batch, tokens, **double)
    salience[1, 4:] = float("-inf")  # padding
    salience[2] = float("-inf")  # an empty document
    running_max = torch.randn(batch, labels, **double)
    running_max[2] = float("-inf")
    total, weighted = torch.rand(batch, labels, **double) + 0.5, torch.randn(batch, labels, **double)
    total[2], weighted[2] = 0.0, 0.0
    inputs = [tensor.requires_grad_() for tensor in (keys, salience, queries, values, weights, total, weighted)]

    def ratio(keys, salience, queries, values, weights, total, weighted):
        _, total, weighted = _LabelSoftmaxFold.apply(keys, salience, queries, values, weights, running_max, total,
                                                     weighted, torch.float64)  # fmt: skip
        return weighted / total.clamp_min(1e-300)

    assert torch.autograd.gradcheck(ratio, inputs)


def test_training_keeps_no_tokens_by_labels_tensor_for_the_backward_pass():
    """Memory of a training step must not grow with tokens x labels: nothing that size is saved for backward."""
    batch, tokens, labels = 2, 48, 300
    model = tiny_model("mistral", num_labels=labels, label_value_dim=8).train()
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=random_ids(batch, tokens), labels=torch.ones(batch, labels)).loss
    loss.backward()
    assert saved and max(saved) < batch * tokens * labels


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_backbone_keeps_an_fp32_head_without_nan(name, dtype):
    model = tiny_model(name, chunk_size=4)
    input_ids, mask = random_ids(2, 10), torch.ones(2, 10)
    mask[1, 3:] = 0
    reference = model(input_ids=input_ids, attention_mask=mask).logits
    model.model.to(dtype)
    out = model(input_ids=input_ids, attention_mask=mask, labels=torch.ones(2, 6))
    assert out.logits.dtype == out.loss.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.logits, reference, atol=0.05, rtol=0.05)


def test_bf16_autocast_runs_the_head_products_in_bf16_and_keeps_fp32_outputs():
    head = tiny_model("llama", num_labels=40, label_block_size=16).score
    hidden_states = torch.randn(3, 12, head.key.in_features)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 5:], mask[2] = False, False  # padding and an empty document

    def logits_and_grads():
        logits, _ = head.finalize(head.fold(head.init_state(3, hidden_states.device), hidden_states, mask))
        head.zero_grad()
        logits.square().sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in head.named_parameters()}

    reference, reference_grads = logits_and_grads()
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.equal(logits_and_grads()[0], reference)  # fp16 would overflow on large scores: fp32 products
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, grads = logits_and_grads()
    assert logits.dtype == torch.float32
    assert not torch.equal(logits, reference)  # the products did run in bf16
    torch.testing.assert_close(logits, reference, atol=0.02, rtol=0.02)
    torch.testing.assert_close(logits[2], head.label_bias.detach())  # the empty document: no NaN, only the bias
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, reference_grads[name], atol=0.02, rtol=0.05, msg=name)


def test_pre_chunked_input_is_encoded_chunk_by_chunk():
    model = tiny_model("qwen2", chunk_size=4)
    flat = random_ids(2, 12)
    chunked = flat.view(2, 3, 4)
    torch.testing.assert_close(model(input_ids=chunked).logits, model(input_ids=flat).logits)
    maps = model(input_ids=chunked, output_attentions=True).label_attentions
    assert maps.shape == (2, 6, 12)


def test_max_chunks_keeps_the_first_chunks_and_warns(caplog):
    limited = tiny_model("llama", chunk_size=4, max_chunks=2)
    unlimited = tiny_model("llama", chunk_size=4)
    input_ids = random_ids(1, 14)
    with caplog.at_level("WARNING"):
        logits = limited(input_ids=input_ids).logits
    assert "max_chunks=2: 6 tokens beyond the limit are ignored" in caplog.text
    torch.testing.assert_close(logits, unlimited(input_ids=input_ids[:, :8]).logits)


def test_inputs_embeds_match_input_ids():
    model = tiny_model("llama", chunk_size=4)
    input_ids, mask = random_ids(2, 10), torch.ones(2, 10, dtype=torch.long)
    mask[0, :2] = 0
    embeds = model.model.get_input_embeddings()(input_ids)
    torch.testing.assert_close(
        model(inputs_embeds=embeds, attention_mask=mask).logits, model(input_ids=input_ids, attention_mask=mask).logits
    )


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model("llama", chunk_size=4).train()
    input_ids, labels = random_ids(2, 10), torch.randint(0, 2, (2, 6)).float()
    plain = parameter_grads(model, model(input_ids=input_ids, labels=labels).loss)
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing and model.model.is_activation_checkpointing
    assert_same_grads(parameter_grads(model, model(input_ids=input_ids, labels=labels).loss), plain)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_implementation_reaches_the_backbone(implementation):
    model = tiny_model("mistral")
    model.set_attn_implementation(implementation)
    assert model.model.config._attn_implementation == implementation
    assert torch.isfinite(model(input_ids=random_ids(1, 6)).logits).all()


def test_labels_of_the_wrong_shape_are_refused():
    model = tiny_model("bert", num_labels=6)
    with pytest.raises(ValueError, match=r"labels must be multi-hot of shape \(batch_size, num_labels\) = \(2, 6\)"):
        model(input_ids=random_ids(2, 5), labels=torch.ones(2, 5))
    for bad in (2.0, -1.0, float("nan")):
        targets = torch.zeros(2, 6)
        targets[1, 3] = bad
        with pytest.raises(ValueError, match=r"labels must be targets in \[0, 1\]"):
            model(input_ids=random_ids(2, 5), labels=targets)
    soft = model(input_ids=random_ids(2, 5), labels=torch.full((2, 6), 0.25)).loss
    assert torch.isfinite(soft)


def test_mismatched_attention_mask_is_refused():
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\), expected \(2, 5\)"):
        tiny_model("bert")(input_ids=random_ids(2, 5), attention_mask=torch.ones(2, 4))


def test_backbone_without_hidden_states_is_named(monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(model.model, "forward", lambda **kwargs: (torch.zeros(1),))
    with pytest.raises(ValueError, match="returned no `last_hidden_state`"):
        model(input_ids=random_ids(1, 5))


def test_backbone_without_an_auto_model_is_named():
    from transformers import PreTrainedConfig

    class NoModelConfig(PreTrainedConfig):
        model_type = "no-model"
        hidden_size: int = 8

    from plant_hf import PlantConfig

    with pytest.raises(ValueError, match="No AutoModel class is registered for backbone config NoModelConfig"):
        PlantForMultiLabelClassification(PlantConfig(text_config=NoModelConfig(), num_labels=2))


@pytest.mark.parametrize("inattention_k", [None, 3])
def test_label_attention_maps_of_chosen_labels_match_the_forward_maps(inattention_k):
    model = tiny_model("llama", num_labels=7, chunk_size=4, inattention_k=inattention_k)
    input_ids, mask = random_ids(2, 11), torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0
    everything = model(input_ids=input_ids, attention_mask=mask, output_attentions=True).label_attentions
    chosen = torch.tensor([[5, 1], [2, -1]])
    maps = model.label_attention_maps(chosen, input_ids, mask)
    torch.testing.assert_close(maps[0], everything[0, [5, 1]])
    torch.testing.assert_close(maps[1, 0], everything[1, 2])
    assert torch.all(maps[1, 1] == 0)  # a padding label attends to nothing


@pytest.mark.parametrize("given", ["token_states", "inputs_embeds"])
def test_nan_or_infinite_inputs_are_refused(given):
    model = tiny_model("llama", num_labels=3)
    values = torch.zeros(2, 5, 32)
    assert torch.isfinite(model(**{given: values}).logits).all()
    for bad in (float("nan"), float("inf")):
        values[1, 2, 7] = bad
        with pytest.raises(ValueError, match=f"{given} hold NaN or infinite values"):
            model(**{given: values})


@pytest.mark.parametrize("streaming", [False, True])
def test_a_long_document_in_one_piece_is_read_as_training_read_its_chunks(streaming):
    """`model(**tokenizer(text))` cuts the text as the tokenizer cuts it into chunks for training, each chunk framed
    by the special tokens, whatever the padding side; its attention comes back onto the input's tokens."""
    from plant_hf.data import PlantDataCollator

    tokenizer = word_tokenizer([f"w{i}" for i in range(4, 100)])
    model = tiny_model(
        "bert", num_labels=5, chunk_size=8, streaming=streaming, chunk_prefix_ids=[1], chunk_suffix_ids=[2]
    )
    long_text, short_text = " ".join(f"w{i}" for i in range(10, 30)), "w40 w41 w42"
    chunks = tokenizer([long_text], truncation=True, max_length=8, return_overflowing_tokens=True)["input_ids"]
    assert len(chunks) == 4 and all(chunk[0] == 1 and chunk[-1] == 2 for chunk in chunks)
    training = PlantDataCollator(num_labels=0, pad_token_id=0)([{"input_ids": chunks}])
    expected = model(**training).logits
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = tokenizer([short_text, long_text], padding=True, return_tensors="pt", return_token_type_ids=False)
        out = model(**batch, output_attentions=True)
        torch.testing.assert_close(out.logits[1], expected[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits[0], model(**tokenizer([short_text], return_tensors="pt")).logits[0])
        weights = out.label_attentions
        assert weights.shape == (2, 5, batch["input_ids"].shape[1])
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
        assert torch.all(weights[~batch["attention_mask"].bool()[:, None, :].expand_as(weights)] == 0)
