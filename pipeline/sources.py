"""Corpus sources: turn a SRC string into parquet files, plan them into row-group slices, and stream documents.

SRC is a local parquet file, directory or glob; an `hf://datasets/...` path (resolved by huggingface_hub's fsspec
filesystem); any other fsspec URL (`s3://`, `gs://`, … when its filesystem package is installed); or nothing, for
the bundled sample. Files are planned into *slices* of consecutive row groups so that one huge parquet file still
spreads over many workers, and every slice streams one row group at a time (never a whole file in memory).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_TEXT_COLUMN = "text"
DEFAULT_ID_COLUMN = "id"
DEFAULT_SLICE_BYTES = 64 << 20  # uncompressed text per slice: bounds a worker's memory and sets shard size


class SourceError(ValueError):
    """A source that cannot be read, with the offending file (and row) in the message."""


def bundled_sample() -> str:
    """Path of the real-text sample that ships inside the package (see pipeline/data/SAMPLE.md)."""
    return str(resources.files("pipeline") / "data" / "sample.parquet")


def _filesystem(url: str):
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise SourceError(f"cannot open {url}: {e}. Install the filesystem package for this URL scheme.") from e
    return fs, path


def resolve_files(source: str | None) -> list[str]:
    """All parquet files named by `source`, sorted, as local paths or full URLs."""
    if not source:
        return [bundled_sample()]
    if "://" not in source:
        p = Path(source)
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*.parquet"))
        elif any(c in source for c in "*?["):
            files = sorted(glob.glob(source, recursive=True))
        elif p.is_file():
            files = [str(p)]
        else:
            raise SourceError(f"source {source!r} does not exist")
        if not files:
            raise SourceError(f"source {source!r} holds no .parquet files")
        return files
    fs, path = _filesystem(source)
    protocol = source.split("://", 1)[0]
    if any(c in path for c in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [f for f in fs.find(path) if f.endswith(".parquet")]
    elif fs.exists(path):
        found = [path]
    else:
        raise SourceError(f"source {source!r} does not exist or cannot be reached")
    if not found:
        raise SourceError(f"source {source!r} holds no .parquet files")
    return sorted(f"{protocol}://{f}" if "://" not in f else f for f in found)


def open_parquet(path: str) -> pq.ParquetFile:
    try:
        if "://" in path:
            fs, inner = _filesystem(path)
            return pq.ParquetFile(fs.open(inner, "rb"))
        return pq.ParquetFile(path, memory_map=True)
    except (OSError, pa.ArrowInvalid) as e:
        raise SourceError(f"{path}: not a readable parquet file ({e})") from e


@dataclass(frozen=True)
class Slice:
    """Row groups [rg_start, rg_end) of one file; rows [row_start, row_end) are the file-level row numbers."""

    index: int
    path: str
    rg_start: int
    rg_end: int
    row_start: int
    row_end: int
    text_bytes_estimate: int


def _text_column_bytes(md: pq.FileMetaData, rg: int, text_column: str) -> int:
    group = md.row_group(rg)
    for c in range(group.num_columns):
        col = group.column(c)
        if col.path_in_schema == text_column:
            return col.total_uncompressed_size
    return group.total_byte_size


def plan_slices(
    files: list[str], text_column: str = DEFAULT_TEXT_COLUMN, slice_bytes: int = DEFAULT_SLICE_BYTES
) -> list[Slice]:
    """Group each file's consecutive row groups into slices of about `slice_bytes` uncompressed text."""
    slices: list[Slice] = []
    for path in files:
        pf = open_parquet(path)
        md = pf.metadata
        if text_column not in pf.schema_arrow.names:
            raise SourceError(f"{path}: no column {text_column!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                              "pass --text-column")
        start, row, acc, start_row = 0, 0, 0, 0
        for rg in range(md.num_row_groups):
            acc += _text_column_bytes(md, rg, text_column)
            row += md.row_group(rg).num_rows
            if acc >= slice_bytes or rg == md.num_row_groups - 1:
                slices.append(Slice(len(slices), path, start, rg + 1, start_row, row, acc))
                start, acc, start_row = rg + 1, 0, row
    return slices


@dataclass
class Batch:
    """The documents of one row group: ids, texts and their file-level row numbers start at `first_row`.

    `utf8` is the texts' UTF-8 bytes back to back and their offsets, zero-copy from the Arrow column.
    """

    ids: list[str]
    texts: list[str]
    first_row: int
    utf8: tuple[np.ndarray, np.ndarray]


def _utf8_view(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64)
    _, offsets_buf, data_buf = arr.buffers()
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data, offsets - offsets[0]


def iter_batches(
    piece: Slice, text_column: str = DEFAULT_TEXT_COLUMN, id_column: str = DEFAULT_ID_COLUMN
) -> Iterator[Batch]:
    """Stream a slice one row group at a time. Null or non-string texts are an error naming file and row."""
    pf = open_parquet(piece.path)
    names = pf.schema_arrow.names
    if text_column not in names:
        raise SourceError(f"{piece.path}: no column {text_column!r} (columns: {', '.join(names)})")
    text_type = pf.schema_arrow.field(text_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise SourceError(f"{piece.path}: column {text_column!r} is {text_type}, not a string column")
    columns = [text_column] + ([id_column] if id_column in names else [])
    row = piece.row_start
    name = os.path.basename(piece.path)
    for rg in range(piece.rg_start, piece.rg_end):
        try:
            table = pf.read_row_group(rg, columns=columns)
        except (OSError, pa.ArrowInvalid) as e:
            raise SourceError(f"{piece.path}: row group {rg} cannot be read ({e})") from e
        texts = table.column(text_column).to_pylist()
        if table.column(text_column).null_count:
            bad = next(i for i, t in enumerate(texts) if t is None)
            raise SourceError(f"{piece.path}: row {row + bad} has a null {text_column!r}; drop or fill it")
        if id_column in names:
            ids = [str(x) if x is not None else f"{name}#{row + i}"
                   for i, x in enumerate(table.column(id_column).to_pylist())]
        else:
            ids = [f"{name}#{row + i}" for i in range(len(texts))]
        yield Batch(ids=ids, texts=texts, first_row=row, utf8=_utf8_view(table.column(text_column)))
        row += len(texts)


def id_fraction(doc_id: str, salt: str = "") -> float:
    """A stable number in [0, 1) from a document id: decides the validation split and the training sample."""
    h = hashlib.blake2b(f"{salt}{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def is_validation(doc_id: str, val_fraction: float) -> bool:
    return val_fraction > 0 and id_fraction(doc_id, "tokshard-val:") < val_fraction


def validation_mask(doc_ids: Sequence[str], val_fraction: float) -> np.ndarray:
    """`is_validation` for many ids at once (bool array): the salted hash state is built once and copied."""
    if val_fraction <= 0:
        return np.zeros(len(doc_ids), dtype=bool)
    salted = hashlib.blake2b(b"tokshard-val:", digest_size=8)
    mask = np.empty(len(doc_ids), dtype=bool)
    for i, doc_id in enumerate(doc_ids):
        h = salted.copy()
        h.update(doc_id.encode())
        mask[i] = int.from_bytes(h.digest(), "little") / 2.0**64 < val_fraction
    return mask
