"""Writing files so that a reader never sees half of one: everything is written under a temporary name beside its
destination and renamed over it once complete (a rename within a folder is atomic)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to, a file or a folder; it replaces `path` when the block ends
    without error and is removed when it raises, so `path` holds either its old content or the whole new one. What
    a writer killed earlier left at the temporary path is cleared first."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    _remove(partial)
    try:
        yield partial
    except BaseException:
        _remove(partial)
        raise
    if partial.is_dir():
        _remove(path)
    partial.replace(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any, indent: int = 1) -> None:
    """Write `data` as JSON, atomically (numpy and torch values as numbers or lists, other objects as strings)."""
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(data, indent=indent, ensure_ascii=False, default=_plain), encoding="utf-8")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


__all__ = ["atomic_path", "write_json"]
