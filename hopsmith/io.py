"""Run-directory I/O that never loses what was already written.

JSON files are written to a temporary name in the same directory and renamed into place (atomic on
POSIX), so a crash leaves either the old file or the new one. Result streams are JSONL appended one
flushed, fsynced line per finished item; a torn last line from a crash is dropped on the next read and
the rest is kept.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable


def json_object(text: str) -> dict:
    """`text` parsed as one JSON object; a ValueError saying what is wrong (where the JSON breaks, or what
    other type it holds), for the caller to put after the place it read it from."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _atomic_write(path: str | Path, write) -> None:
    """Call `write(file)` on a temp file beside `path`, fsync, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    def write(f):
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")

    _atomic_write(path, write)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write a whole JSONL file atomically (temp name, then rename)."""
    def write(f):
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    _atomic_write(path, write)


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict]:
    """Rows of a JSONL file. A torn final line (an interrupted append) is skipped, and with `repair`
    the file is rewritten without it. A bad line anywhere else is an error naming file and line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    rows, torn = [], False
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == last:
                torn = True
                continue
            raise ValueError(f"{path}:{i + 1}: not valid JSON ({exc.msg})") from None
    if torn and repair:
        write_jsonl(path, rows)
    return rows


class JsonlAppender:
    """Append rows one at a time, each durable once `append` returns. The file (and its directory) is created
    with the first row, so a run that fails before its first result leaves no empty file behind."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = None

    def append(self, row: dict) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
