"""Prediction files: one JSON object per line, `{"id": ..., "labels": [best, ...], "scores": [...]}`."""

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_path
from .readers import DataFormatError, json_lines


@dataclass
class PredictionRecord:
    """One document's ranked labels and their scores (probabilities)."""

    id: str
    labels: list[str]
    scores: list[float]


def read_predictions(path: str | os.PathLike) -> list[PredictionRecord]:
    """Read a prediction file; a malformed line is an error naming the file and line."""
    path = Path(path)
    records, seen = [], set()
    for where, record in json_lines(path):
        if not isinstance(record, dict) or "id" not in record:
            raise DataFormatError(f'{where}: a prediction needs an "id" matching the evaluated document.')
        labels, scores = record.get("labels"), record.get("scores")
        if not isinstance(labels, list) or not isinstance(scores, list) or len(labels) != len(scores):
            raise DataFormatError(
                f'{where}: "labels" and "scores" must be lists of equal length (ranked labels, their scores).'
            )
        if str(record["id"]) in seen:
            raise DataFormatError(f"{where}: document {record['id']!r} is predicted twice.")
        seen.add(str(record["id"]))
        records.append(PredictionRecord(str(record["id"]), [str(x) for x in labels], [float(x) for x in scores]))
    return records


def write_predictions(
    path: str | os.PathLike, ids: Iterable[str], labels: Iterable[Sequence[str]], scores: Iterable[Sequence[float]]
) -> None:
    """Write ranked predictions, one document per line, atomically (a partial file never replaces a whole one)."""
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as handle:
        for identifier, row_labels, row_scores in zip(ids, labels, scores, strict=True):
            record = {"id": identifier, "labels": list(row_labels), "scores": [round(float(s), 6) for s in row_scores]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


__all__ = ["PredictionRecord", "read_predictions", "write_predictions"]
