"""Readers of multi-label text corpora into `datasets.Dataset`s with columns `id`, `text` and `labels`.

Layouts: JSON lines (plain or gzip), MIMIC-III CSV as CAML writes it, AttentionXML text files, PECOS xmc-base,
and any Hub dataset. A record that cannot be used (malformed line, missing column, empty text, labels that are
not a list) raises a [`DataFormatError`] naming the file, the line and the fix, or, with `on_error="skip"`, is
skipped and counted in the split's [`ReadReport`]. Nothing is dropped silently.
"""

import csv
import gzip
import hashlib
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, Features, List, Value

OnError = Literal["raise", "skip"]
FORMATS = ("jsonl", "caml", "attentionxml", "xmc-base", "hub")
SPLITS = ("train", "dev", "test")
# Names other tools give the development split.
_DEV_ALIASES = ("dev", "valid", "validation", "val")
_FEATURES = Features({"id": Value("string"), "text": Value("string"), "labels": List(Value("string"))})
_MAX_EXAMPLES = 5


class DataFormatError(ValueError):
    """A record or file that cannot be read as asked; the message names where and how to fix it."""


@dataclass
class ReadReport:
    """What reading one split did: documents read, records skipped by reason, and where the first ones were."""

    source: str
    documents: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    collapsed_duplicate_labels: int = 0

    def problem(self, where: str, reason: str, fix: str, on_error: OnError) -> None:
        """Raise, or count a skipped record (keeping the first few locations)."""
        if on_error == "raise":
            raise DataFormatError(
                f"{where}: {reason}. {fix} (or skip and count such records: --on_error skip, on_error='skip' in Python)"
            )
        self.skipped[reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def __str__(self) -> str:
        text = f"{self.source}: {self.documents} documents"
        if self.skipped:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in self.skipped.most_common())
            text += f", {sum(self.skipped.values())} skipped ({reasons}; first: {'; '.join(self.examples)})"
        if self.collapsed_duplicate_labels:
            text += f", {self.collapsed_duplicate_labels} repeated labels within documents collapsed"
        return text


class _Collector:
    """Validates records and accumulates the columns of one split."""

    def __init__(self, source: str, on_error: OnError):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        self.report = ReadReport(source=source)
        self.on_error = on_error
        self.columns: dict[str, list] = {"id": [], "text": [], "labels": []}
        self.first_seen: dict[str, str] = {}

    def add(self, where: str, identifier: Any, text: Any, labels: Any) -> None:
        identifier = str(identifier)
        if identifier in self.first_seen:
            return self.report.problem(
                where,
                f"id {identifier!r} was already given to the document at {self.first_seen[identifier]}",
                "Give each document of a split its own id",
                self.on_error,
            )
        if not isinstance(text, str):
            return self.report.problem(
                where, f"text is {type(text).__name__}, not a string", "Give each record a text string", self.on_error
            )
        if not text.strip():
            return self.report.problem(where, "empty text", "Remove the record or give it a text", self.on_error)
        if not isinstance(labels, list | tuple) or not all(isinstance(label, str | int) for label in labels):
            return self.report.problem(
                where,
                f"labels is {_describe(labels)}, not a list of strings",
                'Write labels as a list, e.g. "labels": ["A01", "B20"]',
                self.on_error,
            )
        unique = list(dict.fromkeys(str(label) for label in labels))
        self.report.collapsed_duplicate_labels += len(labels) - len(unique)
        self.first_seen[identifier] = where
        self.columns["id"].append(identifier)
        self.columns["text"].append(text)
        self.columns["labels"].append(unique)
        self.report.documents += 1

    def dataset(self) -> tuple[Dataset, ReadReport]:
        return Dataset.from_dict(self.columns, features=_FEATURES), self.report


def _describe(value: Any) -> str:
    if isinstance(value, list | tuple):
        kinds = sorted({type(item).__name__ for item in value if not isinstance(item, str | int)})
        return f"a list holding {', '.join(kinds)}"
    return "missing" if value is None else f"a {type(value).__name__}"


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The raw lines of a plain or gzipped file, numbered from 1; a compressed stream that breaks off is an error
    naming the file and the last whole line."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    number = 0
    try:
        with (gzip.open if gzipped else open)(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                yield number, raw
    except (EOFError, OSError, zlib.error) as error:
        raise DataFormatError(
            f"{path}: the compressed data breaks off after line {number} ({error}): the file is truncated or "
            "damaged. Download or compress it again."
        ) from None


def _decoded(where: str, number: int, raw: bytes, report: ReadReport, on_error: OnError) -> str | None:
    """A raw line as text (a byte-order mark at the start of the file dropped), or None when it is not UTF-8."""
    try:
        return _utf8(number, raw)
    except UnicodeDecodeError as error:
        report.problem(where, _not_utf8(raw, error), "Save the file as UTF-8", on_error)
        return None


def _utf8(number: int, raw: bytes) -> str:
    """Line `number` (from 1) of a file as text; a byte-order mark at the start of the file is dropped."""
    return raw.decode("utf-8-sig" if number == 1 else "utf-8")


def _not_utf8(raw: bytes, error: UnicodeDecodeError) -> str:
    return f"byte {raw[error.start]:#04x} at column {error.start + 1} is not UTF-8"


def json_lines(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Each non-blank line of a JSON-lines file (plain or gzipped), parsed, with where it is (`file:line`); a line
    that is not UTF-8 or not JSON is an error naming it."""
    for number, raw in _numbered_lines(Path(path)):
        where = f"{path}:{number}"
        try:
            line = _utf8(number, raw)
        except UnicodeDecodeError as error:
            raise DataFormatError(f"{where}: {_not_utf8(raw, error)}. Save the file as UTF-8.") from None
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{where}: malformed JSON ({error.msg}). Fix the line.") from None
        yield where, value


def _text_lines(path: Path, report: ReadReport, on_error: OnError, bad: set[int]) -> Iterator[str]:
    """A file's lines as text, line endings kept, for the readers that parse more than one line at a time. A line
    that is not UTF-8 is reported where it is (an error unless skipping), its number added to `bad`, and given
    with its bad bytes replaced, so that the lines after it keep their places."""
    for number, raw in _numbered_lines(path):
        line = _decoded(f"{path}:{number}", number, raw, report, on_error)
        if line is None:
            bad.add(number)
            line = raw.decode("utf-8", errors="replace")
        yield line


def _lines(path: Path, report: ReadReport, on_error: OnError, bad: set[int]) -> list[str]:
    """A line-per-record file's lines, without their line endings."""
    return [line.rstrip("\r\n") for line in _text_lines(path, report, on_error, bad)]


def read_jsonl(
    path: str | os.PathLike,
    text_field: str = "text",
    labels_field: str | None = "labels",
    id_field: str = "id",
    on_error: OnError = "raise",
) -> tuple[Dataset, ReadReport]:
    """One JSON object per line, e.g. `{"id": "d1", "text": "...", "labels": ["A01"]}`; plain or gzip.

    With `labels_field=None` the documents need no labels (to be predicted); labels given anyway are kept.
    """
    path = Path(path)
    collector = _Collector(str(path), on_error)
    for number, raw in _numbered_lines(path):
        where = f"{path}:{number}"
        line = _decoded(where, number, raw, collector.report, on_error)
        if line is None or not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            collector.report.problem(
                where, f"malformed JSON ({error.msg} at column {error.colno})", "Fix the line", on_error
            )
            continue
        if not isinstance(record, dict):
            collector.report.problem(where, "the line is not a JSON object", "Write one object per line", on_error)
            continue
        missing = [name for name in (text_field, labels_field) if name is not None and name not in record]
        if missing:
            collector.report.problem(
                where,
                f"missing field {', '.join(repr(name) for name in missing)}",
                f"Name the fields in use with --text_field / --labels_field (text_field=... and labels_field=... in "
                f"Python; keys here: {sorted(record)})",
                on_error,
            )
            continue
        labels = record.get(labels_field or "labels", [])
        collector.add(where, record.get(id_field, f"{path.name}:{number}"), record[text_field], labels)
    return collector.dataset()


def read_caml_csv(
    path: str | os.PathLike,
    text_column: str = "TEXT",
    labels_column: str = "LABELS",
    id_column: str = "HADM_ID",
    label_separator: str = ";",
    on_error: OnError = "raise",
) -> tuple[Dataset, ReadReport]:
    """MIMIC-III notes as CAML writes them (`SUBJECT_ID,HADM_ID,TEXT,LABELS,length`; codes `;`-separated).

    Columns are found by name without regard to case (`text` finds `TEXT`).
    """
    path = Path(path)
    collector = _Collector(str(path), on_error)
    csv.field_size_limit(1 << 30)
    bad: set[int] = set()
    reader = csv.DictReader(_text_lines(path, collector.report, on_error, bad))
    header = reader.fieldnames or []
    by_case = {name.casefold(): name for name in header}
    missing = [name for name in (text_column, labels_column) if name.casefold() not in by_case]
    if missing:
        raise DataFormatError(
            f"{path}:1: missing column {', '.join(repr(name) for name in missing)} (header: {header}). "
            "Name the columns in use with --text_field / --labels_field (text_column=... and labels_column=... "
            "in Python)."
        )
    text_column, labels_column = by_case[text_column.casefold()], by_case[labels_column.casefold()]
    id_column = by_case.get(id_column.casefold(), id_column)
    last = reader.line_num
    for row in reader:
        first, last = last + 1, reader.line_num
        where = f"{path}:{first}"
        if bad.intersection(range(first, last + 1)):
            continue  # reported where the bytes are
        if None in row or any(value is None for value in row.values()):
            collector.report.problem(
                where, f"the record has not {len(header)} fields", "Quote fields with commas", on_error
            )
            continue
        codes = [code.strip() for code in row[labels_column].split(label_separator) if code.strip()]
        collector.add(where, row.get(id_column) or f"{path.name}:{first}", row[text_column], codes)
    return collector.dataset()


def read_attentionxml(
    texts_path: str | os.PathLike, labels_path: str | os.PathLike, on_error: OnError = "raise"
) -> tuple[Dataset, ReadReport]:
    """AttentionXML layout: `<split>_texts.txt` (a document per line) and `<split>_labels.txt` (space-separated)."""
    texts_path, labels_path = Path(texts_path), Path(labels_path)
    collector = _Collector(str(texts_path), on_error)
    bad: set[int] = set()
    texts = _lines(texts_path, collector.report, on_error, bad)
    label_lines = _lines(labels_path, collector.report, on_error, bad)
    if len(texts) != len(label_lines):
        raise DataFormatError(
            f"{texts_path} has {len(texts)} lines but {labels_path} has {len(label_lines)}; "
            "each document needs exactly one line of labels (an empty line for none)."
        )
    for number, (text, labels) in enumerate(zip(texts, label_lines, strict=True), start=1):
        if number not in bad:
            collector.add(f"{texts_path}:{number}", f"{texts_path.stem}:{number}", text, labels.split())
    return collector.dataset()


def read_xmc_base(folder: str | os.PathLike, split: str, on_error: OnError = "raise") -> tuple[Dataset, ReadReport]:
    """PECOS xmc-base layout: `X.<trn|tst>.txt`, `Y.<trn|tst>.npz` and `output-items.txt` (label names)."""
    from scipy import sparse

    folder = Path(folder)
    short = {"train": "trn", "test": "tst"}.get(split, split)
    texts_path, labels_path = folder / f"X.{short}.txt", folder / f"Y.{short}.npz"
    collector = _Collector(str(texts_path), on_error)
    bad: set[int] = set()
    texts = _lines(texts_path, collector.report, on_error, bad)
    matrix = sparse.load_npz(labels_path).tocsr()
    if matrix.shape[0] != len(texts):
        raise DataFormatError(
            f"{labels_path} has {matrix.shape[0]} rows but {texts_path} has {len(texts)} lines; they must match."
        )
    names_path = folder / "output-items.txt"
    if names_path.exists():
        names = _lines(names_path, collector.report, "raise", set())
        if len(names) < matrix.shape[1]:
            raise DataFormatError(f"{names_path} names {len(names)} labels but {labels_path} has {matrix.shape[1]}.")
    else:
        names = [str(index) for index in range(matrix.shape[1])]
    for row, text in enumerate(texts):
        if row + 1 in bad:
            continue
        labels = [names[index] for index in matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]]
        collector.add(f"{texts_path}:{row + 1}", f"{short}:{row + 1}", text, labels)
    return collector.dataset()


def read_hub(
    dataset_id: str,
    split: str,
    text_field: str = "text",
    labels_field: str = "labels",
    id_field: str = "id",
    on_error: OnError = "raise",
    **load_kwargs,
) -> tuple[Dataset, ReadReport]:
    """A split of a Hub dataset (or a local `datasets` script/folder) through `datasets.load_dataset`."""
    from datasets import load_dataset

    source = load_dataset(dataset_id, split=split, **load_kwargs)
    missing = [name for name in (text_field, labels_field) if name not in source.column_names]
    if missing:
        raise DataFormatError(
            f"{dataset_id} [{split}]: missing column {', '.join(repr(n) for n in missing)} "
            f"(columns: {source.column_names}). Name the columns with text_field=... and labels_field=...."
        )
    names = _class_label_names(source.features[labels_field])
    collector = _Collector(f"{dataset_id} [{split}]", on_error)
    for index, record in enumerate(source):
        labels = record[labels_field]
        if names is not None and isinstance(labels, list):
            labels = [names[label] for label in labels]
        collector.add(f"{dataset_id} [{split}] row {index}", record.get(id_field, index), record[text_field], labels)
    return collector.dataset()


def _class_label_names(feature) -> list[str] | None:
    inner = getattr(feature, "feature", None)
    return getattr(inner, "names", None)


@dataclass
class Corpus:
    """The splits of a corpus and what reading each one did."""

    splits: DatasetDict
    reports: dict[str, ReadReport]
    source: str
    format: str

    def __str__(self) -> str:
        return f"{self.source} ({self.format}):\n" + "\n".join(f"  {name}: {r}" for name, r in self.reports.items())

    @property
    def fingerprint(self) -> str:
        """A hash of what the splits hold (documents as read, not file times): it changes when the corpus does."""
        digest = hashlib.sha256()
        for name in sorted(self.splits):
            digest.update(f"{name}:{self.splits[name]._fingerprint};".encode())
        return digest.hexdigest()[:16]


def _looks_local(source: str) -> bool:
    """A path of this machine rather than a Hub id: absolute, relative to `.` or `~`, deeper than owner/name, or
    a file name with a data extension."""
    return (
        source.startswith((".", "/", "~", "\\"))
        or source.count("/") > 1
        or source.endswith((".jsonl", ".json", ".gz", ".csv", ".txt", ".npz"))
    )


def detect_format(source: str | os.PathLike) -> str:
    """The layout of a local folder or file, or `hub` for a Hub dataset id (`name` or `owner/name`); a path that
    cannot be a Hub id and does not exist is an error, not a Hub request."""
    path = Path(source)
    if not path.exists():
        if _looks_local(str(source)):
            raise DataFormatError(f"{source}: no such file or folder (and not a Hub dataset id: owner/name).")
        return "hub"
    if path.is_file():
        if path.name.endswith((".csv", ".csv.gz")):
            return "caml"
        if path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            return "jsonl"
        raise DataFormatError(f"{path}: unknown file type; use a .jsonl(.gz) or .csv(.gz) file, or a folder.")
    names = {child.name for child in path.iterdir()}
    if any(name.startswith(("train.jsonl", "train.json")) for name in names):
        return "jsonl"
    if "X.trn.txt" in names:
        return "xmc-base"
    if "train_texts.txt" in names:
        return "attentionxml"
    if any(name.startswith("train") and name.endswith((".csv", ".csv.gz")) for name in names):
        return "caml"
    raise DataFormatError(
        f"{path}: no known layout (expected train.jsonl[.gz], train*.csv, train_texts.txt or X.trn.txt). "
        f"Files here: {sorted(names)[:10]}"
    )


def _split_file(folder: Path, split: str, patterns: Iterable[str]) -> Path | None:
    names = _DEV_ALIASES if split == "dev" else (split,)
    found = [folder / pattern.format(name) for name in names for pattern in patterns]
    found = [path for path in found if path.exists()]
    if len(found) > 1:
        raise DataFormatError(
            f"{folder}: several files for the {split} split ({[p.name for p in found]}); "
            "keep one, or read them one at a time."
        )
    return found[0] if found else None


def load_corpus(
    source: str | os.PathLike,
    format: str = "auto",
    splits: Iterable[str] = SPLITS,
    on_error: OnError = "raise",
    text_field: str = "text",
    labels_field: str = "labels",
    caml_variant: str = "full",
    **hub_kwargs,
) -> Corpus:
    """Read the train/dev/test splits of a corpus from a folder, a single file (read as `test`), or the Hub.

    Splits absent from the source are left out (AttentionXML and xmc-base have no dev split). The train split
    must exist when it is asked for.
    """
    fmt = detect_format(source) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; choose one of {FORMATS} or 'auto'.")
    wanted = list(splits)
    fields = {"text_field": text_field, "labels_field": labels_field}
    if fmt == "hub":
        from datasets import get_dataset_split_names

        available = get_dataset_split_names(str(source), **hub_kwargs)
        readers = {split: _hub_reader(str(source), split, on_error, fields, hub_kwargs, available) for split in wanted}
    elif Path(source).is_file():
        reader = read_jsonl if fmt == "jsonl" else read_caml_csv
        readers = {"test": partial(reader, source, on_error=on_error)}
    else:
        readers = {split: _folder_reader(Path(source), fmt, split, on_error, fields, caml_variant) for split in wanted}
    datasets, reports = {}, {}
    for split, reader in readers.items():
        result = reader() if reader is not None else None
        if result is not None:
            datasets[split], reports[split] = result
            if not reports[split].documents:
                raise DataFormatError(
                    f"{reports[split]}: the {split} split holds no usable document. Fill it, or remove it (a "
                    "missing dev split is carved from train, a missing test split falls back to dev)."
                )
    if "train" in wanted and "train" not in datasets:
        raise DataFormatError(f"{source}: no training split found ({fmt} layout).")
    return Corpus(splits=DatasetDict(datasets), reports=reports, source=str(source), format=fmt)


def _folder_reader(folder: Path, fmt: str, split: str, on_error: OnError, fields: dict, caml_variant: str):
    """A function reading `split` from a local folder, or None when the folder has no such split."""
    if fmt == "jsonl":
        file = _split_file(folder, split, ("{}.jsonl", "{}.jsonl.gz", "{}.json", "{}.json.gz"))
        return file and partial(read_jsonl, file, on_error=on_error, **fields)
    if fmt == "caml":
        patterns = (f"{{}}_{caml_variant}.csv", f"{{}}_{caml_variant}.csv.gz", "{}.csv", "{}.csv.gz")
        file = _split_file(folder, split, patterns)
        columns = {"text_column": fields["text_field"], "labels_column": fields["labels_field"]}
        return file and partial(read_caml_csv, file, on_error=on_error, **columns)
    if fmt == "attentionxml":
        file = _split_file(folder, split, ("{}_texts.txt",))
        return file and partial(
            read_attentionxml, file, file.with_name(file.name.replace("_texts", "_labels")), on_error
        )
    short = {"train": "trn", "test": "tst"}.get(split)
    return partial(read_xmc_base, folder, split, on_error) if short and (folder / f"X.{short}.txt").exists() else None


def _hub_reader(dataset_id: str, split: str, on_error: OnError, fields: dict, kwargs: dict, available: list[str]):
    """A function reading `split` of a Hub dataset, or None when the dataset has no such split."""
    hub_split = "validation" if split == "dev" else split
    if hub_split not in available:
        return None
    return partial(read_hub, dataset_id, hub_split, on_error=on_error, **fields, **kwargs)


__all__ = [
    "FORMATS",
    "Corpus",
    "DataFormatError",
    "ReadReport",
    "detect_format",
    "json_lines",
    "load_corpus",
    "read_attentionxml",
    "read_caml_csv",
    "read_hub",
    "read_jsonl",
    "read_xmc_base",
]
