"""Stage 6 of the recipe: the retrieval memory, every training document's mean token state as a key with its label set
(`PlantDocumentMemory`); the evaluation stage tunes its weight in the model's probabilities on dev and saves it with
the model."""

import dataclasses
from dataclasses import field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers.utils import logging

from ..data import PlantDataCollator, tokenize_split
from ..files import atomic_path
from ..modeling_plant import MEMORY_FILE, PlantDocumentMemory, PlantForMultiLabelClassification
from ..training.trainer import XMCTrainer
from .data import RunContext, inference_inputs, pad_token_id
from .options import stage_options

logger = logging.get_logger(__name__)


@stage_options("memory", "Retrieval memory", at_least={"memory_top_k": 1})
class MemoryArguments:
    """The retrieval memory: the training documents nearest to a document vote for their labels."""

    memory: bool = field(
        default=True,
        metadata={
            "help": "Keep every training document's mean token state with its labels; a document's memory score for "
            "a label is the softmax weight of its nearest training documents that carry it, mixed into the model's "
            "probabilities with a weight tuned on dev (the memory is dropped where that weight is 0). Saved as the "
            "model's memory.safetensors and used wherever the model is. --memory false: no memory."
        },
    )
    memory_top_k: int = field(default=32, metadata={"help": "Training documents retrieved per document."})
    memory_temperature: float = field(
        default=0.05, metadata={"help": "Temperature of the softmax over the retrieved documents' cosine similarity."}
    )


class _DocumentEmbeddings(nn.Module):
    """The model's `document_embeddings` as a forward pass, so that Trainer's prediction loop batches and shards it."""

    def __init__(self, model: PlantForMultiLabelClassification):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        token_states: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        # Named inputs: Trainer hands a model only the batch columns its forward names.
        embeddings = self.model.document_embeddings(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, token_states=token_states
        )
        return {"embeddings": embeddings}


def document_embeddings(
    context: RunContext, model: PlantForMultiLabelClassification, documents, collator, stage: str
) -> torch.Tensor:
    """Each of `documents`' mean token state, L2-normalised, `(documents, hidden)`, in their order, by Trainer's
    prediction loop (`stage` names its progress bar): the memory's keys and the label tree's document vectors."""
    arguments = dataclasses.replace(context.training, output_dir=str(context.folder))
    trainer = XMCTrainer(
        model=_DocumentEmbeddings(model), args=arguments, eval_dataset=documents, data_collator=collator, stage=stage
    )
    return torch.from_numpy(trainer.predict(documents).predictions)


def description_embeddings(
    context: RunContext, model: PlantForMultiLabelClassification, labels: list[str]
) -> torch.Tensor:
    """The descriptions of these catalogue labels, each read as a document, `(labels, hidden)`."""
    texts = Dataset.from_dict({"id": labels, "text": [context.descriptions[label] for label in labels]})
    args = context.args
    tokenized, _ = tokenize_split(
        texts.add_column("labels", [[] for _ in labels]),
        context.tokenizer,
        context.vocabulary,
        args.chunk_size,
        args.max_chunks,
        "label descriptions",
    )
    collator = PlantDataCollator(num_labels=0, pad_token_id=pad_token_id(model))
    return document_embeddings(
        context, model, tokenized.select_columns(["input_ids"]), collator, "memory: label descriptions"
    )


def build_memory(
    context: RunContext, model: PlantForMultiLabelClassification, splits: tuple[str, ...], descriptions: bool = True
) -> PlantDocumentMemory:
    """The memory of the documents of `splits`, with their labels among the model's, and (`descriptions`) the
    catalogue's descriptions of the labels that no training document carries."""
    keys = torch.cat(
        [
            document_embeddings(context, model, *inference_inputs(context, model, split), f"memory: {split}")
            for split in splits
        ]
    )
    label_sets = [labels for split in splits for labels in context.tokenized(split)["label_ids"]]
    vocabulary = context.vocabulary
    described = [vocabulary.labels[i] for i in np.flatnonzero(vocabulary.counts == 0)]
    described = [label for label in described if label in context.descriptions] if descriptions else []
    label_side = None
    if described:
        ids = [vocabulary.label2id[label] for label in described]
        label_side = (description_embeddings(context, model, described), ids)
    args = context.args
    return PlantDocumentMemory.from_entries(
        keys, label_sets, model.config.num_labels, args.memory_top_k, args.memory_temperature, label_side
    )


def memory_stage(context: RunContext, model_folder: Path) -> PlantDocumentMemory | None:
    """The memory of the training split (`<output_dir>/memory/memory.safetensors`, kept when already there)."""
    if not context.args.memory:
        return None
    path = context.folder / "memory" / MEMORY_FILE
    context.begin_stage("retrieval memory", path)
    args = context.args
    if path.exists():
        return PlantDocumentMemory.read(str(path), len(context.vocabulary), args.memory_top_k, args.memory_temperature)
    model = PlantForMultiLabelClassification.from_pretrained(model_folder, dtype=args.dtype).eval()
    memory = build_memory(context, model, ("train",))
    if context.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            memory.save(str(partial))
        logger.info(
            f"retrieval memory: {len(memory)} training documents, {memory.labels.numel()} labels, "
            f"{memory.description_labels.numel()} descriptions of labels without training documents -> {path}"
        )
    return memory


__all__ = ["MemoryArguments", "build_memory", "document_embeddings", "memory_stage"]
