"""Corpus readers, the label vocabulary, chunked tokenisation and the batch collator."""

from . import readers
from .chunking import TruncationReport, tokenize_split
from .collator import PlantDataCollator
from .labels import LabelVocabulary, UnseenLabels
from .predictions import PredictionRecord, read_predictions, write_predictions
from .readers import *  # noqa: F403

__all__ = [
    *readers.__all__,
    "LabelVocabulary",
    "PlantDataCollator",
    "PredictionRecord",
    "TruncationReport",
    "UnseenLabels",
    "read_predictions",
    "tokenize_split",
    "write_predictions",
]
