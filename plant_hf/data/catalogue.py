"""A label catalogue: every label of the task with what it means (ICD-10-CM codes and their titles, a subject
thesaurus), whether training documents use it or not.

Read from JSON lines `{"label": ..., "description": ...}`, a CSV whose header names a `label` and a `description`
column, or one JSON object `{label: description}`; a duplicate, missing or empty entry is refused with its file and
line.
"""

import csv
import json
import os
from pathlib import Path

from .readers import DataFormatError, json_lines

# A model folder's label catalogue, as one JSON object label -> description.
LABEL_DESCRIPTIONS_FILE = "label_descriptions.json"


def read_label_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """Each label of the catalogue at `path` and its description, in the file's order."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such label catalogue (a file).")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".json"):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            line = path.read_bytes()[: error.start].count(b"\n") + 1
            raise DataFormatError(f"{path}:{line}: not UTF-8 ({error.reason}). Save the file as UTF-8.") from None
        entries = _csv_entries(path, text) if suffix == ".csv" else _object_entries(path, text)
    else:
        entries = _json_lines_entries(path)
    descriptions: dict[str, str] = {}
    where: dict[str, str] = {}
    for place, label, description in entries:
        if not isinstance(label, str) or not label.strip():
            raise DataFormatError(f"{place}: no label (a non-empty string) in this entry.")
        if not isinstance(description, str) or not description.strip():
            raise DataFormatError(f"{place}: label {label!r} has no description (a non-empty string).")
        if label in descriptions:
            first = where[label].rsplit(":", 1)[-1]
            raise DataFormatError(
                f"{place}: label {label!r} is described a second time (first on line {first}); keep one."
            )
        descriptions[label], where[label] = description.strip(), place
    if not descriptions:
        raise DataFormatError(f"{path}: the label catalogue is empty.")
    return descriptions


def _json_lines_entries(path: Path) -> list[tuple[str, object, object]]:
    entries = []
    for where, record in json_lines(path):
        if not isinstance(record, dict):
            raise DataFormatError(f'{where}: give one object a line, {{"label": ..., "description": ...}}.')
        entries.append((where, record.get("label"), record.get("description")))
    return entries


def _csv_entries(path: Path, text: str) -> list[tuple[str, object, object]]:
    rows = csv.reader(text.splitlines())
    header = [name.strip().lower() for name in next(rows, [])]
    if "label" not in header or "description" not in header:
        raise DataFormatError(f"{path}:1: the header must name a `label` and a `description` column, got {header}.")
    label, description = header.index("label"), header.index("description")
    return [
        (
            f"{path}:{line}",
            row[label] if len(row) > label else None,
            row[description] if len(row) > description else None,
        )
        for line, row in enumerate(rows, start=2)
        if row
    ]


def _object_entries(path: Path, text: str) -> list[tuple[str, object, object]]:
    try:
        pairs = json.loads(text, object_pairs_hook=lambda items: items)  # keeps a key given twice
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}: not JSON ({error.msg}).") from None
    if not isinstance(pairs, list):
        raise DataFormatError(f'{path}: give one JSON object of label -> description, {{"A01": "..."}}.')
    entries, start = [], 0
    for label, description in pairs:
        found = text.find(json.dumps(label), start)
        start = found + 1 if found >= 0 else start
        entries.append((f"{path}:{text.count(chr(10), 0, max(found, 0)) + 1}", label, description))
    return entries


__all__ = ["LABEL_DESCRIPTIONS_FILE", "read_label_descriptions"]
