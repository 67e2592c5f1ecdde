"""Token shards: one Arrow IPC stream file per shard, and a zero-copy memory-mapped reader.

A shard is an uncompressed Arrow IPC *stream* with two columns, `id` (string, the source document id) and
`tokens` (list<uint16>, or list<uint32> for vocabularies above 65536), `<|bos|>` first in every row, written as
ONE record batch so that all token ids of a shard lie contiguously in the file. That makes the reader's flat
view (`ShardReader.tokens`) a numpy array over the memory map: no copy, no parse, however large the shard.
`datasets.Dataset.from_file`, `pyarrow.ipc.open_stream` and `polars.read_ipc_stream` load it as-is.

Shards may live on an object store (pipeline/storage.py): `write_shard` streams them there, and `ShardReader`
memory-maps a local copy from storage's sha256-verified cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokshard.pipeline import storage

FORMAT_VERSION = "1"
SUFFIX = ".arrow"


def shard_schema(dtype: np.dtype, tokenizer_sha256: str, bos_id: int) -> pa.Schema:
    value_type = {np.dtype(np.uint16): pa.uint16(), np.dtype(np.uint32): pa.uint32()}[np.dtype(dtype)]
    return pa.schema(
        [pa.field("id", pa.string(), nullable=False), pa.field("tokens", pa.list_(value_type), nullable=False)],
        metadata={
            "tokshard.format_version": FORMAT_VERSION,
            "tokshard.tokenizer_sha256": tokenizer_sha256,
            "tokshard.dtype": np.dtype(dtype).name,
            "tokshard.bos_id": str(bos_id),
        },
    )


@dataclass(frozen=True)
class WrittenShard:
    path: Path | str  # a local Path, or a URL
    documents: int
    tokens: int
    size: int
    sha256: str
    stored: str  # what the store reported right after the write (storage.stored_tag), for cheap resume checks


def write_shard(
    path: str | os.PathLike[str],
    ids: Sequence[str],
    tokens: np.ndarray,
    offsets: np.ndarray,
    *,
    tokenizer_sha256: str,
    bos_id: int,
) -> WrittenShard:
    """Write one shard atomically (local: temp name, fsync, rename; object store: one upload that appears whole or
    not at all) and return its size and sha256, hashed while it is written.

    `tokens` is the flat id array of all rows, `offsets` the int64 row boundaries (len = rows + 1).
    """
    if len(offsets) != len(ids) + 1 or int(offsets[-1]) != len(tokens):
        raise ValueError(f"offsets do not describe {len(ids)} rows over {len(tokens)} tokens")
    schema = shard_schema(tokens.dtype, tokenizer_sha256, bos_id)
    # int64 offsets would make the column a large_list; shards stay below 2**31 tokens by construction.
    if len(tokens) >= 2**31:
        raise ValueError(f"a shard holds at most 2**31-1 tokens, got {len(tokens)}; plan smaller slices")
    token_col = pa.ListArray.from_arrays(_numpy_array(offsets.astype(np.int32)), _numpy_array(tokens))
    batch = pa.record_batch([_string_array(ids), token_col], schema=schema)
    digest = hashlib.sha256()
    with storage.open_write(path) as f:
        sink = _HashingSink(f, digest)
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(batch)
    found = storage.info(path)
    if found is None:
        raise OSError(f"{path} was written but the store does not list it")
    return WrittenShard(path=str(path) if storage.is_url(path) else Path(path), documents=len(ids),
                        tokens=len(tokens), size=int(found["size"]), sha256=digest.hexdigest(),
                        stored=storage.stored_tag(found))


def _numpy_array(values: np.ndarray) -> pa.Array:
    """A zero-copy Arrow view of a 1-d numpy array. Not `pa.array(values)`: that imports pandas (0.25-0.3 s, a
    third of a small run's fixed time) to ask whether `values` is a pandas object."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _string_array(strings: Sequence[str]) -> pa.StringArray:
    """An Arrow string array built from its buffers (UTF-8 bytes and int32 offsets), for the same reason as
    `_numpy_array`: `pa.array(list_of_str)` imports pandas too."""
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"{len(encoded)} ids hold {offsets[-1]} bytes; a shard's ids hold at most 2**31-1")
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets.astype(np.int32)),
                                       pa.py_buffer(b"".join(encoded)))


class _HashingSink:
    """A file-like object that hashes what passes through it, so a shard is hashed while it is written."""

    def __init__(self, f, digest) -> None:
        self._f, self._digest = f, digest
        self.closed = False

    def write(self, data) -> int:
        mv = memoryview(data)
        self._digest.update(mv)
        return self._f.write(mv)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self.closed = True


class ShardReader:
    """Memory-maps a shard: `tokens` is a flat zero-copy numpy view, `offsets` the row boundaries.

    `path` may be a URL: the shard is then read from storage's local cache (verified against `sha256` when given,
    as the trainer does with the manifest's)."""

    def __init__(self, path: str | os.PathLike[str], sha256: str | None = None) -> None:
        self.path = path if storage.is_url(path) else Path(path)
        try:
            self._source = pa.memory_map(str(storage.local_file(path, sha256)), "r")
            self.table = pa.ipc.open_stream(self._source).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{self.path} is not a readable tokshard shard: {e}") from e
        meta = {k.decode(): v.decode() for k, v in (self.table.schema.metadata or {}).items()}
        if meta.get("tokshard.format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.path}: shard format version {meta.get('tokshard.format_version')!r}, "
                             f"this tokshard reads {FORMAT_VERSION!r}")
        self.metadata = meta
        self.tokenizer_sha256 = meta["tokshard.tokenizer_sha256"]
        self.bos_id = int(meta["tokshard.bos_id"])
        self.dtype = np.dtype(meta["tokshard.dtype"])
        col = self.table.column("tokens")
        if col.num_chunks > 1:
            raise ValueError(f"{self.path} has {col.num_chunks} record batches; tokshard shards have one")
        if col.num_chunks == 0 or len(col) == 0:
            self.tokens = np.zeros(0, dtype=self.dtype)
            self.offsets = np.zeros(1, dtype=np.int64)
        else:
            lists = col.chunk(0)
            raw_offsets = lists.offsets.to_numpy(zero_copy_only=True)
            start, end = int(raw_offsets[0]), int(raw_offsets[-1])
            self.tokens = lists.values.to_numpy(zero_copy_only=True)[start:end]
            self.offsets = raw_offsets.astype(np.int64) - start

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def ids(self) -> list[str]:
        return self.table.column("id").to_pylist()

    def row(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def close(self) -> None:
        self.table = None  # type: ignore[assignment]
        self._source.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
