"""Corpus readers, the label vocabulary, chunked tokenisation and the batch collator."""

from .chunking import TruncationReport, tokenize_split
from .collator import PlantDataCollator
from .labels import LabelVocabulary, UnseenLabels
from .predictions import PredictionRecord, read_predictions, write_predictions
from .readers import (
    FORMATS,
    Corpus,
    DataFormatError,
    ReadReport,
    detect_format,
    load_corpus,
    read_attentionxml,
    read_caml_csv,
    read_hub,
    read_jsonl,
    read_xmc_base,
)

__all__ = [
    "FORMATS",
    "Corpus",
    "DataFormatError",
    "LabelVocabulary",
    "PlantDataCollator",
    "PredictionRecord",
    "ReadReport",
    "TruncationReport",
    "UnseenLabels",
    "detect_format",
    "load_corpus",
    "read_attentionxml",
    "read_caml_csv",
    "read_hub",
    "read_jsonl",
    "read_predictions",
    "read_xmc_base",
    "tokenize_split",
    "write_predictions",
]
