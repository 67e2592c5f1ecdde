"""Corpus sources: turn a SRC string into parquet files, plan them into row-group slices, and stream documents.

SRC is a local parquet file, directory or glob; an `hf://datasets/...` path (resolved by huggingface_hub's fsspec
filesystem); any other fsspec URL (`s3://`, `gs://`, … when its filesystem package is installed); or nothing, for
the bundled sample. Files are planned into *slices* of consecutive row groups so that one huge parquet file still
spreads over many workers, and every slice streams one row group at a time (never a whole file in memory).
Planning reads every file's parquet footer; on remote storage each read is a round trip or two, so footers are
read concurrently by a bounded thread pool (`PLAN_THREADS`) and planning time grows with files / threads.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokshard.pipeline import storage

DEFAULT_TEXT_COLUMN = "text"
DEFAULT_ID_COLUMN = "id"
DEFAULT_SLICE_BYTES = 64 << 20  # uncompressed text per slice: bounds a worker's memory and sets shard size
# Footer reads in flight while planning remote files (URLs): I/O-bound (the fsspec clients wait on the network
# with the GIL released), so many more than the cores; bounded so 10,000 files never mean 10,000 connections.
# Local files are planned by one thread: a local footer read is CPU work, and threads only added GIL contention
# (2,000 local files: 0.29 s serial, 1.11 s with 32 threads; docs/benchmarks.md).
PLAN_THREADS = 32


class SourceError(ValueError):
    """A source that cannot be read, with the offending file (and row) in the message."""


def bundled_sample() -> str:
    """Path of the real-text sample that ships inside the package (see pipeline/data/SAMPLE.md)."""
    return str(resources.files("tokshard.pipeline") / "data" / "sample.parquet")


def _filesystem(url: str):
    """storage.filesystem, its error as a SourceError (a source the run cannot read)."""
    try:
        return storage.filesystem(url)
    except storage.StorageError as e:
        raise SourceError(str(e)) from e


def resolve_files(source: str | None) -> list[str]:
    """All parquet files named by `source`, sorted, as local paths or full URLs."""
    if not source:
        return [bundled_sample()]
    if "://" not in source:
        p = Path(source)
        # Absolute paths: the same files from another working directory are the same source when resuming.
        if p.is_dir():
            files = sorted(str(f.absolute()) for f in p.rglob("*.parquet"))
        elif any(c in source for c in "*?["):
            files = sorted(os.path.abspath(f) for f in glob.glob(source, recursive=True))
        elif p.is_file():
            files = [str(p.absolute())]
        else:
            raise SourceError(f"source {source!r} does not exist")
        if not files:
            raise SourceError(f"source {source!r} holds no .parquet files")
        return files
    fs, path = _filesystem(source)
    protocol = source.split("://", 1)[0]
    try:
        if any(c in path for c in "*?["):
            found = fs.glob(path)
        elif fs.isdir(path):
            found = [f for f in fs.find(path) if f.endswith(".parquet")]
        elif fs.exists(path):
            found = [path]
        else:
            raise SourceError(f"source {source!r} does not exist or cannot be reached")
    except SourceError:
        raise
    except Exception as e:  # network, auth and offline errors come in many types, one per filesystem package
        raise SourceError(f"cannot list {source}: {type(e).__name__}: {e}. Check the URL, the network and the "
                          "credentials (for hf://, HF_TOKEN; HF_HUB_OFFLINE=1 forbids the hub)") from e
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
    except Exception as e:  # remote filesystems raise their own error types
        raise SourceError(f"{path}: cannot be opened ({type(e).__name__}: {e})") from e


@dataclass(frozen=True)
class Slice:
    """Row groups [rg_start, rg_end) of one file; rows [row_start, row_end) are the file-level row numbers
    (row_end may stop inside the last row group under --limit-docs).

    A slice is named by its file's position in the sorted file list and its number within that file, so a file
    that failed and was fixed, or a trial run with fewer documents, does not rename any other slice's shards.
    `file_fingerprint` summarises the file's parquet footer: resuming over a changed file is refused.
    """

    file_index: int
    number: int
    path: str
    rg_start: int
    rg_end: int
    row_start: int
    row_end: int
    text_bytes_estimate: int
    file_fingerprint: str

    @property
    def name(self) -> str:
        return f"{self.file_index:05d}-{self.number:04d}"


@dataclass
class Plan:
    """The slices of a run, and the files that could not be planned (each message names the file)."""

    files: list[str]
    slices: list[Slice]
    problems: list[str]


def _text_column_bytes(md: pq.FileMetaData, rg: int, text_column: str) -> int:
    group = md.row_group(rg)
    for c in range(group.num_columns):
        col = group.column(c)
        if col.path_in_schema == text_column:
            return col.total_uncompressed_size
    return group.total_byte_size


def check_text_column(path: str, schema: pa.Schema, text_column: str) -> None:
    if text_column not in schema.names:
        raise SourceError(f"{path}: no column {text_column!r} (columns: {', '.join(schema.names)}); "
                          "pass --text-column")
    text_type = schema.field(text_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise SourceError(f"{path}: column {text_column!r} is {text_type}, not a string column")


def _footer_fingerprint(md: pq.FileMetaData) -> str:
    groups = [(md.row_group(i).num_rows, md.row_group(i).total_byte_size) for i in range(md.num_row_groups)]
    return hashlib.sha256(repr((md.num_rows, md.serialized_size, groups)).encode()).hexdigest()[:16]


def _read_footer(path: str, text_column: str) -> pq.FileMetaData | SourceError:
    """One file's footer, checked for the text column; the error instead of raising it (it is a plan problem)."""
    try:
        pf = open_parquet(path)
        check_text_column(path, pf.schema_arrow, text_column)
        return pf.metadata
    except SourceError as e:
        return e


def _plan_file(file_index: int, path: str, md: pq.FileMetaData, text_column: str, slice_bytes: int,
               row_budget: int | None) -> list[Slice]:
    fingerprint = _footer_fingerprint(md)
    slices: list[Slice] = []
    start, row, acc, start_row = 0, 0, 0, 0
    for rg in range(md.num_row_groups):
        acc += _text_column_bytes(md, rg, text_column)
        row += md.row_group(rg).num_rows
        stop = row_budget is not None and row >= row_budget
        if acc >= slice_bytes or rg == md.num_row_groups - 1 or stop:
            end_row = min(row, row_budget) if row_budget is not None else row
            slices.append(Slice(file_index, len(slices), path, start, rg + 1, start_row, end_row, acc, fingerprint))
            start, acc, start_row = rg + 1, 0, row
        if stop:
            break
    return slices


def plan_slices(
    files: list[str],
    text_column: str = DEFAULT_TEXT_COLUMN,
    slice_bytes: int = DEFAULT_SLICE_BYTES,
    limit_docs: int | None = None,
    threads: int | None = None,
) -> Plan:
    """Group each file's consecutive row groups into slices of about `slice_bytes` uncompressed text.

    A file that cannot be read or lacks a string text column becomes a problem of the plan, not an exception:
    the other files still run. `limit_docs` keeps only the first documents (in file order), for trial runs.
    Footers are read by `threads` threads (default: PLAN_THREADS when any file is a URL, else 1), in windows of
    files so that a `limit_docs` run reads few beyond what it needs; the plan is the same as a serial one's.
    """
    if threads is None:
        threads = PLAN_THREADS if any("://" in f for f in files) else 1
    slices: list[Slice] = []
    problems: list[str] = []
    rows = 0
    window = max(1, threads) * 4
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="tokshard-plan") as pool:
        for first in range(0, len(files), window):
            paths = files[first : first + window]
            footers = pool.map(_read_footer, paths, [text_column] * len(paths))
            for file_index, path, md in zip(range(first, first + len(paths)), paths, footers, strict=True):
                budget = None if limit_docs is None else limit_docs - rows
                if budget is not None and budget <= 0:
                    return Plan(files, slices, problems)
                if isinstance(md, SourceError):
                    problems.append(str(md))
                    continue
                planned = _plan_file(file_index, path, md, text_column, slice_bytes, budget)
                rows += sum(s.row_end - s.row_start for s in planned)
                slices += planned
    return Plan(files, slices, problems)


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
    check_text_column(piece.path, pf.schema_arrow, text_column)
    columns = [text_column] + ([id_column] if id_column in names else [])
    row = piece.row_start
    name = os.path.basename(piece.path)
    for rg in range(piece.rg_start, piece.rg_end):
        try:
            # One thread: a task has one CPU, and pyarrow's pool costs ~0.1 CPU s to start in a fresh process.
            table = pf.read_row_group(rg, columns=columns, use_threads=False)
        except (OSError, pa.ArrowInvalid) as e:
            raise SourceError(f"{piece.path}: row group {rg} cannot be read ({e})") from e
        if row + table.num_rows > piece.row_end:  # --limit-docs ends this slice inside a row group
            table = table.slice(0, piece.row_end - row)
        try:
            texts = table.column(text_column).to_pylist()
        except UnicodeDecodeError:
            raise SourceError(invalid_utf8_message(piece.path, table.column(text_column), row, text_column)) from None
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


def invalid_utf8_message(path: str, column: pa.ChunkedArray, first_row: int, text_column: str) -> str:
    for i, raw in enumerate(column.cast(pa.large_binary()).to_pylist()):
        try:
            (raw or b"").decode("utf-8")
        except UnicodeDecodeError as e:
            return (f"{path}: row {first_row + i}: {text_column!r} is not valid UTF-8 (byte {raw[e.start]:#04x} at "
                    f"offset {e.start}); repair or drop that row")
    return f"{path}: rows from {first_row}: {text_column!r} is not valid UTF-8"


def id_fraction(doc_id: str, salt: str = "") -> float:
    """A stable number in [0, 1) from a document id: decides the validation split and the training sample."""
    h = hashlib.blake2b(f"{salt}{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def validation_mask(doc_ids: Sequence[str], val_fraction: float) -> np.ndarray:
    """Which documents go to the validation split (bool array): `id_fraction(id, "tokshard-val:") < val_fraction`,
    with the salted hash state built once and copied."""
    if val_fraction <= 0:
        return np.zeros(len(doc_ids), dtype=bool)
    salted = hashlib.blake2b(b"tokshard-val:", digest_size=8)
    mask = np.empty(len(doc_ids), dtype=bool)
    for i, doc_id in enumerate(doc_ids):
        h = salted.copy()
        h.update(doc_id.encode())
        mask[i] = int.from_bytes(h.digest(), "little") / 2.0**64 < val_fraction
    return mask
