"""Ranker artifacts and their transplant into a classifier's label attention."""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from ..files import atomic_path, write_json
from ..modeling_plant import PlantForMultiLabelClassification, PlantLabelAttention
from .mig import ArtifactMismatchError, tokenizer_fingerprint

WEIGHTS_FILE = "ranker.safetensors"
CONFIG_FILE = "ranker_config.json"
ADAPTER_FOLDER = "adapter"
PLANTABLE_PER_LABEL = ("label_queries", "prior_label_factors")


@dataclass
class RankerConfig:
    """What a ranker was trained for, from, and how well it ranks."""

    kind: str
    labels: list[str]
    label_fingerprint: str
    tokenizer_name: str
    tokenizer_fingerprint: str
    backbone: str
    hidden_size: int
    attention_dim: int
    prior_rank: int | None
    vocab_size: int
    lora: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ranker:
    """A trained ranker: the planted tensors, what they fit, and (with LoRA) the backbone adapter's folder."""

    state: dict[str, torch.Tensor]
    config: RankerConfig
    adapter: Path | None = None


def plantable_state(attention: PlantLabelAttention, contextual: bool = True) -> dict[str, torch.Tensor]:
    """The trained token-scoring tensors of a ranker's attention (without the contextual part for a static one)."""
    return {
        name: value.detach().cpu().contiguous()
        for name, value in attention.state_dict().items()
        if name in attention.PLANTABLE and (contextual or name.startswith("prior_"))
    }


def save_ranker(folder: str | os.PathLike, attention: PlantLabelAttention, config: RankerConfig, peft_backbone=None):
    """Write a ranker folder: planted tensors (safetensors), its config, and the LoRA adapter when there is one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as partial:
        save_file(plantable_state(attention, contextual=config.kind != "static"), str(partial))
    if peft_backbone is not None:
        peft_backbone.save_pretrained(folder / ADAPTER_FOLDER)
    config.lora = peft_backbone is not None
    write_json(folder / CONFIG_FILE, asdict(config))
    return folder


def load_ranker(folder: str | os.PathLike) -> Ranker:
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{folder} holds no ranker ({WEIGHTS_FILE}); train one with plant-hf pretrain.")
    config = RankerConfig(**json.loads((folder / CONFIG_FILE).read_text()))
    adapter = folder / ADAPTER_FOLDER if config.lora else None
    return Ranker(load_file(str(folder / WEIGHTS_FILE)), config, adapter)


def plant(
    model: PlantForMultiLabelClassification,
    ranker: Ranker | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[str]:
    """Transplant a ranker into a classifier: its token-scoring weights, reordered to the classifier's labels, and,
    when the ranker adapted the backbone with LoRA, the adapter merged into the classifier's backbone.

    Refuses a ranker trained for other labels, another tokenizer (when `tokenizer` is given) or other sizes.
    Returns the names of what was planted.
    """
    if not isinstance(ranker, Ranker):
        ranker = load_ranker(ranker)
    config = ranker.config
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    if set(labels) != set(config.labels) or len(labels) != len(config.labels):
        raise ArtifactMismatchError(
            f"The ranker was trained for {len(config.labels)} labels; this classifier has {len(labels)} "
            f"({len(set(labels) - set(config.labels))} of them unknown to the ranker). Train the ranker on the "
            "classifier's training split, or build the classifier with the ranker's labels (id2label)."
        )
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != config.tokenizer_fingerprint:
        raise ArtifactMismatchError(
            f"The ranker was trained with tokenizer {config.tokenizer_name!r}; this tokenizer splits text "
            "differently. Train the ranker with the classifier's backbone and tokenizer."
        )
    if config.hidden_size != model.config.text_config.hidden_size:
        raise ArtifactMismatchError(
            f"The ranker was trained on a backbone of hidden size {config.hidden_size}; this classifier's backbone "
            f"has {model.config.text_config.hidden_size}. Train the ranker with the classifier's backbone."
        )
    if "prior_label_factors" in ranker.state and not model.score.has_prior:
        raise ArtifactMismatchError(
            f"The ranker carries a static prior of rank {config.prior_rank}; build the classifier with "
            f"static_prior_rank={config.prior_rank} to plant it."
        )
    order = torch.tensor([config.labels.index(label) for label in labels])
    state = {name: value[order] if name in PLANTABLE_PER_LABEL else value for name, value in ranker.state.items()}
    planted = model.plant(state)
    if ranker.adapter is not None:
        from peft import PeftModel

        model.model = PeftModel.from_pretrained(model.model, str(ranker.adapter)).merge_and_unload()
        planted.append("backbone LoRA (merged)")
    return planted


__all__ = ["Ranker", "RankerConfig", "load_ranker", "plant", "plantable_state", "save_ranker"]
