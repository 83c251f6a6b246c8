"""Frozen-backbone token states: encode a split once, then train rankers and heads on the cache many times.

States are stored in fp16, only at real tokens, in memory or memory-mapped from a folder on disk. A cache is keyed
by the backbone (configuration and weight checksums), the tokenizer and the tokenized documents, and a cache of
another key is refused.
"""

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from .data import PlantDataCollator
from .modeling_plant import PlantForMultiLabelClassification

STATES_FILE, TOKENS_FILE, OFFSETS_FILE, INFO_FILE = "states.npy", "token_ids.npy", "offsets.npy", "cache.json"


def backbone_fingerprint(model: PlantForMultiLabelClassification) -> str:
    """A hash of the backbone's configuration and of the bytes of each of its weights (exact: unlike a sum of the
    values, it does not depend on the number of threads that computes it)."""
    digest = hashlib.sha256(json.dumps(model.config.text_config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, parameter in model.model.named_parameters():
            digest.update(f"{name}:{parameter.dtype}:{tuple(parameter.shape)}".encode())
            digest.update(parameter.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def documents_fingerprint(dataset: Dataset) -> str:
    """A hash of the documents' ids and chunked token ids."""
    digest = hashlib.sha256()
    for identifier, chunks in zip(dataset["id"], dataset["input_ids"], strict=True):
        digest.update(str(identifier).encode())
        for chunk in chunks:
            digest.update(np.asarray(chunk, dtype=np.int32).tobytes() + b"|")
    return digest.hexdigest()[:16]


@dataclass
class TokenStateCache:
    """Token states of a split's documents: document `i` spans rows `offsets[i]:offsets[i + 1]`."""

    states: np.ndarray
    token_ids: np.ndarray
    offsets: np.ndarray
    key: str
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def hidden_size(self) -> int:
        return self.states.shape[1]

    def document(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """States `(tokens, hidden)` in fp16 and token ids `(tokens,)` of one document."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        return torch.from_numpy(np.array(self.states[start:stop])), torch.from_numpy(
            self.token_ids[start:stop].astype(np.int64)
        )

    @classmethod
    def build(
        cls,
        model: PlantForMultiLabelClassification,
        dataset: Dataset,
        key: str,
        folder: str | os.PathLike | None = None,
        batch_size: int = 16,
        pad_token_id: int = 0,
        progress: bool = True,
    ) -> "TokenStateCache":
        """Encode every document of a tokenized split (`input_ids` as chunks) with the frozen backbone.

        Documents are encoded in order of length, so that batches carry little padding. With `folder` the states
        are written to disk as they come (memory-mapped) and the folder appears only once it is complete.
        """
        from tqdm.auto import tqdm

        lengths = np.array([sum(len(chunk) for chunk in chunks) for chunks in dataset["input_ids"]], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        shape = (int(offsets[-1]), model.config.text_config.hidden_size)
        staging = None if folder is None else Path(str(folder) + ".partial")
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            states = np.lib.format.open_memmap(staging / STATES_FILE, mode="w+", dtype=np.float16, shape=shape)
        else:
            states = np.empty(shape, dtype=np.float16)
        token_ids = np.empty(shape[0], dtype=np.int32)
        collate = PlantDataCollator(num_labels=0, pad_token_id=pad_token_id)
        order = np.argsort(lengths, kind="stable")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        started = time.perf_counter()
        with torch.no_grad(), tqdm(total=len(order), desc="Encoding", unit="doc", disable=not progress) as bar:
            for begin in range(0, len(order), batch_size):
                rows = order[begin : begin + batch_size]
                batch = collate([{"input_ids": dataset[int(row)]["input_ids"]} for row in rows])
                encoded = model.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
                for position, row in enumerate(rows):
                    mask = encoded.attention_mask[position]
                    where = slice(offsets[row], offsets[row + 1])
                    states[where] = encoded.hidden_states[position][mask].to(torch.float16).cpu().numpy()
                    token_ids[where] = encoded.input_ids[position][mask].cpu().numpy()
                bar.update(len(rows))
        model.train(was_training)
        info = {"key": key, "documents": len(order), "tokens": shape[0], "hidden_size": shape[1],
                "encode_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        cache = cls(states, token_ids, offsets, key, info)
        if staging is not None:
            states.flush()
            np.save(staging / TOKENS_FILE, token_ids)
            np.save(staging / OFFSETS_FILE, offsets)
            (staging / INFO_FILE).write_text(json.dumps(info, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
            return cls.load(folder, key)
        return cache

    @classmethod
    def load(cls, folder: str | os.PathLike, key: str | None = None) -> "TokenStateCache":
        """Open a cache folder (states memory-mapped); refuse it when `key` is given and differs."""
        folder = Path(folder)
        info = json.loads((folder / INFO_FILE).read_text())
        if key is not None and info["key"] != key:
            raise ValueError(
                f"The token-state cache {folder} belongs to other data or another backbone (key {info['key']}, "
                f"expected {key}); delete it or point to another cache folder."
            )
        return cls(
            states=np.load(folder / STATES_FILE, mmap_mode="r"),
            token_ids=np.load(folder / TOKENS_FILE),
            offsets=np.load(folder / OFFSETS_FILE),
            key=info["key"],
            info=info,
        )

    @classmethod
    def get_or_build(
        cls,
        model: PlantForMultiLabelClassification,
        dataset: Dataset,
        tokenizer_fingerprint: str,
        cache_dir: str | os.PathLike | None = None,
        **build_kwargs,
    ) -> "TokenStateCache":
        """The cache of this backbone, tokenizer and split: loaded from `cache_dir` when there, built otherwise."""
        key = hashlib.sha256(
            f"{backbone_fingerprint(model)}|{tokenizer_fingerprint}|{documents_fingerprint(dataset)}".encode()
        ).hexdigest()[:20]
        if cache_dir is None:
            return cls.build(model, dataset, key, **build_kwargs)
        folder = Path(cache_dir) / key
        if (folder / INFO_FILE).exists():
            return cls.load(folder, key)
        return cls.build(model, dataset, key, folder=folder, **build_kwargs)


class CachedDocuments(torch.utils.data.Dataset):
    """A cache's documents with their label ids, as items `{"token_states", "input_ids", "label_ids"}`."""

    def __init__(self, cache: TokenStateCache, label_ids: list[list[int]]):
        if len(label_ids) != len(cache):
            raise ValueError(f"{len(label_ids)} label lists for a cache of {len(cache)} documents.")
        self.cache = cache
        self.label_ids = label_ids

    def __len__(self) -> int:
        return len(self.cache)

    def lengths(self) -> np.ndarray:
        """Each document's token count."""
        return np.diff(self.cache.offsets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        states, token_ids = self.cache.document(index)
        return {"token_states": states, "input_ids": token_ids, "label_ids": self.label_ids[index]}


@dataclass
class CachedDocumentCollator:
    """Pad cached documents to `token_states` `(batch, tokens, hidden)`, `input_ids` and `attention_mask`
    `(batch, tokens)`; with `num_labels`, also multi-hot `labels` from each document's `label_ids`."""

    num_labels: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(feature["input_ids"]) for feature in features)
        first = features[0]["token_states"]
        states = torch.zeros(len(features), length, first.shape[-1], dtype=first.dtype)
        input_ids = torch.zeros(len(features), length, dtype=torch.long)
        mask = torch.zeros(len(features), length, dtype=torch.bool)
        for row, feature in enumerate(features):
            size = len(feature["input_ids"])
            states[row, :size] = torch.as_tensor(feature["token_states"])
            input_ids[row, :size] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            mask[row, :size] = True
        batch = {"token_states": states, "input_ids": input_ids, "attention_mask": mask}
        if self.num_labels is not None:
            labels = torch.zeros(len(features), self.num_labels)
            for row, feature in enumerate(features):
                labels[row, torch.as_tensor(feature["label_ids"], dtype=torch.long)] = 1.0
            batch["labels"] = labels
        return batch


__all__ = [
    "CachedDocumentCollator",
    "CachedDocuments",
    "TokenStateCache",
    "backbone_fingerprint",
    "documents_fingerprint",
]
