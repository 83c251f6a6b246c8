"""Model cards, Hub uploads (to a fake Hub), the xmc-classification pipeline, explanations and their pages."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import pipeline

from plant_hf import PlantClassificationPipeline
from plant_hf.data import LabelVocabulary, PlantDataCollator
from plant_hf.data.synthetic import synthetic_vocabulary, write_synthetic_corpus
from plant_hf.explanation import explanation_index, explanation_page
from plant_hf.hub import TrainingInfo, push_to_hub, render_model_card, write_model_card
from plant_hf.recipe import PlantArguments, fit
from plant_hf.training.trainer import PlantTrainingArguments

from conftest import FakeHfApi, run_without_plant_hf, save_backbone, tiny_model

REPORT = {
    "documents": 40, "labels": 8, "P@1": 0.75, "P@3": 0.5, "P@5": 0.4, "nDCG@5": 0.6, "PSP@5": 0.55,
    "micro_f1": 0.5, "macro_f1": 0.3, "macro_auc": 0.9, "meta": {"split": "test"},
    "by_frequency": {"0": {"labels": 0, "documents": 0},
                     "1-5": {"labels": 3, "documents": 5, "P@1": 0.2, "P@5": 0.1, "PSP@5": 0.3, "R@5": 0.4}},
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PLANT model trained by the recipe on a synthetic corpus whose label evidence words are known (without the
    lexical channel: these tests are about the model; tests/test_lexical.py has the channel's)."""
    root = tmp_path_factory.mktemp("hub")
    write_synthetic_corpus(root / "corpus", {"train": 300, "dev": 60, "test": 40}, num_labels=6, length=(20, 40))
    save_backbone(root / "bert")
    fit(
        PlantArguments(data=str(root / "corpus"), backbone=str(root / "bert"), chunk_size=32, max_chunks=2,
                       mig_top_k=16, ranker_epochs=4, planting="static", prior_rank=8, lexical=False),
        # the attention stays as planted (lr 0): the explanations below test what planting put there
        PlantTrainingArguments(output_dir=str(root / "run"), num_train_epochs=4, per_device_train_batch_size=8,
                               planted_lr_fraction=0.0, use_cpu=True, disable_tqdm=True, seed=0),
    )  # fmt: skip
    return root / "run" / "model"


def test_the_card_takes_license_and_language_from_the_backbones_card_local_or_on_the_hub(tmp_path, monkeypatch):
    from huggingface_hub import repocard
    from huggingface_hub.errors import LocalEntryNotFoundError

    from plant_hf.recipe.card import backbone_card_metadata

    card = tmp_path / "README.md"
    card.write_text("---\nlicense: apache-2.0\nlanguage:\n- en\n---\n# A backbone\n")
    expected = {"license": "apache-2.0", "language": ["en"]}
    assert backbone_card_metadata(str(tmp_path)) == expected
    fetched = []
    monkeypatch.setattr(repocard, "hf_hub_download", lambda repo, name, **_: fetched.append((repo, name)) or str(card))
    assert backbone_card_metadata("org/backbone") == expected and fetched == [("org/backbone", "README.md")]

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("the Hub cannot be reached and the card is not cached")

    monkeypatch.setattr(repocard, "hf_hub_download", unreachable)
    assert backbone_card_metadata("org/backbone") == {}
    assert backbone_card_metadata(str(tmp_path / "no-card")) == {}


def test_the_widget_example_is_public_text_only(tmp_path):
    from types import SimpleNamespace

    from datasets import Dataset

    from plant_hf.recipe.card import widget_example

    vocabulary = LabelVocabulary.from_training([["E11.9"], ["I10", "E11.9"], ["I10", "E11.9"]])
    test = Dataset.from_dict({"text": [" ".join(f"word{i}" for i in range(100)), "another note"]})

    def context(data, descriptions):
        return SimpleNamespace(args=SimpleNamespace(data=data), splits={"test": test}, vocabulary=vocabulary,
                               descriptions=descriptions)  # fmt: skip

    catalogue = {"I10": "Essential (primary) hypertension", "E11.9": "Type 2 diabetes mellitus without complications"}
    assert widget_example(context("synthetic", catalogue)) == " ".join(f"word{i}" for i in range(60))
    corpus = tmp_path / "private"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text('{"text": "a note", "labels": ["I10"]}\n')
    # A local corpus's text stays out of the card: the most frequent described label's description stands in.
    assert widget_example(context(str(corpus), catalogue)) == catalogue["E11.9"]
    assert widget_example(context(str(corpus), {"I10": catalogue["I10"]})) == catalogue["I10"]
    assert widget_example(context(str(corpus), {})) is None


def test_card_round_trips_with_its_results(tmp_path):
    TrainingInfo(
        base_model="meta-llama/Llama-3.1-8B",
        dataset="mimic-iv-icd10",
        num_labels=8,
        train_documents=100,
        mig={"top-k": 256},
        planting={"kind": "contextual", "ndcg_k": 10, "random_init": 0.1, "trained": 0.8},
        finetuning={"mode": "lora"},
        hyperparameters={"learning_rate": 0.002, "seed": 42},
        changed={"learning_rate": 0.002},
        top_labels={"I10": 40, "E11.9": 25},
        license="apache-2.0",
        language="en",
        datasets=["org/icd-notes"],
        versions={"transformers": "5.0.0"},
        widget="Essential (primary) hypertension",
    ).save(tmp_path)
    (tmp_path / "eval_report.json").write_text(json.dumps(REPORT))
    path = write_model_card(tmp_path, model_id="org/plant-icd")
    card = ModelCard.load(path)
    results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert results == {"P@1": 75.0, "P@3": 50.0, "P@5": 40.0, "nDCG@5": 60.0, "PSP@5": 55.0, "micro_f1": 50.0,
                       "macro_f1": 30.0, "macro_auc": 90.0}  # fmt: skip
    assert card.data.base_model == "meta-llama/Llama-3.1-8B" and "plant-hf" in card.data.tags
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert (card.data.license, card.data.language, card.data.datasets) == ("apache-2.0", "en", ["org/icd-notes"])
    assert card.data.widget == [{"text": "Essential (primary) hypertension"}]
    assert card.data.model_name == "plant-icd" and card.data.eval_results[0].dataset_name == "org/icd-notes"
    text = card.text
    assert "| `learning_rate` | `0.002` |" in text and '"seed": 42' in text and "<details>" in text
    assert "`I10` (40), `E11.9` (25)" in text and "- transformers 5.0.0" in text
    assert 'pipeline("text-classification", model="org/plant-icd", top_k=None)' in text
    assert "](https://github.com/)" not in text
    assert "| 1-5 | 3 | 5 | 20.00 | 10.00 | 30.00 | 40.00 |" in text and "| 0 | 0 | 0 |" not in text
    assert "| `learning_rate` | `0.002` |" in text and "Every option of the run at" not in text
    plain = render_model_card(dataclasses.replace(TrainingInfo.load(tmp_path), changed={}), REPORT).content
    assert "Every option of the run at `plant-hf fit`'s defaults." in plain and "| option | value |" not in plain
    assert 'AutoModel.from_pretrained("org/plant-icd", trust_remote_code=True)' in text
    assert "not a medical device" in text and "arXiv:2410.23066" in text
    assert "contextual ranker (ApproxNDCG); held-out token-ranking nDCG@10 10.00 at random init -> 80.00" in text
    reloaded = ModelCard.load(path)  # a second round trip keeps the same metadata
    assert reloaded.data.to_dict() == card.data.to_dict()


def test_recipe_writes_a_card_that_names_its_results(trained):
    card = ModelCard.load(trained / "README.md")
    report = json.loads((trained / "eval_report.json").read_text())
    results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert results["P@1"] == round(100 * report["P@1"], 2)
    # named after its run, loaded from its folder; a local backbone without a card lends it no license
    assert card.data.model_name == "run" and card.data.base_model is None and card.data.license is None
    assert f'AutoModel.from_pretrained("{trained}")' in card.text
    assert "| `planted_lr_fraction` | `0.0` |" in card.text and "| `learning_rate` |" not in card.text
    assert re.search(r"\| fine-tuning \| 4\.0 \| [\d.]+ \| \d+\.\d \| ", card.text)
    assert re.search(r"\| retrieval memory \| 300 documents' mean token states .* at weight 0\.\d+", card.text)
    assert "static ranker (ApproxNDCG)" in card.text  # the static ranker fits ApproxNDCG whatever --ranker_loss says


def test_push_sends_the_model_folder_in_one_commit(trained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    (folder / "notes.log").write_text("not part of the model")
    api = FakeHfApi()
    url = push_to_hub(folder, "org/plant", api=api)
    assert url == "https://hub/org/plant/commit/1" and len(api.commits) == 1
    card = ModelCard.load(folder / "README.md")  # regenerated for the repo before the upload
    assert card.data.model_name == "plant" and 'AutoModel.from_pretrained("org/plant")' in card.text
    assert api.commits[0]["files"] == [
        "README.md", "config.json", "configuration_plant.py", "eval_report.json", "label_vocabulary.json",
        "memory.safetensors", "memory_documents.json", "model.safetensors", "modeling_plant.py", "pipeline_plant.py",
        "plant_training.json",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    (folder / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pickled weights \['training_args.bin'\]"):
        push_to_hub(folder, "org/plant", api=api)


def test_push_sends_a_lora_adapter_alone(tmp_path):
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(
        tiny_model("llama"),
        LoraConfig(r=2, target_modules=r"model\..*\.(q_proj|v_proj)", modules_to_save=["score"]),
    )
    adapted.save_pretrained(tmp_path / "adapter")
    api = FakeHfApi()
    push_to_hub(tmp_path / "adapter", "org/plant-adapter", api=api)
    assert api.commits[0]["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert api.commits[0]["commit_message"] == "Upload PLANT adapter"


def test_models_own_push_to_hub_uploads_weights_code_and_label_map(monkeypatch, tmp_path):
    import transformers.utils.hub as hub_utils
    from huggingface_hub import ModelCardData

    model = tiny_model("bert", num_labels=3)
    model.config.id2label = {0: "A01", 1: "B02", 2: "C03"}
    model.config.label2id = {"A01": 0, "B02": 1, "C03": 2}
    sent = {}

    class Api:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def create_commit(self, repo_id, operations, **kwargs):
            for operation in operations:
                sent[operation.path_in_repo] = Path(operation.path_or_fileobj).read_bytes()
            return "commit"

    monkeypatch.setattr(hub_utils, "hf_api", lambda *args, **kwargs: Api())
    monkeypatch.setattr(
        hub_utils, "create_and_tag_model_card", lambda *args, **kwargs: ModelCard.from_template(ModelCardData())
    )
    model.push_to_hub("org/plant")
    assert sorted(sent) == ["README.md", "config.json", "configuration_plant.py", "model.safetensors",
                            "modeling_plant.py", "pipeline_plant.py"]  # fmt: skip
    assert json.loads(sent["config.json"])["id2label"] == {"0": "A01", "1": "B02", "2": "C03"}


def test_pipeline_scores_chunks_top_k_threshold_and_batches(trained):
    classify = pipeline("xmc-classification", model=str(trained))
    assert isinstance(classify, PlantClassificationPipeline)
    evidence, noise = synthetic_vocabulary(num_labels=6)
    long_text = " ".join([*noise[:90], evidence[0]])  # longer than one 32-token chunk
    single = classify(long_text, top_k=3)
    assert len(single) == 3 and single[0]["score"] >= single[1]["score"] >= single[2]["score"]
    ids = classify.tokenizer(long_text)["input_ids"]
    model = classify.model
    encoded = classify.preprocess(long_text)
    with torch.no_grad():
        probabilities = model(input_ids=encoded["input_ids"]).logits.sigmoid()[0]
    assert len(ids) > 32 and encoded["input_ids"].shape[1] > 32  # chunked, each chunk with its special tokens
    assert single[0]["score"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    texts = [long_text, " ".join([*noise[:10], evidence[3]]), " ".join(noise[20:60])]
    batched = classify(texts, batch_size=3, top_k=2)
    one_by_one = [classify(text, top_k=2) for text in texts]
    for got, expected in zip(batched, one_by_one, strict=True):
        assert [entry["label"] for entry in got] == [entry["label"] for entry in expected]
        assert [entry["score"] for entry in got] == pytest.approx([entry["score"] for entry in expected], abs=1e-5)
    # Explanations of documents of different lengths batched together: padding neither reads nor shows.
    explained = list(classify((text for text in texts), batch_size=3, top_k=2, explain=True, explain_words=0))
    for got, text in zip(explained, texts, strict=True):
        alone = classify(text, top_k=2, explain=True, explain_words=0)
        for entry, expected in zip(got, alone, strict=True):
            assert [word["word"] for word in entry["evidence"]] == [word["word"] for word in expected["evidence"]]
            weights = [word["weight"] for word in entry["evidence"]]
            assert weights == pytest.approx([word["weight"] for word in expected["evidence"]], abs=1e-5)
    assert len(classify(long_text, top_k=None)) == 6 and len(classify(long_text)) == 5  # None: every label
    above = classify(long_text, top_k=None, threshold=0.5)
    assert all(entry["score"] >= 0.5 for entry in above)
    assert len(above) == int((probabilities >= 0.5).sum())


def test_both_pipelines_read_a_long_document_as_training_did(trained):
    xmc = pipeline("xmc-classification", model=str(trained))
    assert xmc.model.config.chunk_prefix_ids == [1] and xmc.model.config.chunk_suffix_ids == [2]  # [CLS], [SEP]
    evidence, noise = synthetic_vocabulary(num_labels=6)
    text = " ".join([*noise[:40], evidence[2], *noise[40:50]])  # two chunks of 32 tokens
    text_classification = pipeline("text-classification", model=str(trained), top_k=None)
    by_xmc = {entry["label"]: entry["score"] for entry in xmc(text, top_k=6)}
    by_text_classification = {entry["label"]: entry["score"] for entry in text_classification([text])[0]}
    assert by_text_classification == pytest.approx(by_xmc, abs=1e-6)
    chunks = xmc.tokenizer(text, truncation=True, max_length=32, return_overflowing_tokens=True)["input_ids"]
    with torch.no_grad():
        trained_on = xmc.model(**PlantDataCollator(num_labels=0, pad_token_id=0)([{"input_ids": chunks}]))
    probabilities = trained_on.logits.sigmoid()[0].tolist()
    assert [by_xmc[xmc.model.config.id2label[index]] for index in range(6)] == pytest.approx(probabilities, abs=1e-6)


def test_the_saved_tokenizer_reads_as_far_as_the_model(trained, caplog):
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert tokenizer.model_max_length == 62  # two chunks of 32 tokens, each framed by [CLS] and [SEP]: 2 x 30 + 2
    _, noise = synthetic_vocabulary(num_labels=6)
    read = tokenizer(" ".join(noise[:100]), truncation=True)["input_ids"]
    assert len(read) == 62 and read[0] == 1 and read[-1] == 2
    # text-classification warns of "indexing errors" only for a document longer than the model reads
    classify = pipeline("text-classification", model=str(trained))
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            classify(" ".join(noise[:55]))
            assert "indexing errors" not in caplog.text
            classify(" ".join(noise[:100]))
            assert "(102 > 62)" in caplog.text
    finally:
        transformers_logging.disable_propagation()


def test_the_tokenizer_loads_without_plant_hf_as_the_card_says(trained, tmp_path):
    from transformers import AutoTokenizer

    text = " ".join(synthetic_vocabulary(num_labels=6)[1][:5])
    result = run_without_plant_hf(
        f"""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained({str(trained)!r}, trust_remote_code=True)
        print(tokenizer({text!r})["input_ids"], tokenizer.model_max_length)
        """,
        tmp_path,
    )
    expected = AutoTokenizer.from_pretrained(trained)(text)["input_ids"]
    assert len(expected) == 7 and result.stdout.strip().splitlines()[-1] == f"{expected} 62"
    assert "Do you wish to run the custom code" not in result.stderr and "model of type" not in result.stderr
    assert f'AutoTokenizer.from_pretrained("{trained}", trust_remote_code=True)' in (trained / "README.md").read_text()


def test_pipeline_says_how_much_of_a_long_document_it_read(trained, caplog):
    classify = pipeline("xmc-classification", model=str(trained))
    _, noise = synthetic_vocabulary(num_labels=6)
    text = " ".join((noise * 10)[:150])  # 150 words and [CLS], [SEP]: two chunks of 30 words are read
    with caplog.at_level("WARNING"):
        classify([text, text + " " + text], top_k=1)
    assert "A document of 152 tokens was read up to its first 62 (2 chunks of at most 32 tokens" in caplog.text
    assert caplog.text.count("was read up to its first") == 1  # said once, not once a document


@pytest.mark.parametrize(
    ("inputs", "options", "message"),
    [
        ("w5 w6", {"top_k": 0}, r"top_k must be a number of labels of at least 1 \(None: every label\), got 0"),
        ("w5 w6", {"top_k": -2}, "got -2"),
        ("w5 w6", {"threshold": 1.5}, r"threshold must be a probability in \[0, 1\]"),
        ("w5 w6", {"threshold": float("nan")}, "got nan"),
        ("w5 w6", {"threshold": "high"}, "got 'high'"),
        ("w5 w6", {"explain": True, "explain_words": -1}, "explain_words must be 0"),
        (["w5 w6", None, "w7"], {}, "Document 1 of the 3 given is NoneType, not a text"),
    ],
)
def test_pipeline_refuses_bad_parameters_and_inputs_by_name(trained, inputs, options, message):
    classify = pipeline("xmc-classification", model=str(trained))
    with pytest.raises(ValueError, match=message):
        classify(inputs, **options)


def test_pipeline_applies_the_labels_own_thresholds(trained):
    classify = pipeline("xmc-classification", model=str(trained))
    thresholds = torch.tensor(classify.model.config.label_thresholds)  # tuned on dev by fit
    assert thresholds.shape == (6,)
    evidence, noise = synthetic_vocabulary(num_labels=6)
    text = " ".join([*noise[:30], evidence[0], evidence[6]])
    with torch.no_grad():
        probabilities = classify.model(input_ids=classify.preprocess(text)["input_ids"]).logits.sigmoid()[0]
    kept = {entry["label"] for entry in classify(text, top_k=None, threshold="label")}
    assert kept == {f"L{i}" for i in range(6) if probabilities[i] >= thresholds[i]}
    classify.model.config.label_thresholds = None
    with pytest.raises(ValueError, match="label_thresholds"):
        classify(text, threshold="label")
    with pytest.raises(ValueError, match="probability"):
        classify(text, threshold="high")


def test_explanations_name_each_labels_evidence_word(trained):
    classify = pipeline("xmc-classification", model=str(trained))
    evidence, noise = synthetic_vocabulary(num_labels=6)
    named = 0
    for label in range(6):
        word = evidence[3 * label]
        text = " ".join([*noise[label * 5 : label * 5 + 30], word, *noise[200 : 200 + 10]])
        predictions = classify(text, top_k=6, explain=True, explain_words=1)
        entry = next(entry for entry in predictions if entry["label"] == f"L{label}")
        named += entry["evidence"][0]["word"] == word
        assert entry["evidence"][0]["start"] == text.index(word) or entry["evidence"][0]["word"] != word
    assert named >= 5  # the label's attention names its planted evidence word


def test_explanations_name_the_training_documents_the_memory_retrieved(trained):
    corpus = trained.parents[1] / "corpus"
    training = {record["id"]: record["labels"] for record in map(json.loads, (corpus / "train.jsonl").open())}
    assert json.loads((trained / "memory_documents.json").read_text()) == list(training)
    evidence, noise = synthetic_vocabulary(num_labels=6)
    predictions = pipeline("xmc-classification", model=str(trained))(
        " ".join([*noise[:30], evidence[0], evidence[6]]), top_k=3, explain=True
    )
    listed = [document for entry in predictions for document in entry["documents"]]
    assert listed and all(entry["label"] in training[d["id"]] for entry in predictions for d in entry["documents"])
    for entry in predictions:
        weights = [document["weight"] for document in entry["documents"]]
        assert weights == sorted(weights, reverse=True) and sum(weights) <= 1 + 1e-6


def test_remote_code_pipeline_in_a_process_without_plant_hf(trained, tmp_path):
    # The model mixes its retrieval memory into its probabilities: the remote copy must load and use it too.
    assert json.loads((trained / "config.json").read_text())["memory_weight"] > 0
    texts = ["fever cough the patient", "fracture of the femur in a fall"]
    expected = pipeline("xmc-classification", model=str(trained))(texts, top_k=4)
    result = run_without_plant_hf(
        f"""
        import json
        from transformers import pipeline

        classify = pipeline(model={str(trained)!r}, trust_remote_code=True)
        assert type(classify).__name__ == "PlantClassificationPipeline"
        print(json.dumps(classify({texts!r}, top_k=4)))
        """,
        tmp_path,
    )
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    for got, want in zip(remote, expected, strict=True):
        assert [entry["label"] for entry in got] == [entry["label"] for entry in want]
        assert [entry["score"] for entry in got] == pytest.approx([entry["score"] for entry in want], abs=1e-6)


def test_cli_predict_and_explain(trained, tmp_path):
    documents = tmp_path / "docs.jsonl"
    evidence, noise = synthetic_vocabulary(num_labels=6)
    records = [{"id": f"d{i}", "text": " ".join([*noise[i:i + 20], evidence[3 * i]]), "labels": [f"L{i}"]}
               for i in range(3)]  # fmt: skip
    documents.write_text("".join(json.dumps(record) + "\n" for record in records))

    def cli(*arguments):
        result = subprocess.run([sys.executable, "-m", "plant_hf.cli", *arguments], capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    cli("predict", "--model", str(trained), "--input", str(documents), "--output", str(tmp_path / "out.jsonl"),
        "--top_k", "3")  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["d0", "d1", "d2"] and all(len(line["labels"]) == 3 for line in lines)
    cli("predict", "--model", str(trained), "--input", str(documents), "--output", str(tmp_path / "own.jsonl"),
        "--top_k", "0", "--threshold", "label")  # fmt: skip
    config = json.loads((trained / "config.json").read_text())
    own = {config["id2label"][str(i)]: threshold for i, threshold in enumerate(config["label_thresholds"])}
    for line in map(json.loads, (tmp_path / "own.jsonl").read_text().splitlines()):
        assert all(score >= own[label] for label, score in zip(line["labels"], line["scores"], strict=True))
    refused = subprocess.run([sys.executable, "-m", "plant_hf.cli", "predict", "--model", str(trained), "--input",
                              str(documents), "--output", str(tmp_path / "no.jsonl"), "--threshold", "high"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2 and "--threshold high" in refused.stderr and not (tmp_path / "no.jsonl").exists()
    nowhere = tmp_path / "missing" / "out.jsonl"
    refused = subprocess.run([sys.executable, "-m", "plant_hf.cli", "predict", "--model", str(trained), "--input",
                              str(documents), "--output", str(nowhere)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2 and f"--output {nowhere}: its folder does not exist" in refused.stderr
    (tmp_path / "descriptions.json").write_text(json.dumps({"L0": "label zero <b>", "L5": "label five"}))
    cli("explain", "--model", str(trained), "--input", str(documents), "--output_dir", str(tmp_path / "pages"),
        "--top_k", "3", "--label_descriptions", str(tmp_path / "descriptions.json"))  # fmt: skip
    pages = sorted((tmp_path / "pages").glob("0*.html"))
    assert len(pages) == 3
    page = explanation_data(pages[0].read_text())
    assert evidence[0] in page["text"] and page["gold"] == ["L0"] and page["model"] == str(trained)
    assert page["descriptions"]["L0"] == "label zero <b>" and set(page["descriptions"]) <= {"L0", "L5"}
    assert all(label["threshold"] == own[label["label"]] for label in page["labels"])
    index = explanation_data((tmp_path / "pages" / "index.html").read_text())
    assert [row["id"] for row in index["rows"]] == ["d0", "d1", "d2"] and index["rows"][0]["gold"] == ["L0"]
    assert [row["page"] for row in index["rows"]] == [page.name for page in pages]
    assert all(len(row["labels"]) == 3 for row in index["rows"])
    refused = subprocess.run([sys.executable, "-m", "plant_hf.cli", "explain", "--model", str(trained), "--input",
                              str(documents), "--output_dir", str(tmp_path / "no"), "--label_descriptions",
                              str(documents)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2 and f"{documents}:1: no label" in refused.stderr and not (tmp_path / "no").exists()


def explanation_data(page: str) -> dict:
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, flags=re.S)[1])


def test_explanation_page_embeds_text_safely():
    predictions = [{"label": "X", "score": 0.9, "evidence": [
        {"word": "</script>", "weight": 0.7, "start": 0, "end": 9},
        {"word": "ok", "weight": 0.3, "start": 10, "end": 12},
    ]}]  # fmt: skip
    page = explanation_page("</script> ok <!--<script>", predictions, gold=["X", "Y"], title="<doc & co>")
    assert page.count("</script>") == 2 and "<!--" not in page  # the data's own markup is escaped in its element
    assert "<title>&lt;doc &amp; co&gt;</title>" in page
    assert explanation_data(page)["text"] == "</script> ok <!--<script>"
    index = explanation_index([{"page": "a.html", "id": "</script><!--", "labels": [["X", 0.9]], "gold": None}])
    assert index.count("</script>") == 2 and "<!--" not in index
    assert explanation_data(index)["rows"][0]["id"] == "</script><!--"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package `chromium`)")
def test_explanation_page_switches_labels_in_headless_chromium(trained, tmp_path):
    classify = pipeline("xmc-classification", model=str(trained))
    evidence, noise = synthetic_vocabulary(num_labels=6)
    text = " ".join([*noise[:40], evidence[0], evidence[6], *noise[40:60]])
    predictions = classify(text, top_k=4, explain=True, explain_words=0)
    page = tmp_path / "page.html"
    page.write_text(explanation_page(text, predictions, gold=["L0", "L2"], title="doc"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    url = page.as_uri() + "#selftest"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert "<title>selftest:ok:4</title>" in dom.stdout, dom.stdout[:500] + dom.stderr[-2000:]
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors, console_errors
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,800", url], capture_output=True,
                   timeout=120)  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    rows = [
        {
            "page": "page.html",
            "id": "doc",
            "labels": [[p["label"], p["score"]] for p in predictions],
            "gold": ["L0", "L2"],
        },
        {"page": "other.html", "id": "other", "labels": [["L1", 0.4]], "gold": None},
    ]
    (tmp_path / "index.html").write_text(explanation_index(rows, model="m", created="2026-12-06"))
    dom = subprocess.run([*flags, "--dump-dom", (tmp_path / "index.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    body = dom[dom.index('<tbody id="rows">') :]
    assert body.count("<tr>") == 2 and '<a href="page.html">doc</a>' in body and "m · 2026-12-06 · 2 documents" in dom
    hits = sum(p["label"] in ("L0", "L2") for p in predictions)
    assert f"{hits} of 2" in body
    rows = [{"page": f"{name}.html", "id": name, "labels": [["L1", best]], "gold": gold}
            for name, best, gold in [("a", 0.2, ["L1"]), ("c", 0.9, ["L0", "L2"]), ("b", 0.5, None)]]  # fmt: skip
    (tmp_path / "index.html").write_text(explanation_index(rows))
    for sort, expected in [("", "acb"), ("#sort=id", "abc"), ("#sort=best", "cba"), ("#sort=missed", "cab")]:
        dom = subprocess.run([*flags, "--dump-dom", (tmp_path / "index.html").as_uri() + sort], capture_output=True,
                             text=True, timeout=120).stdout  # fmt: skip
        assert "".join(re.findall(r'<a href="(\w)\.html">', dom)) == expected, sort
