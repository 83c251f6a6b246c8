"""The `xmc-classification` pipeline: label probabilities of long documents, and the words behind each label."""

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Pipeline
from transformers.utils import logging

logger = logging.get_logger(__name__)

TASK = "xmc-classification"
# A model folder's list of its retrieval memory's entries (training document ids, in the memory's order).
MEMORY_DOCUMENTS_FILE = "memory_documents.json"


class PlantClassificationPipeline(Pipeline):
    """
    Multi-label classification with a PLANT model: each label's probability (sigmoid), the `top_k` most probable
    labels and/or those above a `threshold` (a probability, or `"label"`: each label's own, the `label_thresholds`
    that `plant-hf fit` tunes on the dev split), with their names. Documents longer than the model's `chunk_size` are
    cut into chunks (up to `max_chunks`) as the model was trained, and score as in `text-classification`. With
    `explain=True`, every returned label also carries the `explain_words` words its attention weighs most (sub-word
    pieces merged), with their weights (`explain_words=0`: every word, in text order), and, for a model with a
    retrieval memory, the retrieved training `documents` that carry the label, with their weight in its memory score.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> classify = pipeline("xmc-classification", model="path/to/plant-model")  # doctest: +SKIP
    >>> classify("Chest pain with elevated troponin.", top_k=3, explain=True)  # doctest: +SKIP
    [{'label': 'I21.4', 'score': 0.93, 'evidence': [{'word': 'troponin', 'weight': 0.41, ...}, ...]}, ...]
    ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(
        self,
        top_k: int | str | None = "",
        threshold: float | str | None = None,
        explain: bool | None = None,
        explain_words: int | None = None,
        lexical: bool | None = None,
        **kwargs,
    ):
        forward: dict[str, Any] = {}
        preprocess = {"lexical": lexical} if lexical is not None else {}
        if top_k != "":  # not given (as text-classification marks it): the default; None: every label
            if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k must be a number of labels of at least 1 (None: every label), got {top_k!r}.")
            forward["top_k"] = top_k
        if explain_words is not None and (not isinstance(explain_words, int) or explain_words < 0):
            raise ValueError(f"explain_words must be 0 (every word) or more, got {explain_words!r}.")
        if isinstance(threshold, int | float) and not isinstance(threshold, bool) and not 0.0 <= threshold <= 1.0:
            raise ValueError(f'threshold must be a probability in [0, 1] or "label", got {threshold!r}.')
        if threshold == "label":
            if self.model.config.label_thresholds is None:
                raise ValueError(
                    'threshold="label" needs per-label thresholds, and this model\'s config has no '
                    "`label_thresholds` (plant-hf fit tunes them on the dev split): give a probability instead."
                )
            threshold = torch.tensor(self.model.config.label_thresholds)
        elif isinstance(threshold, str):
            raise ValueError(f'threshold must be a probability or "label", got {threshold!r}.')
        if threshold is not None:
            forward["threshold"] = threshold
        if explain is not None:
            forward["explain"] = explain
        postprocess = {"explain_words": explain_words} if explain_words is not None else {}
        return preprocess, forward, postprocess

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, list | tuple):
            for index, text in enumerate(inputs):
                if not isinstance(text, str):
                    raise ValueError(
                        f"Document {index} of the {len(inputs)} given is {type(text).__name__}, not a text: the "
                        "xmc-classification pipeline classifies strings (drop or fill the missing ones)."
                    )
        return super().__call__(inputs, **kwargs)

    def lexical_channel(self):
        """The model's lexical channel, loaded once; None where its config gives it no weight."""
        if not hasattr(self, "_lexical"):
            self._lexical = None
            if getattr(self.model.config, "lexical_weight", 0.0):
                try:
                    lexical = importlib.import_module("plant_hf.lexical")
                except ImportError:
                    logger.warning_once(
                        "This model fuses a lexical channel (config.lexical_weight) that needs the plant-hf package "
                        "(pip install plant-hf); without it the probabilities are the model's alone."
                    )
                else:
                    self._lexical = lexical.model_lexical_channel(self.model)
        return self._lexical

    def preprocess(self, text: str, lexical: bool = True) -> dict[str, Any]:
        from .modeling_plant import document_pieces

        if not isinstance(text, str):
            raise ValueError(f"The xmc-classification pipeline classifies texts (strings), got {type(text).__name__}.")
        # The text in one piece, as `text-classification` reads it: the model cuts it into chunks as in training.
        encoded = self.tokenizer(
            text, return_offsets_mapping=True, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )
        ids, config = encoded["input_ids"], self.model.config
        specials = (config.chunk_prefix_ids or [], config.chunk_suffix_ids or [])
        pieces = document_pieces(list(range(len(ids))), ids, config.chunk_size, specials)
        read = sorted({position for piece in pieces[: config.max_chunks or len(pieces)] for position in piece})
        if len(read) < len(ids) and not getattr(self, "_told_truncation", False):
            self._told_truncation = True  # once a pipeline: the numbers differ from one document to the next
            logger.warning(
                f"A document of {len(ids)} tokens was read up to its first {len(read)} ({config.max_chunks} chunks "
                f"of at most {config.chunk_size} tokens: the model's max_chunks and chunk_size, as in training); "
                "the rest of its text, and of every document as long, is not read."
            )
        words = _word_ids(encoded)
        channel = self.lexical_channel() if lexical else None
        extra = {}
        if channel is not None:
            # The whole text, however much of it the model reads; labels outside the channel's top-k add 0 (padding
            # entries, index -1, become label 0 with score 0).
            top = channel.top_k([text])
            extra["lexical_indices"] = torch.from_numpy(top.indices.clip(min=0))
            extra["lexical_scores"] = torch.from_numpy(top.scores.clip(min=0.0))
        return {
            "input_ids": torch.tensor([[ids[position] for position in read]]),
            "attention_mask": torch.ones(1, len(read), dtype=torch.long),
            **extra,
            "tokens": {
                "text": text,
                "offsets": [tuple(encoded["offset_mapping"][position]) for position in read],
                "words": [words[position] for position in read],
            },
        }

    def _forward(
        self,
        model_inputs: dict[str, Any],
        top_k: int | None = 5,
        threshold: float | torch.Tensor | None = None,
        explain: bool = False,
    ) -> dict[str, Any]:
        tokens = model_inputs.pop("tokens")
        lexical = model_inputs.pop("lexical_indices", None), model_inputs.pop("lexical_scores", None)
        probabilities = self.model(**model_inputs).logits.float().sigmoid()
        if lexical[0] is not None:
            weight = self.model.config.lexical_weight
            probabilities = (1.0 - weight) * probabilities
            probabilities.scatter_add_(
                -1, lexical[0].to(probabilities.device), weight * lexical[1].float().to(probabilities.device)
            )
        width = probabilities.shape[-1] if top_k is None else min(top_k, probabilities.shape[-1])
        top = probabilities.topk(width, dim=-1)
        indices = top.indices
        if isinstance(threshold, torch.Tensor):  # one per label
            threshold = threshold.to(indices.device)[indices]
        if threshold is not None:
            indices = indices.masked_fill(top.values < threshold, -1)
        outputs = {"indices": indices, "scores": top.values, "attention_mask": model_inputs["attention_mask"]}
        if explain:
            outputs["maps"] = self.model.label_attention_maps(indices, **model_inputs)
            if getattr(self.model, "memory", None) is not None and len(self.model.memory):
                queries = self.model.document_embeddings(**model_inputs)
                outputs["neighbours"], outputs["neighbour_weights"] = self.model.memory.retrieve(queries)
        outputs["tokens"] = tokens
        return outputs

    def postprocess(self, model_outputs: dict[str, Any], explain_words: int = 5) -> list[dict[str, Any]]:
        tokens = model_outputs["tokens"]
        if isinstance(tokens, list):  # unbatched from a batch of one
            tokens = tokens[0]
        indices = model_outputs["indices"].reshape(-1).tolist()
        scores = model_outputs["scores"].reshape(-1).tolist()
        real = model_outputs["attention_mask"].reshape(-1).bool()
        predictions = []
        for position, (label, score) in enumerate(zip(indices, scores, strict=True)):
            if label < 0:
                continue
            entry: dict[str, Any] = {"label": self.model.config.id2label[label], "score": score}
            if "maps" in model_outputs:
                weights = model_outputs["maps"].reshape(len(indices), -1)[position][real].float().numpy()
                entry["evidence"] = _top_words(tokens, weights, explain_words)
            if "neighbours" in model_outputs:
                entry["documents"] = self._memory_evidence(
                    model_outputs["neighbours"], model_outputs["neighbour_weights"], label
                )
            predictions.append(entry)
        return predictions

    def _memory_evidence(self, entries: torch.Tensor, weights: torch.Tensor, label: int) -> list[dict[str, Any]]:
        """The retrieved training documents that carry `label`, with their weight in its memory score (best first),
        named by their ids where the model folder lists them."""
        entries, weights = entries.reshape(-1), weights.reshape(-1)
        carried = self.model.memory.carriers(entries.cpu(), label)
        names = self.memory_documents()
        return [
            {"id": names[entry] if names else entry, "weight": weight}
            for entry, weight in zip(entries[carried].tolist(), weights.cpu()[carried].tolist(), strict=True)
        ]

    def memory_documents(self) -> list[str] | None:
        """The ids of the memory's entries, from the model folder's list of them (None where it has none)."""
        if not hasattr(self, "_memory_documents"):
            path = Path(str(getattr(self.model, "name_or_path", ""))) / MEMORY_DOCUMENTS_FILE
            self._memory_documents = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        return self._memory_documents


def _word_ids(encoded) -> list[int | None]:
    """Which word of the text each token belongs to (None for special tokens)."""
    try:
        return encoded.word_ids()
    except (AttributeError, ValueError):  # tokenizers without word alignment: each token is its own word
        return [None if start == end else index for index, (start, end) in enumerate(encoded["offset_mapping"])]


def _top_words(tokens: dict[str, Any], weights: np.ndarray, count: int) -> list[dict[str, Any]]:
    """Merge the tokens' attention into words (sub-word pieces summed) and return the `count` heaviest words."""
    spans: dict[int, list] = {}
    for (start, end), word, weight in zip(tokens["offsets"], tokens["words"], weights, strict=False):
        if word is None or start == end:
            continue
        span = spans.setdefault(word, [start, end, 0.0])
        span[0], span[1], span[2] = min(span[0], start), max(span[1], end), span[2] + float(weight)
    chosen = sorted(spans.values(), key=lambda span: -span[2])[:count] if count > 0 else list(spans.values())
    return [
        {"word": tokens["text"][start:end], "weight": weight, "start": start, "end": end}
        for start, end, weight in chosen
    ]


__all__ = ["TASK", "PlantClassificationPipeline"]
