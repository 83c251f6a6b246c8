"""The lexical channel: TF-IDF linear classifiers of whole documents, saved without pickle, fused with the model's
probabilities by a weight tuned on dev, in the recipe and in the pipeline alike."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import pipeline

from plant_hf.data import read_predictions
from plant_hf.data.synthetic import write_synthetic_corpus
from plant_hf.hub import push_to_hub
from plant_hf.lexical import LEXICAL_WEIGHTS, LexicalRanker, files, fuse, tune_lexical_weight
from plant_hf.metrics import TopKPredictions
from plant_hf.recipe import PlantArguments, fit
from plant_hf.training.trainer import PlantTrainingArguments

from conftest import FakeHfApi, save_backbone

LABELS = [f"L{index}" for index in range(6)]


def cue_corpus(documents: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """Documents of noise words in which each of their one or two labels is named by its own two cue words."""
    rng = np.random.default_rng(seed)
    noise = [f"noise{index}" for index in range(40)]
    texts, label_ids = [], []
    for _ in range(documents):
        labels = sorted(rng.choice(len(LABELS), size=rng.integers(1, 3), replace=False).tolist())
        words = [*rng.choice(noise, size=12).tolist(), *(f"cue{label}{part}" for label in labels for part in "ab")]
        rng.shuffle(words)
        texts.append(" ".join(words))
        label_ids.append(labels)
    return texts, label_ids


def channel_options() -> dict:
    return {"ngrams": 2, "min_df": 2, "c": 10.0}


@pytest.mark.parametrize("model", ["br", "plt"])
def test_the_channel_learns_each_labels_words_and_reloads_identically(tmp_path, model):
    texts, label_ids = cue_corpus(120)
    channel = LexicalRanker.fit(texts, label_ids, LABELS, tmp_path / "lexical", **channel_options(), model=model)
    queries = ["noise3 cue4a noise7 noise9", "cue1b noise2 cue5a noise11"]
    top = channel.top_k(queries, 2)
    assert top.indices[0, 0] == 4 and set(top.indices[1].tolist()) == {1, 5}
    assert np.all((top.scores > 0) & (top.scores <= 1))
    assert sorted(path.name for path in (tmp_path / "lexical").iterdir()) == sorted(files(model))  # no pickle
    again = LexicalRanker.load(tmp_path / "lexical", LABELS).top_k(queries, 2)
    np.testing.assert_array_equal(again.indices, top.indices)
    np.testing.assert_allclose(again.scores, top.scores)


def test_the_channel_is_a_label_tree_by_default_from_the_label_count_where_the_head_shortlists():
    from plant_hf.recipe import PlantArguments
    from plant_hf.recipe.lexical import lexical_classifiers

    default = PlantArguments(data="corpus")
    assert lexical_classifiers(default, 32767) == "br" and lexical_classifiers(default, 32768) == "plt"
    assert lexical_classifiers(PlantArguments(data="corpus", shortlist_min_labels=100), 100) == "plt"
    assert lexical_classifiers(PlantArguments(data="corpus", shortlist_min_labels=None), 10**6) == "br"
    assert lexical_classifiers(PlantArguments(data="corpus", lexical_model="br"), 10**6) == "br"
    assert lexical_classifiers(PlantArguments(data="corpus", lexical_model="plt"), 6) == "plt"


def test_a_channel_is_refused_for_other_labels_or_when_incomplete(tmp_path):
    texts, label_ids = cue_corpus(60)
    LexicalRanker.fit(texts, label_ids, LABELS, tmp_path / "lexical", **channel_options())
    with pytest.raises(ValueError, match="trained for 6 other labels than the model's 6"):
        LexicalRanker.load(tmp_path / "lexical", list(reversed(LABELS)))
    with pytest.raises(ValueError, match="trained for 6 other labels than the model's 7"):
        LexicalRanker.load(tmp_path / "lexical", [*LABELS, "L6"])
    (tmp_path / "lexical" / "weights.bin").unlink()
    with pytest.raises(ValueError, match=r"not a whole lexical channel: weights\.bin missing"):
        LexicalRanker.load(tmp_path / "lexical", LABELS)


def test_fusion_is_the_weighted_mean_of_both_sides_missing_labels_counting_zero():
    neural = TopKPredictions(np.array([[0, 1]]), np.array([[0.8, 0.4]]), num_labels=4)
    lexical = TopKPredictions(np.array([[1, 2]]), np.array([[0.6, 0.2]]), num_labels=4)
    fused = fuse(neural, lexical, 0.25, k=4)
    # label 0: 0.75 * 0.8; label 1: 0.75 * 0.4 + 0.25 * 0.6; label 2: 0.25 * 0.2; label 3 in neither
    np.testing.assert_array_equal(fused.indices, [[0, 1, 2, -1]])
    np.testing.assert_allclose(fused.scores[0, :3], [0.6, 0.45, 0.05])
    dense = fuse(np.array([[0.8, 0.4, 0.0, 0.0]]), lexical, 0.25, k=3)
    np.testing.assert_array_equal(dense.indices, [[0, 1, 2]])
    np.testing.assert_allclose(dense.scores, fused.scores[:, :3])


def precision_at_1(truth, predictions: TopKPredictions) -> float:
    return float(np.mean([predictions.indices[row, 0] in labels for row, labels in enumerate(truth)]))


def test_the_weight_is_the_one_that_scores_best_on_held_out_documents():
    truth = [[0], [1]]
    right = TopKPredictions(np.array([[0, 1], [1, 0]]), np.array([[0.9, 0.1], [0.9, 0.1]]), num_labels=2)
    wrong = TopKPredictions(np.array([[1, 0], [0, 1]]), np.array([[0.6, 0.5], [0.6, 0.5]]), num_labels=2)
    weight, scores = tune_lexical_weight(truth, wrong, right, precision_at_1)
    assert set(scores) == set(LEXICAL_WEIGHTS) and scores[1.0] == 1.0 and scores[0.0] == 0.0
    # (1 - w) 0.5 + w 0.9 > (1 - w) 0.6 + w 0.1 from w = 1/9 on: the first weight of the grid above it
    assert weight == pytest.approx(0.15)
    weight, scores = tune_lexical_weight(truth, right, wrong, precision_at_1)
    assert weight == 0.0  # equal scores up to 0.5: the least weight


def weak_model_run(root, sizes: dict[str, int]) -> dict:
    """fit on a synthetic corpus of these split sizes with a model that barely trains (learning rate 1e-6) beside a
    lexical channel that reads the labels' evidence words: the dev split must give the channel weight."""
    write_synthetic_corpus(root / "corpus", sizes, num_labels=6, length=(20, 40))
    save_backbone(root / "bert")
    return fit(
        PlantArguments(data=str(root / "corpus"), backbone=str(root / "bert"), chunk_size=32, max_chunks=2,
                       planting="none", label_init="random", context_gate=False),
        PlantTrainingArguments(output_dir=str(root / "run"), num_train_epochs=1, learning_rate=1e-6,
                               per_device_train_batch_size=8, use_cpu=True, disable_tqdm=True, seed=0),
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lexical")
    return root, weak_model_run(root, {"train": 200, "dev": 40, "test": 30})


def test_fit_tunes_the_channels_weight_on_dev_and_saves_it_with_the_model(run):
    root, report = run
    dev = {float(weight): score for weight, score in report["lexical"]["dev"].items()}
    weight = report["lexical"]["weight"]
    assert weight == min(w for w, score in dev.items() if score == max(dev.values())) and weight > 0
    assert dev[weight] > dev[0.0]  # the channel helps the barely trained model on dev
    config = json.loads((root / "run" / "model" / "config.json").read_text())
    assert config["lexical_weight"] == weight
    assert sorted(path.name for path in (root / "run" / "model" / "lexical").iterdir()) == sorted(files("br"))


def test_the_pipeline_fuses_as_the_recipe_scored_the_test_split(run):
    root, _ = run
    model = root / "run" / "model"
    classify = pipeline("xmc-classification", model=str(model))
    weight = classify.model.config.lexical_weight
    test = [json.loads(line) for line in (root / "corpus" / "test.jsonl").read_text().splitlines()]
    saved = {record.id: record for record in read_predictions(root / "run" / "eval" / "test_predictions.jsonl")}
    for document in test[:3]:
        fused = classify(document["text"], top_k=6)
        record = saved[document["id"]]
        assert [entry["label"] for entry in fused] == record.labels[:6]
        assert [entry["score"] for entry in fused] == pytest.approx(record.scores[:6], abs=1e-5)
    text = test[0]["text"]
    alone = {entry["label"]: entry["score"] for entry in classify(text, top_k=6, lexical=False)}
    with torch.no_grad():
        inputs = classify.tokenizer(text, return_tensors="pt")
        own = classify.model(**inputs).logits.sigmoid()[0].tolist()
    assert [alone[classify.model.config.id2label[index]] for index in range(6)] == pytest.approx(own, abs=1e-6)
    lexical = LexicalRanker.load(model / "lexical", [classify.model.config.id2label[i] for i in range(6)])
    by_hand = fuse(np.array([own]), lexical.top_k([text], 6), weight, k=6)
    fused = classify(text, top_k=6)
    assert [entry["label"] for entry in fused] == [classify.model.config.id2label[i] for i in by_hand.indices[0]]
    assert [entry["score"] for entry in fused] == pytest.approx(by_hand.scores[0].tolist(), abs=1e-6)
    batched = classify([text, text], top_k=6, batch_size=2)[1]
    assert [entry["label"] for entry in batched] == [entry["label"] for entry in fused]
    assert [entry["score"] for entry in batched] == pytest.approx([entry["score"] for entry in fused], abs=1e-6)


def test_the_card_tells_the_channel_and_a_push_sends_it_with_the_model(run, tmp_path):
    root, report = run
    card = (root / "run" / "model" / "README.md").read_text()
    assert f"fused with the model's at weight {report['lexical']['weight']:g} (tuned on dev; the channel " in card
    folder = tmp_path / "model"
    shutil.copytree(root / "run" / "model", folder)
    api = FakeHfApi()
    push_to_hub(folder, "org/plant", api=api)
    assert {f"lexical/{name}" for name in files("br")} <= set(api.commits[0]["files"])


def test_predict_fuses_the_channel_unless_told_not_to(run, tmp_path):
    root, _ = run
    model = root / "run" / "model"
    test = [json.loads(line) for line in (root / "corpus" / "test.jsonl").read_text().splitlines()[:3]]
    documents = tmp_path / "docs.jsonl"
    documents.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in test))
    classify = pipeline("xmc-classification", model=str(model))
    for option, lexical in ((), True), (("--lexical", "false"), False):
        output = tmp_path / f"lexical-{lexical}.jsonl"
        command = [sys.executable, "-m", "plant_hf.cli", "predict", "--model", str(model), "--input", str(documents),
                   "--output", str(output), "--top_k", "3", *option]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        for record, document in zip(read_predictions(output), test, strict=True):
            expected = classify(document["text"], top_k=3, lexical=lexical)
            assert record.labels == [entry["label"] for entry in expected]
            assert record.scores == pytest.approx([entry["score"] for entry in expected], abs=1e-6)
    fused, alone = (read_predictions(tmp_path / f"lexical-{flag}.jsonl") for flag in (True, False))
    assert [record.scores for record in fused] != [record.scores for record in alone]


def test_documents_held_out_for_selection_return_to_the_saved_channel(tmp_path):
    """Without a dev split, fit holds out 5% of the training split to choose the weight and thresholds; the saved
    channel then learns from those documents too, and the test report scores that channel."""
    report = weak_model_run(tmp_path, {"train": 400, "test": 30})
    assert report["lexical"]["weight"] > 0 and report["lexical"]["trained on"] == "train and held-out dev"
    read = {
        place: json.loads((tmp_path / "run" / place / "lexical.json").read_text())
        for place in ("lexical", "model/lexical")
    }
    assert read["lexical"]["labels_fingerprint"] == read["model/lexical"]["labels_fingerprint"]
    assert len(read["model/lexical"]["vocabulary"]) > len(read["lexical"]["vocabulary"])  # 380 documents, then 400
    classify = pipeline("xmc-classification", model=str(tmp_path / "run" / "model"))
    document = json.loads((tmp_path / "corpus" / "test.jsonl").read_text().splitlines()[0])
    saved = read_predictions(tmp_path / "run" / "eval" / "test_predictions.jsonl")[0]
    fused = classify(document["text"], top_k=3)
    assert saved.id == document["id"] and saved.labels[:3] == [entry["label"] for entry in fused]
    assert saved.scores[:3] == pytest.approx([entry["score"] for entry in fused], abs=1e-5)


def test_a_model_folder_without_its_channel_says_how_to_score(run, tmp_path):
    root, _ = run
    folder = tmp_path / "copy"
    shutil.copytree(root / "run" / "model", folder, ignore=shutil.ignore_patterns("lexical"))
    classify = pipeline("xmc-classification", model=str(folder))
    with pytest.raises(ValueError, match=r"has no lexical/ .* or score with the model alone \(lexical=False"):
        classify("some text", top_k=2)
    assert len(classify("some text", top_k=2, lexical=False)) == 2
