"""The standard PEFT recipe for a sequence classifier works on a PLANT model as on any `*ForSequenceClassification`:
LoRA on the backbone, the head trained whole and saved with the adapter, reload and merge giving the same logits."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

from conftest import BACKBONES, random_ids, tiny_model

# PEFT knows no default LoRA targets for Phi-3 (nor for Phi3ForSequenceClassification): the user names them.
EXPLICIT_TARGETS = {"phi3": ["qkv_proj"]}


def seq_cls_lora(name: str) -> LoraConfig:
    return LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=EXPLICIT_TARGETS.get(name))


def lora_module_names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}


@pytest.mark.parametrize("name", ["llama", "mistral", "phi3", "bert"])
def test_seq_cls_recipe_trains_saves_reloads_and_merges(name, tmp_path):
    torch.manual_seed(0)
    adapted = get_peft_model(tiny_model(name, num_labels=5), seq_cls_lora(name))
    # LoRA sits on the backbone only, on the modules PEFT picks for the backbone's own family.
    assert lora_module_names(adapted) == set(EXPLICIT_TARGETS.get(name) or PEFT_DEFAULTS[name])
    assert not any("lora_" in key and ".score." in key for key, _ in adapted.named_parameters())
    trainable = {key for key, parameter in adapted.named_parameters() if parameter.requires_grad}
    assert any(".score.modules_to_save." in key and key.endswith("label_weights") for key in trainable)
    assert not any("embed" in key for key in trainable)

    ids, labels = random_ids(2, 12), torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    adapted.train()
    # The keyword arguments PEFT's sequence-classification wrapper passes on, as Trainer calls it.
    loss = adapted(input_ids=ids, labels=labels, output_hidden_states=False, output_attentions=False).loss
    loss.backward()
    optimizer.step()
    adapted.eval()
    with torch.no_grad():
        trained = adapted(input_ids=ids).logits
    assert not torch.allclose(trained, tiny_model(name, num_labels=5)(input_ids=ids).logits)

    adapted.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_model(name, num_labels=5), str(tmp_path / "adapter")).eval()
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained)
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, rtol=1e-5, atol=1e-5)
    assert type(merged).__name__ == "PlantForMultiLabelClassification"


def test_bert_targets_named_as_for_any_bert_classifier():
    """`query` and `value` name BERT's attention projections, never the head (whose projection is not `value`)."""
    adapted = get_peft_model(
        tiny_model("bert", label_value_dim=8), LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"])
    )
    assert lora_module_names(adapted) == {"query", "value"}


def test_defaults_cover_each_known_family_alone():
    """Every family the default targets are built from selects exactly PEFT's defaults for that family."""
    from plant_hf.modeling_plant import PEFT_DEFAULT_FAMILIES

    for name in sorted(set(PEFT_DEFAULT_FAMILIES) & set(BACKBONES)):
        adapted = get_peft_model(tiny_model(name), LoraConfig(task_type="SEQ_CLS"))
        assert lora_module_names(adapted) == set(PEFT_DEFAULTS[name]), name


def test_hidden_states_are_the_states_the_head_read():
    model = tiny_model("llama", chunk_size=8)
    ids = random_ids(2, 20)
    out = model(input_ids=ids, output_hidden_states=True)
    (states,) = out.hidden_states
    assert states.shape == (2, 24, 32)  # three chunks of 8
    streaming = tiny_model("llama", chunk_size=8, streaming=True)(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(streaming.hidden_states[0], states)
    assert model(input_ids=ids).hidden_states is None
