"""The label tree: its matcher's beam search, shortlisted scoring, training and saving."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import pipeline

from plant_hf.label_tree import build_label_tree, document_features, pifa_node_weights, tree_tables
from plant_hf.modeling_plant import UNSCORED_LOGIT

from conftest import LabelRowWatch, random_ids, run_without_plant_hf, synthetic_workspace, tiny_model

# Root 0 -> inner nodes 1, 2 -> leaf clusters 3, 4 (under 1) and 5, 6 (under 2), three labels each.
CHILDREN = torch.tensor([[1, 2], [3, 4], [5, 6], [-1, -1], [-1, -1], [-1, -1], [-1, -1]])
LEAF_LABELS = torch.tensor([[-1] * 3, [-1] * 3, [-1] * 3, [0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
TREE = dict(label_tree_nodes=7, label_tree_arity=2, label_tree_leaf_size=3)


def treed_model(shortlist_min_labels: int | None = 1, **head_kwargs):
    model = tiny_model("bert", num_labels=12, shortlist_beam=2, shortlist_min_labels=shortlist_min_labels,
                       **TREE, **head_kwargs)  # fmt: skip
    model.matcher.set_tree(CHILDREN, LEAF_LABELS)
    torch.manual_seed(1)
    with torch.no_grad():
        model.matcher.node_weights.normal_()
        model.matcher.node_bias.normal_()
        model.score.label_weights.normal_()
    return model


def test_the_beam_search_keeps_the_best_paths_at_each_depth():
    model = treed_model()
    embeddings = F.normalize(torch.randn(5, model.matcher.node_weights.shape[1]), dim=-1)
    log_probs = F.logsigmoid(embeddings @ model.matcher.node_weights.T + model.matcher.node_bias)
    nodes, scores = model.matcher.beam_search(embeddings, beam=2)
    for row in range(5):
        p = log_probs[row]
        # Depth 1 keeps both inner nodes (beam 2); depth 2 keeps the two best of the four leaf paths.
        paths = {leaf: p[parent] + p[leaf] for parent, leaf in [(1, 3), (1, 4), (2, 5), (2, 6)]}
        best = sorted(paths, key=lambda leaf: -paths[leaf])[:2]
        assert nodes[row].tolist() == best
        assert scores[row].tolist() == pytest.approx([paths[leaf].item() for leaf in best], abs=1e-5)
    # With beam 1 the search commits to the better inner node first, whatever the leaves below the other.
    nodes, _ = model.matcher.beam_search(embeddings, beam=1)
    for row in range(5):
        inner = 1 if log_probs[row, 1] >= log_probs[row, 2] else 2
        assert nodes[row].item() in {1: (3, 4), 2: (5, 6)}[inner]


def test_a_leaf_above_the_deepest_level_stays_in_the_beam():
    # Root -> leaf 1 (labels 0, 1) and inner node 2 -> leaves 3, 4.
    model = tiny_model("bert", num_labels=6, label_tree_nodes=5, label_tree_arity=2, label_tree_leaf_size=2)
    model.matcher.set_tree(
        torch.tensor([[1, 2], [-1, -1], [3, 4], [-1, -1], [-1, -1]]),
        torch.tensor([[-1, -1], [0, 1], [-1, -1], [2, 3], [4, 5]]),
    )
    with torch.no_grad():
        model.matcher.node_bias.copy_(torch.tensor([0.0, 3.0, 0.0, 1.0, -2.0]))
    embeddings = torch.zeros(1, model.matcher.node_weights.shape[1])
    nodes, scores = model.matcher.beam_search(embeddings, beam=2)
    expected = {
        1: F.logsigmoid(torch.tensor(3.0)),
        3: F.logsigmoid(torch.tensor(0.0)) + F.logsigmoid(torch.tensor(1.0)),
    }
    assert nodes[0].tolist() == [1, 3]
    assert scores[0].tolist() == pytest.approx([expected[1].item(), expected[3].item()], abs=1e-6)
    assert model.matcher.shortlist(embeddings, beam=2).tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("head", [{}, {"context_gate": True}, {"inattention_k": 3}])
def test_shortlisted_logits_equal_the_full_heads_on_the_shortlist(head):
    model = treed_model(**head)
    if "context_gate" in head:
        torch.nn.init.normal_(model.score.label_context_gate)
    ids = random_ids(3, 40)
    shortlisted = model(input_ids=ids).logits
    model.config.shortlist_min_labels = None
    full = model(input_ids=ids).logits
    model.config.shortlist_min_labels = 1
    with torch.no_grad():
        embeddings = model.document_embeddings(input_ids=ids)
    shortlist = model.matcher.shortlist(embeddings, beam=2)
    for row in range(3):
        listed = shortlist[row][shortlist[row] >= 0]
        assert len(listed) == 6
        torch.testing.assert_close(shortlisted[row, listed], full[row, listed], atol=1e-5, rtol=1e-5)
        others = torch.ones(12, dtype=torch.bool)
        others[listed] = False
        assert (shortlisted[row, others] == UNSCORED_LOGIT).all()
        assert (torch.sigmoid(shortlisted[row, others]) < 1e-34).all()


def test_node_targets_mark_the_paths_to_each_positive_label():
    model = treed_model()
    labels = torch.zeros(2, 12)
    labels[0, 1] = 1  # leaf 3 under node 1
    labels[1, [7, 10]] = 1  # leaves 5 and 6 under node 2
    assert model.matcher.node_targets(labels).tolist() == [
        [1, 1, 0, 1, 0, 0, 0],
        [1, 0, 1, 0, 0, 1, 1],
    ]


def test_the_matcher_loss_counts_a_node_only_under_a_positive_parent():
    model = treed_model()
    embeddings = F.normalize(torch.randn(2, model.matcher.node_weights.shape[1]), dim=-1)
    labels = torch.zeros(2, 12)
    labels[0, 4] = 1  # leaf 4: nodes 1 and 4 positive; counted: 1, 2 (root's children) and 3, 4 (under 1)
    labels[1, [4, 10]] = 1  # leaves 4 and 6: nodes 1, 2, 4, 6 positive; counted: 1 to 6
    logits = embeddings @ model.matcher.node_weights.T + model.matcher.node_bias
    counted = [[(1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)], [(1, 1.0), (2, 1.0), (3, 0.0), (4, 1.0), (5, 0.0), (6, 1.0)]]
    by_hand = [
        torch.stack([F.binary_cross_entropy_with_logits(logits[row, n], torch.tensor(t)) for n, t in nodes]).mean()
        for row, nodes in enumerate(counted)
    ]  # each document's mean over its own nodes, then the mean over documents
    torch.testing.assert_close(model.matcher.loss(embeddings, labels), torch.stack(by_hand).mean())


def test_shortlisted_training_scores_positives_hard_and_random_negatives_only():
    model = treed_model(shortlist_negatives=2).train()
    model.model.eval()  # no dropout in the backbone, so that the embeddings below match the forward pass's
    ids = random_ids(2, 30)
    labels = torch.zeros(2, 12)
    labels[0, 0] = labels[1, 11] = 1
    torch.manual_seed(0)
    output = model(input_ids=ids, labels=labels)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    touched = model.score.label_weights.grad.abs().sum(1) > 0
    assert touched[0] and touched[11]  # each positive is scored, wherever the matcher looked
    assert model.matcher.node_weights.grad.abs().sum() > 0
    # The loss is each document's mean binary cross-entropy over its scored labels, averaged over the documents,
    # plus the matcher's.
    scored = (output.logits > UNSCORED_LOGIT).float()
    assert scored[0].sum() != scored[1].sum()  # documents that score different numbers of labels weigh the same
    by_hand = (F.binary_cross_entropy_with_logits(output.logits, labels, reduction="none") * scored).sum(1)
    with torch.no_grad():
        embeddings = model.document_embeddings(input_ids=ids)
    expected = (by_hand / scored.sum(1)).mean() + model.matcher.loss(embeddings, labels)
    torch.testing.assert_close(output.loss, expected, atol=1e-5, rtol=1e-5)
    # In evaluation the labels only give the loss: the scored labels are the shortlist alone.
    model.eval()
    evaluated = model(input_ids=ids, labels=labels).logits > UNSCORED_LOGIT
    shortlist = model.shortlist(embeddings)
    listed = [set(shortlist[row][shortlist[row] >= 0].tolist()) for row in range(2)]
    assert 0 not in listed[0] or 11 not in listed[1]  # a positive the matcher missed stays unscored
    for row in range(2):
        assert set(evaluated[row].nonzero().flatten().tolist()) == listed[row]


def shortlisted_backward(model, sparse: bool) -> dict[str, torch.Tensor]:
    """The label tables' gradients of one shortlisted training step (the same random negatives every call)."""
    model.zero_grad(set_to_none=True)
    model.score.sparse_gradients = sparse
    labels = torch.zeros(2, 12)
    labels[0, 0] = labels[1, 11] = labels[1, 4] = 1
    torch.manual_seed(0)
    model(input_ids=random_ids(2, 30), labels=labels).loss.backward()
    return {name: getattr(model.score, name).grad for name in ("label_queries", "label_weights")}


def test_sparse_label_gradients_are_the_dense_ones_on_the_rows_read():
    model = treed_model(shortlist_negatives=2).train()
    model.model.eval()
    dense = shortlisted_backward(model, sparse=False)
    sparse = shortlisted_backward(model, sparse=True)
    for name, gradient in sparse.items():
        assert gradient.is_sparse and not dense[name].is_sparse
        torch.testing.assert_close(gradient.to_dense(), dense[name], atol=1e-6, rtol=1e-5)
        read = set(gradient.coalesce().indices()[0].tolist())
        assert {0, 4, 11} <= read and len(read) < 12  # positives always; not every label
    assert model.score.label_bias.grad is not None and not model.score.label_bias.grad.is_sparse


def test_plant_trainer_moves_only_the_label_rows_a_step_read_and_resumes_its_optimizer(tmp_path):
    from plant_hf.data import PlantDataCollator
    from plant_hf.training.trainer import PlantTrainer, PlantTrainingArguments, WithSparseAdam, clip_gradient_norm

    model = treed_model(shortlist_negatives=1)
    documents = [{"input_ids": random_ids(1, 20, seed=i)[0].tolist(), "label_ids": [i % 12]} for i in range(6)]
    args = PlantTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=6, warmup_steps=0, report_to=[],
        use_cpu=True, save_strategy="no", eval_strategy="no", load_best_model_at_end=False, max_grad_norm=1e-3,
    )  # fmt: skip
    watch = LabelRowWatch()
    trainer = PlantTrainer(model=model, args=args, train_dataset=documents, callbacks=[watch],
                           data_collator=PlantDataCollator(num_labels=12, pad_token_id=0))  # fmt: skip
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, WithSparseAdam)
    # Lazy: a row read by an earlier step keeps still in a step that does not read it (Adam's momentum would move it).
    assert len(watch.steps) == 6 and all(moved and moved <= read for read, moved in watch.steps)
    assert any(read != set(range(12)) for read, _ in watch.steps)
    state = trainer.optimizer.state_dict()
    assert len(state["sparse"]["state"]) == 2  # the moments of the label queries and label weights
    fresh = PlantTrainer(model=model, args=args, train_dataset=documents,
                         data_collator=PlantDataCollator(num_labels=12, pad_token_id=0)).create_optimizer()  # fmt: skip
    fresh.load_state_dict(state)
    assert fresh.param_groups[-1] is fresh.sparse.param_groups[-1]  # a scheduler reaches the loaded groups
    loaded = fresh.state_dict()["sparse"]["state"]
    torch.testing.assert_close(loaded[0]["exp_avg"], state["sparse"]["state"][0]["exp_avg"])
    # The clip spans dense and sparse gradients: the norm of all of them together.
    dense = shortlisted_backward(model, sparse=False)
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    shortlisted_backward(model, sparse=True)
    norm = clip_gradient_norm(model.parameters(), 0.5)
    torch.testing.assert_close(norm, expected, atol=1e-5, rtol=1e-5)
    scale = 0.5 / (expected + 1e-6)
    torch.testing.assert_close(model.score.label_weights.grad.to_dense(), dense["label_weights"] * scale)


def test_below_the_shortlist_label_count_the_head_scores_every_label_and_still_trains_the_matcher():
    model = treed_model(shortlist_min_labels=13)
    assert not model.shortlisting
    labels = torch.zeros(2, 12)
    labels[:, 3] = 1
    output = model(input_ids=random_ids(2, 30), labels=labels)
    assert (output.logits > UNSCORED_LOGIT).all()
    output.loss.backward()
    assert model.matcher.node_weights.grad.abs().sum() > 0
    assert (model.score.label_weights.grad.abs().sum(1) > 0).all()


def test_a_tree_of_another_size_is_refused():
    model = treed_model()
    with pytest.raises(ValueError, match="A tree of 5 nodes does not fit a matcher of 7 nodes"):
        model.matcher.set_tree(CHILDREN[:5], LEAF_LABELS[:5])


def test_a_saved_tree_reloads_and_predicts_identically_also_through_remote_code(tmp_path):
    from plant_hf import PlantForMultiLabelClassification

    model = treed_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    reloaded = PlantForMultiLabelClassification.from_pretrained(folder).eval()
    assert torch.equal(reloaded.matcher.node_children, CHILDREN)
    assert torch.equal(reloaded.matcher.leaf_labels, LEAF_LABELS)
    ids = random_ids(2, 25)
    expected = model(input_ids=ids).logits
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected)
    result = run_without_plant_hf(
        f"""
        import json, torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model.matcher).__name__ == "PlantLabelMatcher" and model.shortlisting
        with torch.no_grad():
            print(json.dumps(model(input_ids=torch.tensor({ids.tolist()!r})).logits.tolist()))
        """,
        tmp_path,
    )
    remote = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(remote, expected)


def clustered_corpus(num_labels: int = 40, documents: int = 400, seed: int = 0):
    """Documents of one topic each, carrying two labels of that topic, whose features are its topic vector plus
    noise: the labels of a topic belong together (label l is of topic l mod 4)."""
    generator = np.random.default_rng(seed)
    topics = generator.normal(size=(4, 16))
    label_topic = np.arange(num_labels) % 4
    label_ids, embeddings = [], []
    for _ in range(documents):
        topic = int(generator.integers(4))
        label_ids.append(sorted({topic + 4 * int(generator.integers(num_labels // 4)) for _ in range(2)}))
        embeddings.append(topics[topic] + 0.1 * generator.normal(size=16))
    return np.stack(embeddings).astype(np.float32), label_ids, label_topic


def test_tree_building_is_balanced_and_deterministic_with_a_seed():
    embeddings, label_ids, label_topic = clustered_corpus()
    features = document_features(embeddings)
    first = build_label_tree(features, label_ids, 40, arity=2, leaf_size=10, seed=3)
    assert build_label_tree(features, label_ids, 40, arity=2, leaf_size=10, seed=3) == first
    children, leaf_labels = tree_tables(first, 40)
    sizes = sorted((leaf_labels >= 0).sum(1)[(leaf_labels >= 0).any(1)].tolist())
    assert sizes == [10, 10, 10, 10]  # 40 labels, binary splits of equal halves down to 10
    # Labels of one topic share their documents' features: the clusters follow the topics.
    for row in leaf_labels[(leaf_labels >= 0).any(1)]:
        assert len(set(label_topic[row[row >= 0].numpy()])) == 1
    assert children.shape == (7, 2) and (children[0] == torch.tensor([1, 2])).all()


def test_labels_without_training_documents_still_get_a_leaf():
    embeddings, label_ids, _ = clustered_corpus(num_labels=40)
    label_ids = [[label for label in labels if label < 30] or [0] for labels in label_ids]
    _, leaf_labels = tree_tables(build_label_tree(document_features(embeddings), label_ids, 40, 2, 10), 40)
    assert sorted(leaf_labels[leaf_labels >= 0].tolist()) == list(range(40))


def test_tree_tables_refuse_a_tree_that_misses_or_repeats_labels():
    structure = [(-1, 0, -1), (0, 1, -1), (0, 2, -1), (1, 3, 0), (1, 4, 1), (2, 5, 1)]
    with pytest.raises(ValueError, match="each of the 3 labels once; it holds 3 labels, 2 of them distinct"):
        tree_tables(structure, 3)
    with pytest.raises(ValueError, match="one root; this one has 2"):
        tree_tables([(-1, 0, -1), (-1, 1, -1)], 1)
    children, leaf_labels = tree_tables([*structure[:5], (2, 5, 2)], 3)
    assert children.tolist() == [[1, 2], [-1, -1], [-1, -1]]
    assert leaf_labels.tolist() == [[-1, -1], [0, 1], [2, -1]]


def test_pifa_centroids_sum_each_document_once_per_node():
    embeddings = torch.eye(4)
    # Document 0 carries labels 0 and 1 (both under node 3), document 1 label 6, document 2 labels 0 and 9.
    label_ids = [[0, 1], [6], [0, 9]]
    weights = pifa_node_weights(embeddings[:3], label_ids, CHILDREN, LEAF_LABELS)
    assert weights[3].tolist() == pytest.approx((torch.tensor([1.0, 0, 1, 0]) / 2**0.5).tolist())
    assert weights[1].tolist() == pytest.approx((torch.tensor([1.0, 0, 1, 0]) / 2**0.5).tolist())
    assert weights[2].tolist() == pytest.approx((torch.tensor([0, 1.0, 1, 0]) / 2**0.5).tolist())
    assert weights[4].tolist() == [0.0] * 4


def test_a_tree_must_hold_every_label_of_the_model():
    model = tiny_model("bert", num_labels=13)
    with pytest.raises(ValueError, match="each of this model's 13 labels once"):
        model.set_label_tree(CHILDREN, LEAF_LABELS)
    model = tiny_model("bert", num_labels=12)
    model.set_label_tree(CHILDREN, LEAF_LABELS, node_weights=torch.ones(7, model.config.text_config.hidden_size))
    assert (model.config.label_tree_nodes, model.config.label_tree_arity, model.config.label_tree_leaf_size) == (
        7,
        2,
        3,
    )
    assert (model.matcher.node_weights == 1).all()


def test_the_shortlist_holds_the_labels_of_the_memorys_nearest_training_documents():
    from plant_hf.modeling_plant import PlantDocumentMemory

    model = treed_model()
    ids = random_ids(1, 30)
    with torch.no_grad():
        embeddings = model.document_embeddings(input_ids=ids)
    beam = set(model.matcher.shortlist(embeddings, beam=2)[0].tolist())
    outside = sorted(set(range(12)) - beam)[:2]
    # Two entries: the document itself, carrying two labels the beam missed, and a far one.
    keys = torch.cat([embeddings, -embeddings])
    model.set_memory(PlantDocumentMemory.from_entries(keys, [outside, [outside[0]]], 12, top_k=1, temperature=0.05))
    logits = model(input_ids=ids).logits[0]  # memory weight 0: the head's logits, the unscored at the least
    scored = set((logits > UNSCORED_LOGIT).nonzero().flatten().tolist())
    assert scored == beam | set(outside)
    # With the memory mixed in, its scores (computed once for the shortlist and the mixture) enter as the formula says.
    model.config.memory_weight = 0.5
    mixed = model(input_ids=ids).logits[0]
    torch.testing.assert_close(mixed, model.memory.fuse(logits.unsqueeze(0), embeddings, 0.5)[0])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sizes = {"train": 160, "dev": 40, "test": 40}
    return synthetic_workspace(tmp_path_factory.mktemp("tree"), sizes, num_labels=8, length=(20, 50))


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_fit_builds_the_tree_trains_its_matcher_and_saves_a_shortlisting_model(corpus, tmp_path, mode):
    from safetensors.torch import load_file

    from plant_hf import PlantForMultiLabelClassification
    from plant_hf.recipe import PlantArguments, fit
    from plant_hf.training.trainer import PlantTrainingArguments

    run = tmp_path / "run"
    args = PlantArguments(
        data=str(corpus / "corpus"), backbone=str(corpus / "bert"), chunk_size=32, max_chunks=2, mig_top_k=16,
        ranker_epochs=1, backbone_mode=mode, label_tree="on", label_tree_arity=2, label_tree_leaf_size=2,
        shortlist_beam=2, shortlist_min_labels=1, shortlist_negatives=1, memory=False, lexical=False,
    )  # fmt: skip
    training = PlantTrainingArguments(output_dir=str(run), use_cpu=True, disable_tqdm=True, num_train_epochs=2,
                                      per_device_train_batch_size=8, seed=0)  # fmt: skip
    report = fit(args, training)
    # From shortlist_min_labels (here 1) on, the ranker's label tables take sparse gradients as the head's do.
    ranker = json.loads((run / "ranker" / "ranker_config.json").read_text())["metrics"]["contextual"]
    assert ranker["sparse_label_tables"] == 2
    assert json.loads((run / "finetuning_summary.json").read_text())["sparse_label_tables"] == 2
    tree = load_file(run / "label_tree" / "label_tree.safetensors")
    assert sorted(tree["leaf_labels"][tree["leaf_labels"] >= 0].tolist()) == list(range(8))
    model = PlantForMultiLabelClassification.from_pretrained(run / "model")
    assert model.shortlisting and torch.equal(model.matcher.leaf_labels, tree["leaf_labels"])
    assert not torch.allclose(model.matcher.node_weights, tree["node_weights"], atol=1e-3)  # trained with the head
    assert report["documents"] == 40 and report["P@1"] > 0
    assert report["label_tree"]["shortlisting"] and 2 <= report["label_tree"]["shortlist_size"] <= 4
    assert 0 < report["label_tree"]["recall"] <= 1
    predictions = [json.loads(line) for line in (run / "eval" / "test_predictions.jsonl").read_text().splitlines()]
    assert all(record["scores"][0] > 0 for record in predictions)
    card = (run / "model" / "README.md").read_text()
    assert "the matcher, trained with the head, keeps 2 leaf clusters a document; the head scores only" in card
    assert f"held {100 * report['label_tree']['recall']:.1f}% of the documents' labels" in card
    if mode == "frozen":  # both pipelines shortlist, and agree
        text = json.loads((corpus / "corpus" / "test.jsonl").read_text().splitlines()[0])["text"]
        xmc = pipeline("xmc-classification", model=str(run / "model"))(text, top_k=None)
        text_classification = pipeline("text-classification", model=str(run / "model"), top_k=None)([text])[0]
        scored = {entry["label"]: entry["score"] for entry in xmc if entry["score"] > 1e-30}
        assert 2 <= len(scored) < 8
        assert {entry["label"]: entry["score"] for entry in text_classification if entry["score"] > 1e-30} == (
            pytest.approx(scored, abs=1e-6)
        )
