"""Atomic file writes: every output goes through a temporary file in the same folder and a rename.

A reader, or a stage that crashed half way, never sees half a file: the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file over ``path`` (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    """UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(
    payload: Any, path: str | Path, *, allow_nan: bool = False, sort_keys: bool = False, default: Any = str
) -> Path:
    """Indented JSON with a final newline; strict (no NaN tokens) unless ``allow_nan``."""
    text = json.dumps(payload, indent=2, allow_nan=allow_nan, sort_keys=sort_keys, default=default) + "\n"
    return write_text_atomic(text, path)


def write_parquet_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """A data frame as Parquet, without its index."""
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
