"""Atomic file writes: a file that exists under its final name is complete.

Every artefact tokshard produces (shards, manifests, tokenizer files) goes through here: write to a temporary
name in the same directory, fsync the file, rename it into place, fsync the directory. A crash at any point
leaves either the old file, the new file, or an ignorable `*.tmp-*` file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARKER = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on success fsync it and rename it to `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def remove_stale_temporaries(directory: Path) -> int:
    """Delete temporaries left by a crashed writer; returns how many were removed."""
    removed = 0
    if directory.is_dir():
        for p in directory.iterdir():
            if TMP_MARKER in p.name:
                p.unlink(missing_ok=True)
                removed += 1
    return removed
