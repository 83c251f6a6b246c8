"""Rare-label mechanisms, each checked by hand on a tiny model."""

import math

import torch

from plant_hf.cache import CachedDocumentCollator
from plant_hf.planting.prototypes import PROTOTYPE_MARGIN, initialize_label_weights, label_prototypes

from conftest import tiny_model


def cached_documents(count: int, labels: list[list[int]], hidden: int = 32, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    lengths = [3 + (i * 5) % 7 for i in range(count)]
    return [
        {"token_states": torch.randn(n, hidden, generator=generator), "input_ids": torch.arange(n), "label_ids": y}
        for n, y in zip(lengths, labels, strict=True)
    ]


def context_by_hand(model, states: torch.Tensor, label: int) -> torch.Tensor:
    """sum_t softmax_t(K_t . U_l + g_t) H_t, written out."""
    attention = model.score
    scores = states @ attention.key.weight.T @ attention.label_queries[label] + states @ attention.salience.weight[0]
    return torch.softmax(scores, dim=0) @ states


def test_prototype_initialisation_reproduces_the_mean_context_of_a_labels_documents():
    model = tiny_model("bert", num_labels=4)
    # Label 0 in documents 0 and 3, label 1 in document 1 only, label 2 in every third, label 3 in the rest.
    labels = [[0, 2], [1], [3], [0, 2, 3], [3], [3], [2], [3]]
    documents = cached_documents(8, labels)
    prototypes = label_prototypes(model, documents, CachedDocumentCollator(), batch_size=3, progress=False)
    with torch.no_grad():
        expected = (context_by_hand(model, documents[0]["token_states"], 0)
                    + context_by_hand(model, documents[3]["token_states"], 0)) / 2  # fmt: skip
        torch.testing.assert_close(prototypes.positive_mean[0], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            prototypes.positive_mean[1], context_by_hand(model, documents[1]["token_states"], 1), rtol=1e-5, atol=1e-6
        )
        # Eight documents are fewer than the reference sample: the reference is the mean over all of them.
        assert prototypes.reference_documents == 8
        everywhere = torch.stack([context_by_hand(model, d["token_states"], 1) for d in documents])
        torch.testing.assert_close(prototypes.reference_mean[1], everywhere.mean(0), rtol=1e-5, atol=1e-6)
    assert prototypes.positive_count.tolist() == [2.0, 1.0, 3.0, 5.0]

    initialize_label_weights(model.score, prototypes, label_counts=[2, 1, 3, 5], num_documents=8)
    collate = CachedDocumentCollator()
    with torch.no_grad():
        logits = model(**collate([{k: v for k, v in documents[1].items() if k != "label_ids"}])).logits[0]
        # The one document of label 1 sits on its prototype: above the label's prior log-odds by half the class-mean
        # classifier's margin (squared distance over variance), or by half the margin where that is smaller.
        distance = (prototypes.positive_mean[1] - prototypes.reference_mean[1]).square().sum()
        variance = ((everywhere - everywhere.mean(0)) ** 2).mean()
        torch.testing.assert_close(prototypes.reference_variance[1], variance, rtol=1e-4, atol=1e-6)
        rise = torch.clamp(distance / variance, max=PROTOTYPE_MARGIN)
        torch.testing.assert_close(logits[1], rise / 2 + math.log(1 / 7), rtol=1e-4, atol=1e-4)
        # A label's logit is its context read through its weights, plus its bias.
        states = documents[1]["token_states"][None]
        mask = torch.ones(states.shape[:2], dtype=torch.bool)
        contexts = model.score.label_contexts(states, mask, torch.arange(4)[None])[0]
        attention = model.score
        torch.testing.assert_close(
            logits, (contexts * attention.label_weights).sum(-1) + attention.label_bias, rtol=1e-5, atol=1e-5
        )


def test_label_weights_start_the_same_whatever_the_block_of_labels_computed_at_once(monkeypatch):
    import plant_hf.planting.prototypes as prototypes_module

    model = tiny_model("bert", num_labels=7)
    labels = [[0, 2], [1], [3, 6], [0, 2, 3], [4], [5], [2], [3]]
    prototypes = label_prototypes(model, cached_documents(8, labels), CachedDocumentCollator(), progress=False)
    counts = [2, 1, 3, 3, 1, 1, 1]
    initialize_label_weights(model.score, prototypes, label_counts=counts, num_documents=8)
    whole = model.score.label_weights.detach().clone(), model.score.label_bias.detach().clone()
    model.score.label_weights.data.zero_()
    model.score.label_bias.data.zero_()
    monkeypatch.setattr(prototypes_module, "_INIT_BLOCK", 3)  # blocks of 3, 3 and 1 labels
    initialize_label_weights(model.score, prototypes, label_counts=counts, num_documents=8)
    torch.testing.assert_close(model.score.label_weights, whole[0], rtol=0, atol=0)
    torch.testing.assert_close(model.score.label_bias, whole[1], rtol=0, atol=0)


def test_prior_bias_initialisation_is_each_labels_log_odds():
    from plant_hf.planting.prototypes import initialize_label_bias

    model = tiny_model("bert", num_labels=3)
    initialize_label_bias(model.score, label_counts=[1, 5, 10], num_documents=20)
    expected = torch.tensor([math.log(1 / 19), math.log(5 / 15), 0.0])
    torch.testing.assert_close(model.score.label_bias.detach(), expected)


def test_context_gate_mixes_each_labels_attention_context_with_the_documents_mean_state():
    from plant_hf.planting.prototypes import initialize_context_gates

    gated = tiny_model("bert", num_labels=4, context_gate=True)
    initialize_context_gates(gated.score, label_counts=[1, 5, 45, 0])
    gates = gated.score.context_gates()
    # g = max(1/2, k / (k + n)) with k = 5; a label with no documents stops short of 1, where the sigmoid would pass
    # no gradient.
    torch.testing.assert_close(gates[:3], torch.tensor([5 / 6, 0.5, 0.5]))
    assert 0.999 < gates[3] < 1.0
    plain = tiny_model("bert", num_labels=4)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "score.label_context_gate"})

    documents = cached_documents(2, [[0], [1, 2]])
    batch = CachedDocumentCollator()([{k: v for k, v in d.items() if k != "label_ids"} for d in documents])
    attention = gated.score
    with torch.no_grad():
        logits = gated(**batch).logits
        attended = plain(**batch).logits - attention.label_bias
        for row, document in enumerate(documents):
            # The padding of the shorter document stays out of its mean.
            mean = document["token_states"].mean(0)
            expected = (1 - gates) * attended[row] + gates * (attention.label_weights @ mean) + attention.label_bias
            torch.testing.assert_close(logits[row], expected, rtol=1e-5, atol=1e-5)
        # What prototypes are built from is what the logits read.
        contexts = attention.label_contexts(
            batch["token_states"], batch["attention_mask"], torch.arange(4).expand(2, 4)
        )
        torch.testing.assert_close(
            logits, (contexts * attention.label_weights).sum(-1) + attention.label_bias, rtol=1e-5, atol=1e-5
        )
        # Chunk by chunk (streaming over the backbone) the gate reads the same mean.
        ids = torch.randint(4, 100, (2, 20))
        gated.config.chunk_size = 8
        flat = gated(input_ids=ids).logits
        gated.config.streaming = True
        torch.testing.assert_close(gated(input_ids=ids).logits, flat, rtol=1e-4, atol=1e-4)


def test_positive_weighting_weighs_each_labels_positive_term_and_averages_over_the_accumulated_batch(tmp_path):
    from torch.nn import functional as F

    from plant_hf.metrics import inverse_propensities
    from plant_hf.training.trainer import PlantTrainer, PlantTrainingArguments, positive_weighted_loss

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    weights = torch.tensor([1.0, 4.0, 2.0])
    by_hand = sum(
        -(weights[j] * targets[d, j] * math.log(torch.sigmoid(logits[d, j]))
          + (1 - targets[d, j]) * math.log(1 - torch.sigmoid(logits[d, j])))
        for d in range(2) for j in range(3)
    ) / 6  # fmt: skip
    loss = positive_weighted_loss(weights)
    torch.testing.assert_close(loss({"logits": logits}, targets), torch.tensor(float(by_hand)))
    # Under gradient accumulation Trainer passes the count of targets of the whole accumulated batch.
    torch.testing.assert_close(loss({"logits": logits}, targets, num_items_in_batch=12), torch.tensor(by_hand / 2))
    unweighted = positive_weighted_loss(torch.ones(3))({"logits": logits}, targets)
    torch.testing.assert_close(unweighted, F.binary_cross_entropy_with_logits(logits, targets))
    # A label seen once weighs about as many positives as its inverse propensity says; a frequent one about one.
    rare, frequent = inverse_propensities([1, 5000], num_documents=8000)
    assert 8 < rare < 10 and 1 < frequent < 1.2

    # Trainer steps on two documents at once or one at a time with two accumulated steps: the same update.
    labels = [[0, 2], [1]]
    documents = cached_documents(2, labels)
    collate = CachedDocumentCollator(num_labels=3)
    trained = []
    for batch_size, accumulation in ((2, 1), (1, 2)):
        model = tiny_model("bert", num_labels=3)
        model.model.requires_grad_(False)
        arguments = PlantTrainingArguments(
            output_dir=str(tmp_path / f"b{batch_size}"), per_device_train_batch_size=batch_size, max_steps=1,
            gradient_accumulation_steps=accumulation, learning_rate=0.1, warmup_steps=0, report_to=[],
            use_cpu=True, save_strategy="no", eval_strategy="no", load_best_model_at_end=False, seed=0,
            lr_scheduler_type="constant", optim="sgd",
        )  # fmt: skip
        trainer = PlantTrainer(
            model=model, args=arguments, train_dataset=documents, data_collator=collate,
            compute_loss_func=positive_weighted_loss(weights),
        )  # fmt: skip
        trainer.train()
        trained.append(model.score.label_weights.detach().clone())
    torch.testing.assert_close(trained[0], trained[1], rtol=1e-5, atol=1e-6)
