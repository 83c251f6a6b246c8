"""Planting: MIG tables, rankers, and the transplant into a classifier."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from plant_hf import PlantConfig, PlantForMultiLabelClassification
from plant_hf.data.synthetic import write_synthetic_corpus
from plant_hf.planting import ArtifactMismatchError, MIGTable, build_mig_table
from plant_hf.planting.mig import normalized_mutual_information, rank_grades
from plant_hf.planting.ranking import approx_ndcg_loss, listwise_loss, ndcg_at_k
from plant_hf.planting.transplant import load_ranker, plant
from plant_hf.recipe import PlantArguments, build_mig, pretrain
from plant_hf.recipe.ranker import ranker_learning_rate
from plant_hf.training.trainer import PlantTrainingArguments

from conftest import LabelRowWatch, save_backbone, synthetic_corpus_words, tiny_backbone, tiny_model, word_tokenizer


def mi_from_table(n11, n10, n01, n00):
    """Mutual information of a 2x2 table written out cell by cell, and its Jaccard normalisation."""
    n = n11 + n10 + n01 + n00
    cells = [
        (n11, n11 + n10, n11 + n01),
        (n10, n11 + n10, n10 + n00),
        (n01, n01 + n00, n11 + n01),
        (n00, n01 + n00, n10 + n00),
    ]
    mi = sum(c / n * math.log((c / n) / ((a / n) * (b / n))) for c, a, b in cells if c)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0  # noqa: E731
    return mi / (h((n11 + n10) / n) + h((n11 + n01) / n) - mi)


def test_mig_equals_the_2x2_computation_on_a_hand_checkable_case():
    words = ["alpha", "beta", "gamma", "delta"]
    tokenizer = word_tokenizer(words)
    texts = ["alpha beta", "alpha gamma", "alpha beta delta", "gamma delta", "beta", "gamma gamma"]
    labels = [["X"], ["X"], ["X", "Y"], ["Y"], [], ["Y"]]
    table = build_mig_table(texts, labels, tokenizer, top_k=10, progress=False)
    x = table.config.labels.index("X")
    tokens, scores, _ = table.label_tokens(x)
    got = {tokenizer.convert_ids_to_tokens(int(t)): float(s) for t, s in zip(tokens, scores, strict=True)}
    # alpha: in 3 docs, all labelled X (of 3 X docs) -> n11=3, n10=0, n01=0, n00=3
    assert got["alpha"] == pytest.approx(mi_from_table(3, 0, 0, 3)) == pytest.approx(1.0)
    # beta: docs 0, 2, 4; X docs 0, 1, 2 -> n11=2, n10=1, n01=1, n00=2
    assert got["beta"] == pytest.approx(mi_from_table(2, 1, 1, 2))
    # gamma (docs 1, 3, 5) is rarer in X documents than elsewhere: not evidence for X
    assert "gamma" not in got and "delta" not in got
    y_tokens = {tokenizer.convert_ids_to_tokens(int(t)) for t in table.label_tokens(table.config.labels.index("Y"))[0]}
    assert y_tokens == {"gamma", "delta"}
    np.testing.assert_allclose(
        normalized_mutual_information(np.array([2]), np.array([3]), np.array([3]), 6), [mi_from_table(2, 1, 1, 2)]
    )


def test_grades_are_monotone_in_mig_and_finer_at_the_top():
    corpus = synthetic_corpus_records(300)
    tokenizer = word_tokenizer(synthetic_corpus_words())
    table = build_mig_table(
        [r["text"] for r in corpus], [r["labels"] for r in corpus], tokenizer, top_k=64, progress=False
    )
    for label in range(table.num_labels):
        _, scores, grades = table.label_tokens(label)
        assert np.all(np.diff(scores) <= 0)
        assert np.all(np.diff(grades) <= 0)
        for value in np.unique(scores):
            assert len(set(grades[scores == value])) == 1  # tied MIG, same grade
    assert rank_grades(np.arange(8), np.full(8, 8), 4).tolist() == [4, 3, 2, 2, 1, 1, 1, 1]
    top = rank_grades(np.arange(256), np.full(256, 256), 8)
    assert np.bincount(top, minlength=9).tolist() == [0, 128, 64, 32, 16, 8, 4, 2, 2]


def synthetic_corpus_records(count):
    from plant_hf.data.synthetic import synthetic_records

    return synthetic_records(count, num_labels=12)


def test_lookup_grades_matches_the_table():
    corpus = synthetic_corpus_records(200)
    tokenizer = word_tokenizer(synthetic_corpus_words())
    table = build_mig_table(
        [r["text"] for r in corpus], [r["labels"] for r in corpus], tokenizer, top_k=16, progress=False
    )
    tokens, _, grades = table.label_tokens(3)
    assert table.lookup_grades(torch.as_tensor(tokens), 3).tolist() == grades.tolist()
    absent = np.setdiff1d(np.arange(50), tokens)[:5]
    assert table.lookup_grades(torch.as_tensor(absent), 3).tolist() == [0] * 5


def test_mig_table_round_trips_and_refuses_other_tokenizers_and_labels(tmp_path):
    corpus = synthetic_corpus_records(100)
    words = synthetic_corpus_words()
    tokenizer = word_tokenizer(words)
    table = build_mig_table([r["text"] for r in corpus], [r["labels"] for r in corpus], tokenizer, progress=False)
    table.save(tmp_path)
    loaded = MIGTable.load(tmp_path)
    assert loaded.config == table.config
    np.testing.assert_array_equal(loaded.token_ids, table.token_ids)
    loaded.check_compatible(tokenizer, table.config.labels)
    with pytest.raises(ArtifactMismatchError, match="splits text differently"):
        loaded.check_compatible(word_tokenizer(list(reversed(words))))
    with pytest.raises(ArtifactMismatchError, match="Rebuild it from this training split"):
        loaded.check_compatible(tokenizer, [*table.config.labels[:-1], "another label"])


def options(root, **overrides) -> PlantArguments:
    """The recipe's options for the planting tests: the tiny corpus and backbone, short chunks, few epochs."""
    defaults = dict(data=str(root / "corpus"), backbone=str(root / "backbone"), chunk_size=64, max_chunks=4,
                    prior_rank=8, mig_top_k=32, ranker_epochs=6, ranker_learning_rate=2e-2)  # fmt: skip
    return PlantArguments(**{**defaults, **overrides})


def run_folder(path) -> PlantTrainingArguments:
    return PlantTrainingArguments(output_dir=str(path), seed=0, use_cpu=True, report_to=[])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("planting")
    write_synthetic_corpus(root / "corpus", {"train": 240, "dev": 60, "test": 60}, num_labels=16)
    save_backbone(root / "backbone")
    build_mig(options(root), run_folder(root / "run"))
    return root


def pretrain_ranker(root, name, **overrides):
    return pretrain(options(root, **overrides), run_folder(root / name))


def test_mig_never_reads_dev_or_test_documents(workspace, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text((workspace / "corpus" / "train.jsonl").read_text())
    other = write_synthetic_corpus(tmp_path / "other", {"dev": 60, "test": 60}, num_labels=16, seed=7)
    for split in ("dev", "test"):
        (corpus / f"{split}.jsonl").write_text((other / f"{split}.jsonl").read_text())
    build_mig(options(workspace, data=str(corpus)), run_folder(tmp_path / "run"))
    same = MIGTable.load(tmp_path / "run" / "mig")
    reference = MIGTable.load(workspace / "run" / "mig")
    np.testing.assert_array_equal(same.token_ids, reference.token_ids)
    np.testing.assert_array_equal(same.scores, reference.scores)


@pytest.fixture(scope="module")
def contextual_ranker(workspace):
    return pretrain_ranker(workspace, "ranker", planting="contextual", cache_dir=str(workspace / "cache"))


def test_contextual_ranker_ndcg_rises_and_beats_random_init(contextual_ranker):
    metrics = load_ranker(contextual_ranker).config.metrics["contextual"]
    assert metrics["loss"] == "listwise"  # fit's default, recorded with the ranker (the card names it)
    curve = [entry["eval_ndcg"] for entry in metrics["history"] if "eval_ndcg" in entry]
    assert len(curve) == metrics["epochs"] <= 6 and max(curve) > curve[0]
    assert metrics["trained"] == pytest.approx(max(curve), abs=1e-6)  # the best epoch is the one planted
    assert metrics["trained"] > metrics["random_init"] + 0.2


def test_static_ranker_learns_from_the_mig_table_alone(workspace):
    folder = pretrain_ranker(workspace, "static-ranker", planting="static", ranker_static_epochs=30)
    ranker = load_ranker(folder)
    assert set(ranker.state) == {"prior_token_factors", "prior_token_bias", "prior_label_factors"}
    metrics = ranker.config.metrics["static"]
    assert metrics["trained"] > metrics["random_init"] + 0.3


def test_a_ranker_at_many_labels_moves_only_the_label_rows_each_step_reads(tmp_path):
    from plant_hf.planting.ranking import DocumentRanker
    from plant_hf.training.trainer import PlantTrainer, WithSparseAdam

    def collate(items):  # each document's one label, padded to three: padding in every batch
        labels = torch.full((len(items), 3), -1)
        labels[:, 0] = torch.tensor([item["label"] for item in items])
        grades = torch.zeros(len(items), 3, 8, dtype=torch.long)
        grades[:, 0, :3] = torch.tensor([3, 2, 1])
        return {"token_states": torch.stack([item["states"] for item in items]), "label_ids": labels,
                "grades": grades, "attention_mask": torch.ones(len(items), 8, dtype=torch.long)}  # fmt: skip

    model = tiny_model("bert", num_labels=12)
    torch.manual_seed(0)
    documents = [{"states": torch.randn(8, 32), "label": index} for index in range(6)]  # label 0 in one document
    ranker = DocumentRanker(model.score, sparse_label_tables=True)
    args = PlantTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_train_epochs=3, warmup_steps=0, report_to=[],
        use_cpu=True, save_strategy="no", eval_strategy="no", load_best_model_at_end=False,
        remove_unused_columns=False, train_sampling_strategy="random", learning_rate=1e-2,
    )  # fmt: skip
    watch = LabelRowWatch()
    trainer = PlantTrainer(model=ranker, args=args, train_dataset=documents, data_collator=collate, callbacks=[watch])
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, WithSparseAdam) and watch.sparse
    # Lazy, and padding reads no row: label 0's row moves only in the steps whose documents carry it.
    assert len(watch.steps) == 9 and all(moved and moved <= read for read, moved in watch.steps)
    assert sum(0 in read for read, _ in watch.steps) == 3 and all(len(read) == 2 for read, _ in watch.steps)


def test_transplanted_attention_scores_like_the_ranker(workspace, contextual_ranker):
    ranker = load_ranker(contextual_ranker)
    labels = ranker.config.labels
    # the classifier lists the labels in another order than the ranker: planting must follow the names
    shuffled = [labels[i] for i in np.random.default_rng(0).permutation(len(labels))]
    model = PlantForMultiLabelClassification.from_backbone(
        str(workspace / "backbone"), id2label=dict(enumerate(shuffled)), chunk_size=64
    ).eval()
    planted = plant(model, ranker)
    assert planted == ["key.weight", "label_queries", "salience.weight"]
    ranking_attention = PlantForMultiLabelClassification.from_backbone(
        str(workspace / "backbone"), id2label=dict(enumerate(labels)), chunk_size=64
    ).score
    ranking_attention.load_state_dict(ranker.state, strict=False)
    ids = torch.randint(4, 200, (2, 1, 20))
    states = model.encode(ids, torch.ones_like(ids))
    label_names = [labels[3], labels[7]]
    by_ranker = ranking_attention.document_label_scores(
        states.hidden_states, states.attention_mask, torch.tensor([[3, 7]] * 2)
    )
    by_model = model.score.document_label_scores(
        states.hidden_states, states.attention_mask, torch.tensor([[shuffled.index(n) for n in label_names]] * 2)
    )
    torch.testing.assert_close(by_model, by_ranker)
    # the forward pass attends with exactly those scores
    maps = model(input_ids=ids, output_attentions=True).label_attentions
    torch.testing.assert_close(maps[:, shuffled.index(labels[3])], torch.softmax(by_ranker[:, 0], dim=-1))


def test_the_listwise_ranker_plants_an_attention_that_reads_more_than_one_token(workspace, contextual_ranker):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(workspace / "backbone"))
    records = [json.loads(line) for line in (workspace / "corpus" / "dev.jsonl").read_text().splitlines()[:16]]

    def effective_tokens(ranker) -> float:
        """exp(entropy) of each dev document's own labels' planted attention over its tokens, averaged."""
        ranker = load_ranker(ranker)
        labels = ranker.config.labels
        model = PlantForMultiLabelClassification.from_backbone(
            str(workspace / "backbone"), id2label=dict(enumerate(labels)), chunk_size=64
        ).eval()
        plant(model, ranker)
        spread = []
        for record in records:
            ids = torch.tensor([tokenizer(record["text"])["input_ids"]])
            maps = model.label_attention_maps(torch.tensor([[labels.index(label) for label in record["labels"]]]), ids)
            spread += (-torch.xlogy(maps, maps).sum(-1)).exp().flatten().tolist()
        return float(np.mean(spread))

    approx = pretrain_ranker(workspace, "ranker-approx", ranker_loss="approx_ndcg", cache_dir=str(workspace / "cache"))
    listwise, ordering = effective_tokens(contextual_ranker), effective_tokens(approx)
    assert listwise > 2 * ordering, (listwise, ordering)


def test_planted_model_saves_and_loads_like_any_checkpoint(workspace, contextual_ranker, tmp_path):
    labels = load_ranker(contextual_ranker).config.labels
    model = PlantForMultiLabelClassification.from_backbone(
        str(workspace / "backbone"), id2label=dict(enumerate(labels)), chunk_size=64
    ).eval()
    plant(model, contextual_ranker)
    model.save_pretrained(tmp_path)
    reloaded = PlantForMultiLabelClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(4, 200, (2, 30))
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_artifacts_for_other_labels_or_tokenizers_are_refused(workspace, contextual_ranker, tmp_path):
    labels = load_ranker(contextual_ranker).config.labels
    other = PlantForMultiLabelClassification.from_backbone(
        str(workspace / "backbone"), id2label=dict(enumerate([*labels[:-1], "unknown"])), chunk_size=64
    )
    with pytest.raises(ArtifactMismatchError, match="1 of them unknown to the ranker"):
        plant(other, contextual_ranker)
    same_labels = PlantForMultiLabelClassification.from_backbone(
        str(workspace / "backbone"), id2label=dict(enumerate(labels)), chunk_size=64
    )
    with pytest.raises(ArtifactMismatchError, match="splits text differently"):
        plant(same_labels, contextual_ranker, tokenizer=word_tokenizer(["a", "b"]))
    wide_backbone = tiny_backbone("bert")
    wide_backbone.hidden_size = 48
    wider = PlantForMultiLabelClassification(PlantConfig(text_config=wide_backbone, id2label=dict(enumerate(labels))))
    with pytest.raises(ArtifactMismatchError, match="hidden size 32; this classifier's backbone has 48"):
        plant(wider, contextual_ranker)
    static = pretrain_ranker(workspace, "prior-ranker", planting="static", ranker_epochs=1)
    with pytest.raises(ArtifactMismatchError, match="build the classifier with static_prior_rank=8"):
        plant(same_labels, static)
    # a MIG table of another corpus (other labels) is refused before any training
    other_corpus = write_synthetic_corpus(tmp_path / "other", {"train": 50}, num_labels=5)
    shutil.copytree(workspace / "run" / "mig", tmp_path / "r" / "mig")
    with pytest.raises(ArtifactMismatchError, match="was built for 16 labels, not these 5"):
        pretrain_ranker(workspace, tmp_path / "r", data=str(other_corpus))


def test_lora_ranker_plants_its_adapter_merged(workspace):
    save_backbone(workspace / "llama", family="llama")
    folder = pretrain_ranker(workspace, "lora-ranker", backbone=str(workspace / "llama"), max_chunks=2,
                             ranker_backbone_mode="lora", lora_r=4, ranker_epochs=1, ranker_batch_size=8,
                             ranker_backbone_learning_rate=1e-2)  # fmt: skip
    ranker = load_ranker(folder)
    assert ranker.config.lora and (folder / "adapter" / "adapter_model.safetensors").exists()
    labels = ranker.config.labels
    fresh = PlantForMultiLabelClassification.from_backbone(
        str(workspace / "llama"), id2label=dict(enumerate(labels)), chunk_size=64
    ).eval()
    ids = torch.randint(4, 200, (1, 1, 16))
    before = fresh.encode(ids, torch.ones_like(ids)).hidden_states
    planted = plant(fresh, ranker)
    assert "backbone LoRA (merged)" in planted and type(fresh.model).__name__ == "LlamaModel"
    after = fresh.encode(ids, torch.ones_like(ids)).hidden_states
    assert not torch.allclose(before, after)  # the adapter trained and changed the backbone


def test_approx_ndcg_and_exact_ndcg_on_a_hand_checkable_list():
    grades = torch.tensor([[[0, 2, 1, 0]]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    perfect = torch.tensor([[[0.0, 30.0, 20.0, 10.0]]])
    reversed_scores = -perfect
    assert ndcg_at_k(perfect, grades, mask, k=4).item() == pytest.approx(1.0)
    # reversed: grade 1 at rank 3, grade 2 at rank 4 -> (1/log2(4) + 3/log2(5)) / (3/1 + 1/log2(3))
    expected = (1 / math.log2(4) + 3 / math.log2(5)) / (3 + 1 / math.log2(3))
    assert ndcg_at_k(reversed_scores, grades, mask, k=4).item() == pytest.approx(expected)
    assert approx_ndcg_loss(perfect, grades, mask, temperature=0.1).item() == pytest.approx(0.0, abs=1e-6)
    assert approx_ndcg_loss(reversed_scores, grades, mask, temperature=0.1).item() == pytest.approx(
        1 - expected, abs=1e-4
    )
    padded = torch.cat([perfect, torch.full((1, 1, 4), float("-inf"))], dim=1)  # a padded label row
    loss = approx_ndcg_loss(padded.requires_grad_(), torch.cat([grades, grades * 0], 1), mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(padded.grad).all()


def test_listwise_loss_is_least_where_the_softmax_is_the_smoothed_grades():
    grades = torch.tensor([[[0, 2, 1, 0, 3]]])
    mask = torch.tensor([[True, True, True, True, False]])  # the last token is padding: its grade does not count
    target = torch.tensor([0.0, 2 / 3, 1 / 3, 0.0]) * 0.9 + 0.1 / 4
    best = torch.cat([target.log(), torch.tensor([float("-inf")])]).view(1, 1, 5).requires_grad_()
    loss = listwise_loss(best, grades, mask, smoothing=0.1)
    assert loss.item() == pytest.approx(-(target * target.log()).sum().item(), abs=1e-6)  # the target's entropy
    loss.backward()
    assert torch.allclose(best.grad[..., :4], torch.zeros(4), atol=1e-6)  # a minimum at finite scores
    assert listwise_loss(torch.zeros(1, 1, 5), grades, mask, smoothing=0.1) > loss  # uniform attention is worse
    padded = torch.cat([best.detach(), torch.full((1, 1, 5), float("-inf"))], dim=1).requires_grad_()
    both = listwise_loss(padded, torch.cat([grades, grades * 0], 1), mask, smoothing=0.1)  # a padded label row
    both.backward()
    assert both.item() == pytest.approx(loss.item()) and torch.isfinite(padded.grad).all()


def test_the_rankers_learning_rate_defaults_by_loss_unless_given():
    listwise, ordering = PlantArguments(), PlantArguments(ranker_loss="approx_ndcg")
    assert listwise.ranker_loss == "listwise"  # fit's default
    assert ranker_learning_rate(listwise, contextual=True) == 1e-3
    assert ranker_learning_rate(ordering, contextual=True) == 1e-2
    assert ranker_learning_rate(listwise, contextual=False) == 1e-2  # the static ranker fits ApproxNDCG
    assert ranker_learning_rate(PlantArguments(ranker_learning_rate=5e-3), contextual=True) == 5e-3


def test_cli_mig_then_pretrain_then_fit_runs_each_stage_once(workspace, tmp_path):
    def cli(*arguments, status=0):
        result = subprocess.run(
            [sys.executable, "-m", "plant_hf.cli", *arguments], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == status, result.stderr[-2000:]
        return result.stdout + result.stderr

    common = ["--data", str(workspace / "corpus"), "--backbone", str(workspace / "backbone"), "--output_dir",
              str(tmp_path / "run"), "--chunk_size", "64", "--mig_top_k", "32", "--use_cpu", "true"]  # fmt: skip
    assert "MIG table of 16 labels" in cli("mig", *common)
    out = cli("pretrain", *common, "--ranker_epochs", "1")
    assert "MIG table of" not in out and "contextual ranker, dev token-ranking nDCG@10" in out
    config = json.loads((tmp_path / "run" / "ranker" / "ranker_config.json").read_text())
    assert config["kind"] == "contextual" and config["metrics"]["held_out"] == "dev split"
    written = {name: (tmp_path / "run" / name).stat().st_mtime_ns for name in ("mig", "ranker")}
    # fine-tuning options may differ from pretrain's (that stage had not started); the planting ones may not
    refused = cli("fit", *common, "--ranker_epochs", "2", status=2)
    assert "ranker_epochs: 1.0 -> 2.0" in refused and "ranker depend" in refused
    out = cli("fit", *common, "--ranker_epochs", "1", "--num_train_epochs", "1", "--eval_top_k", "5")
    assert "MIG table of" not in out and "contextual ranker" not in out and "planted: " in out
    assert {name: (tmp_path / "run" / name).stat().st_mtime_ns for name in ("mig", "ranker")} == written
    assert (tmp_path / "run" / "model" / "config.json").exists()
    help_text = cli("fit", "--help")
    groups = ["Data and backbone", "MIG table", "Planting: the ranker", "Fine-tuning: the classifier", "Evaluation",
              "Fine-tuning: Trainer"]  # fmt: skip
    headings = [help_text.index(f"\n{group}:\n") for group in groups]
    assert headings == sorted(headings) and help_text.index("\n  --per_device_train_batch_size") > headings[-1]
    assert cli("mig", "--help").count("\n  --ranker_temperature") == 1


def test_the_state_cache_key_is_the_same_whatever_the_thread_count():
    from plant_hf.cache import backbone_fingerprint

    model = tiny_model("llama")
    threads = torch.get_num_threads()
    try:
        keys = set()
        for count in (1, 2):
            torch.set_num_threads(count)
            keys.add(backbone_fingerprint(model))
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 1
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] += 1e-3
    assert backbone_fingerprint(model) not in keys
