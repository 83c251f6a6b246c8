"""Batches of chunked documents with multi-hot targets built one batch at a time."""

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PlantDataCollator:
    """Pad documents to `(batch, chunks, chunk_length)` and turn their `label_ids` into `(batch, num_labels)` targets.

    Each feature's `input_ids` is a list of chunks (or one flat list of ids). Only the batch's targets are ever
    dense, so memory does not grow with the number of documents times labels.

    Example:

    ```python
    >>> collator = PlantDataCollator(num_labels=4, pad_token_id=0)
    >>> batch = collator([{"input_ids": [[5, 6, 7], [8]], "label_ids": [2]}, {"input_ids": [[9, 10]], "label_ids": []}])
    >>> batch["input_ids"].shape, batch["labels"].tolist()
    (torch.Size([2, 2, 3]), [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    ```
    """

    num_labels: int
    pad_token_id: int = 0
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        documents = [_as_chunks(feature["input_ids"]) for feature in features]
        num_chunks = max(len(chunks) for chunks in documents)
        length = max(len(chunk) for chunks in documents for chunk in chunks)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(documents), num_chunks, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, chunks in enumerate(documents):
            for index, chunk in enumerate(chunks):
                input_ids[row, index, : len(chunk)] = torch.as_tensor(chunk, dtype=torch.long)
                attention_mask[row, index, : len(chunk)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "label_ids" in features[0]:
            labels = torch.zeros(len(features), self.num_labels)
            for row, feature in enumerate(features):
                labels[row, torch.as_tensor(feature["label_ids"], dtype=torch.long)] = 1.0
            batch["labels"] = labels
        return batch


def _as_chunks(input_ids: list) -> list[list[int]]:
    return [input_ids] if input_ids and isinstance(input_ids[0], int) else list(input_ids)


__all__ = ["PlantDataCollator"]
