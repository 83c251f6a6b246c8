"""The retrieval memory: exact retrieval, the fused probabilities, and the memory saved beside the weights."""

import math

import pytest
import torch
from safetensors.torch import save_file

from plant_hf import PlantForMultiLabelClassification
from plant_hf.modeling_plant import MEMORY_FILE, PlantDocumentMemory

from conftest import random_ids, tiny_model


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


def test_memory_entries_must_name_the_models_labels():
    with pytest.raises(ValueError, match=r"label ids in \[0, 3\)"):
        PlantDocumentMemory.from_entries(torch.ones(2, 4), [[0], [3]], num_labels=3, top_k=1, temperature=0.1)
    model = tiny_model("llama", num_labels=4)
    with pytest.raises(ValueError, match="memory over 3 labels for a model of 4"):
        model.set_memory(PlantDocumentMemory.from_entries(torch.ones(1, 32), [[0]], 3, 1, 0.1))
