"""Saving, loading, backbone checkpoints, remote code and the stock pipeline."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertForMaskedLM,
    BertModel,
    LlamaForCausalLM,
    LlamaModel,
    MistralForCausalLM,
    Phi3ForCausalLM,
    pipeline,
)

from plant_hf import PlantForMultiLabelClassification

from conftest import minilm_path, random_ids, requires_minilm, run_without_plant_hf, tiny_backbone, tiny_model

ID2LABEL = {0: "cardiology", 1: "oncology", 2: "renal", 3: "trauma"}


def weight_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".pkl"}}


@pytest.mark.parametrize("shard", [None, "40KB"])
def test_save_and_load_give_identical_logits(tmp_path, backbone_name, shard):
    model = tiny_model(backbone_name, num_labels=4, chunk_size=6, inattention_k=4)
    kwargs = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(tmp_path, **kwargs)
    files = weight_files(tmp_path)
    assert files and all(name.endswith(".safetensors") for name in files)
    if shard:
        assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is PlantForMultiLabelClassification
    input_ids = random_ids(2, 15)
    torch.testing.assert_close(loaded(input_ids=input_ids).logits, model(input_ids=input_ids).logits, rtol=0, atol=0)


def test_a_folder_of_pickled_weights_is_refused_not_unpickled(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match=r"model\.safetensors"):
        PlantForMultiLabelClassification.from_pretrained(tmp_path)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        AutoModel.from_pretrained(tmp_path)


def test_saved_folder_ships_the_remote_code(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    assert (tmp_path / "configuration_plant.py").exists() and (tmp_path / "modeling_plant.py").exists()
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_plant.PlantForMultiLabelClassification"
    assert auto_map["AutoConfig"] == "configuration_plant.PlantConfig"


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_remote_code_load_in_a_process_that_never_imports_plant_hf(tmp_path, name):
    model = tiny_model(name, num_labels=4, chunk_size=5)
    model.save_pretrained(tmp_path / "model")
    input_ids = random_ids(2, 13)
    torch.save(input_ids, tmp_path / "ids.pt")
    expected = model(input_ids=input_ids).logits
    run_without_plant_hf(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification

        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        same = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert type(model).__name__ == "PlantForMultiLabelClassification", type(model)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ids = torch.load({str(tmp_path / "ids.pt")!r})
        torch.save(model(input_ids=ids).logits.detach(), {str(tmp_path / "logits.pt")!r})
        assert torch.equal(same(input_ids=ids).logits, model(input_ids=ids).logits)
        assert "plant_hf" not in sys.modules
        """,
        tmp_path,
    )
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected.detach(), rtol=0, atol=0)
    assert list((tmp_path / "hf_home" / "modules" / "transformers_modules").rglob("modeling_plant.py"))


@pytest.mark.parametrize(
    ("name", "checkpoint_class"),
    [
        ("llama", LlamaForCausalLM),
        ("llama", LlamaModel),
        ("mistral", MistralForCausalLM),
        ("phi3", Phi3ForCausalLM),
        ("bert", BertModel),
        ("bert", BertForMaskedLM),
    ],
)
def test_from_backbone_loads_every_backbone_weight(tmp_path, name, checkpoint_class):
    torch.manual_seed(0)
    source = checkpoint_class(tiny_backbone(name)).eval()
    source.save_pretrained(tmp_path)
    model = PlantForMultiLabelClassification.from_backbone(str(tmp_path), id2label=ID2LABEL, chunk_size=16).eval()
    assert model.config.id2label == ID2LABEL and model.config.chunk_size == 16
    base = source.base_model
    backbone_weights = {k: v for k, v in base.state_dict().items() if not k.startswith("pooler.")}
    loaded = model.model.state_dict()
    assert backbone_weights.keys() == loaded.keys()
    for key, value in backbone_weights.items():
        assert torch.equal(loaded[key], value), key
    input_ids = random_ids(2, 7)
    torch.testing.assert_close(model.encode(input_ids).hidden_states, base(input_ids=input_ids).last_hidden_state)


def test_from_backbone_initialises_the_new_head(tmp_path):
    LlamaForCausalLM(tiny_backbone("llama")).save_pretrained(tmp_path)
    head = PlantForMultiLabelClassification.from_backbone(str(tmp_path), num_labels=500).score
    for weights in (head.label_queries, head.label_weights, head.key.weight):
        assert torch.isfinite(weights).all() and 0.015 < weights.std() < 0.025
    assert torch.all(head.label_bias == 0) and torch.all(head.salience.weight == 0)


def test_the_load_report_lists_only_what_is_wrong_with_the_backbone(tmp_path):
    """The new head is expected to be missing from a backbone checkpoint; a backbone weight that is missing is not,
    and a saved PLANT model missing its head is reported as any incomplete checkpoint is."""
    from safetensors.torch import load_file, save_file
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    LlamaForCausalLM(tiny_backbone("llama")).save_pretrained(tmp_path)
    with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
        model = PlantForMultiLabelClassification.from_backbone(str(tmp_path), num_labels=3)
    assert "MISSING" not in captured.out
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.norm.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
        PlantForMultiLabelClassification.from_backbone(str(tmp_path), num_labels=3)
    assert "model.norm.weight" in captured.out and "score." not in captured.out
    model.save_pretrained(tmp_path / "plant")
    weights = load_file(str(tmp_path / "plant" / "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if k != "score.label_bias"}, str(tmp_path / "plant" / "model.safetensors")
    )
    with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
        PlantForMultiLabelClassification.from_pretrained(tmp_path / "plant")
    assert "score.label_bias" in captured.out and "MISSING" in captured.out


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (extra `quant`)")
def test_from_backbone_with_4bit_quantization(tmp_path):
    from transformers import BitsAndBytesConfig

    LlamaForCausalLM(tiny_backbone("llama")).save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = PlantForMultiLabelClassification.from_backbone(
        str(tmp_path), num_labels=3, quantization_config=quantization, device_map="cpu"
    )
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert type(model.score.key) is torch.nn.Linear
    assert {p.dtype for p in model.score.parameters()} == {torch.float32}
    out = model(input_ids=random_ids(2, 6), labels=torch.ones(2, 3))
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


def test_from_backbone_keeps_the_head_in_fp32(tmp_path):
    LlamaForCausalLM(tiny_backbone("llama")).to(torch.bfloat16).save_pretrained(tmp_path)
    model = PlantForMultiLabelClassification.from_backbone(str(tmp_path), num_labels=3, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.score.parameters()} == {torch.float32}
    logits = model(input_ids=random_ids(2, 6)).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path / "plant")
    reloaded = AutoModel.from_pretrained(tmp_path / "plant", dtype=torch.bfloat16)
    assert {p.dtype for p in reloaded.score.parameters()} == {torch.float32}


def test_from_backbone_passes_the_attention_implementation(tmp_path):
    LlamaForCausalLM(tiny_backbone("llama")).save_pretrained(tmp_path)
    for implementation in ("eager", "sdpa"):
        model = PlantForMultiLabelClassification.from_backbone(
            str(tmp_path), num_labels=2, attn_implementation=implementation
        )
        assert model.model.config._attn_implementation == implementation


@requires_minilm
def test_from_backbone_on_the_real_minilm_checkpoint():
    path = minilm_path()
    model = PlantForMultiLabelClassification.from_backbone(path, id2label=ID2LABEL, chunk_size=128).eval()
    reference = AutoModel.from_pretrained(path).eval()
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(path)(
        ["chest pain and elevated troponin", "a tumour of the kidney"], padding=True, return_tensors="pt"
    )
    expected = reference(**batch).last_hidden_state
    states = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(states.hidden_states[mask], expected[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_stock_text_classification_pipeline_gives_sigmoid_scores(tokenizer, name):
    model = tiny_model(name, num_labels=4)
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = {label: index for index, label in ID2LABEL.items()}
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=3)
    texts = ["w5 w9 w17 w33", "w100 w4"]
    predictions = classifier(texts)
    batch = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    probabilities = torch.sigmoid(model(**batch).logits)
    for row, ranked in enumerate(predictions):
        assert len(ranked) == 3
        expected = probabilities[row].topk(3)
        assert [entry["label"] for entry in ranked] == [ID2LABEL[int(i)] for i in expected.indices]
        torch.testing.assert_close(torch.tensor([entry["score"] for entry in ranked]), expected.values)
    assert isinstance(AutoModelForSequenceClassification.from_config(model.config), PlantForMultiLabelClassification)


def test_a_checkpoint_of_the_earlier_head_names_loads_the_same(tmp_path):
    """Models saved while the head was `label_attention` (its projection `value`) load into `score`."""
    from safetensors.torch import load_file, save_file

    model = tiny_model("bert", num_labels=4, label_value_dim=8)
    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    earlier = {
        key.replace("score.value_projection.", "label_attention.value.").replace("score.", "label_attention."): value
        for key, value in weights.items()
    }
    assert "label_attention.value.weight" in earlier
    save_file(earlier, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    loaded = reloaded.state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[name], value) for name, value in model.state_dict().items())
    # Equal weights, not bitwise-equal logits: a loaded tensor's memory alignment may pick another CPU kernel.
    ids = random_ids(2, 7)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
