import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, BertConfig, LlamaConfig

from plant_hf import PlantConfig

from conftest import tiny_backbone


def test_nested_backbone_from_instance_dict_and_default(backbone_name):
    backbone = tiny_backbone(backbone_name)
    from_instance = PlantConfig(text_config=backbone, num_labels=4)
    from_dict = PlantConfig(text_config=backbone.to_dict(), num_labels=4)
    assert type(from_dict.text_config) is type(backbone)
    assert from_dict.text_config.hidden_size == from_instance.text_config.hidden_size == 32
    assert from_instance.label_attention_dim == 32
    assert from_instance.get_text_config() is backbone
    assert isinstance(PlantConfig().text_config, LlamaConfig)


def test_defaults_make_a_multi_label_classifier():
    config = PlantConfig(text_config=tiny_backbone("bert"), id2label={0: "A01", 1: "B02", 2: "C03"})
    assert config.num_labels == 3
    assert config.label2id == {"A01": 0, "B02": 1, "C03": 2}
    assert config.problem_type == "multi_label_classification"
    assert config.inattention_k is None and config.chunk_size is None and not config.streaming


def test_save_and_load_round_trip(tmp_path):
    config = PlantConfig(
        text_config=tiny_backbone("phi3"),
        id2label={i: f"L{i}" for i in range(5)},
        inattention_k=7,
        chunk_size=16,
        max_chunks=4,
        streaming=True,
        label_block_size=2,
        label_attention_dim=8,
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PlantConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.text_config.model_type == "phi3"
    assert loaded.auto_map["AutoModelForSequenceClassification"] == "modeling_plant.PlantForMultiLabelClassification"


def test_num_labels_disagreeing_with_id2label_is_refused():
    with pytest.raises(ValueError, match="num_labels=3 disagrees with id2label, which names 2 labels"):
        PlantConfig(text_config=tiny_backbone("llama"), num_labels=3, id2label={0: "a", 1: "b"})


def test_label2id_disagreeing_with_id2label_is_refused():
    with pytest.raises(StrictDataclassClassValidationError, match="label2id must be the inverse of id2label"):
        PlantConfig(text_config=tiny_backbone("llama"), id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0})


def test_unknown_backbone_type_is_named():
    with pytest.raises(ValueError, match="Unknown backbone type 'not-a-model'"):
        PlantConfig(text_config={"model_type": "not-a-model", "hidden_size": 8}, num_labels=2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("chunk_size", 0, "`chunk_size` must be a positive integer"),
        ("inattention_k", -1, "`inattention_k` must be a positive integer"),
        ("label_block_size", 0, "`label_block_size` must be a positive integer"),
        ("head_dropout", 1.5, "`head_dropout` must be in"),
        ("problem_type", "single_label_classification", "PLANT is a multi-label classifier"),
        ("label_thresholds", [0.5, 0.5], "holds 2 thresholds for 3 labels"),
    ],
)
def test_invalid_head_settings_are_refused(field, value, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        PlantConfig(text_config=BertConfig(hidden_size=32, num_attention_heads=4), num_labels=3, **{field: value})


def test_fits_head_options_are_plant_config_fields():
    import dataclasses

    from plant_hf.recipe.finetuning import FinetuningArguments

    config, options = PlantConfig(), {item.name for item in dataclasses.fields(FinetuningArguments)}
    for name in FinetuningArguments.head_options:
        assert hasattr(config, name) and name in options, name
