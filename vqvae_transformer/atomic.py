"""Atomic file writes: a unique temporary file in the target's folder, then ``os.replace``.

A reader never sees a half-written file, an interrupted write leaves the previous file intact, and several
processes writing the same path (one per rank under ``accelerate launch``) never share a temporary name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, record: Any, indent: int = 2) -> Path:
    """Write ``record`` as JSON (non-JSON values through ``str``) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(record, indent=indent, default=str) + "\n")
