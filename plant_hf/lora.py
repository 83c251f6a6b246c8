"""LoRA adapters for the backbones PLANT sits on, with explicit target modules per family.

`target_modules="all-linear"` would also wrap the label attention, so the targets are named per family and
checked against the backbone before any work starts.
"""

from peft import LoraConfig
from torch import nn

LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "bert": ("query", "key", "value", "dense"),
    "roberta": ("query", "key", "value", "dense"),
    "xlm-roberta": ("query", "key", "value", "dense"),
}


def lora_config_for(
    backbone: nn.Module,
    model_type: str,
    r: int = 16,
    alpha: int | None = None,
    dropout: float = 0.05,
    target_modules: list[str] | None = None,
    prefix: str | None = None,
) -> LoraConfig:
    """A LoRA config for a backbone: the family's targets (or the given ones), each present in the backbone.

    With `prefix` (the backbone's attribute in a wrapping model, e.g. `"model"`) the targets become a pattern that
    matches only inside it, so that the label attention (whose `key` a BERT target would name too) is never wrapped.
    """
    targets = list(target_modules or LORA_TARGET_MODULES.get(model_type, ()))
    if not targets:
        raise ValueError(
            f"No LoRA target modules are known for backbone type {model_type!r}; name them "
            f"(e.g. --lora_target_modules q_proj v_proj). Known types: {sorted(LORA_TARGET_MODULES)}."
        )
    present = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, nn.Linear)}
    missing = [target for target in targets if target not in present]
    if missing:
        raise ValueError(
            f"The backbone ({model_type}) has no linear layer named {missing}; its linear layers are "
            f"{sorted(present)[:20]}. Name LoRA targets that exist."
        )
    pattern = rf"{prefix}\..*\.({'|'.join(targets)})" if prefix else targets
    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=pattern, bias="none")


__all__ = ["LORA_TARGET_MODULES", "lora_config_for"]
