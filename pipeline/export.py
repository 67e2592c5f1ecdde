"""Export a tokshard run or `tokshard mix` plan to the token files other trainers read: nanoGPT / llm.c `.bin` files
and Megatron-LM's indexed dataset (`.bin` + `.idx`).

From a run, the documents go out in manifest order. From a plan, train is the plan's rows in the order
`tokshard.data` reads them (`mix.RowOrder`: blocks of `shuffle_block` rows, each permuted by the plan's seed; 0
keeps the plan's order), each row's segments as documents, padding left out (the trainers pack their own
sequences); val is every source's val split. So a mixture's token shares, repetition and shuffle reach those
trainers, and a trainer reading the files in order (nanoGPT-style loaders do) sees the same row sequence as
`tokshard.data` at that block size, not the runs of one long document's row-sized pieces the packer emits. Only
`tokshard.data`'s dropped final partial batch differs: the export keeps those rows. Megatron's GPTDataset shuffles
documents again with its own seed.

Megatron ("megatron"): `DEST/{train,val}.bin` holds the documents' token ids back to back (uint16, or int32 for a
vocabulary above 65,536), `DEST/{train,val}.idx` the index Megatron-LM's `IndexedDataset` reads, as its definition
states: the 9-byte magic `MMIDIDX\x00\x00`, version 1 (u64), the dtype code (u8: 8 uint16, 4 int32), the number
of sequences and of document-index entries (u64 each), then every sequence's length (int32), its byte offset in
the `.bin` (int64) and the document index (int64, here [0, 1, ..., n]: one sequence per document). Pass
`--data-path DEST/train` to Megatron.

nanoGPT ("nanogpt"): a flat binary file, a header of 256 little-endian int32 -- magic 20240520,
version 1, the token count -- followed by that many uint16 token ids. The files of one corpus are named
`fineweb_val_000000.bin`, then `fineweb_train_000001.bin`, `fineweb_train_000002.bin`, ...: one counter runs
across both splits, validation first, as in modded-nanogpt's and llm.c's `fineweb.py` (there the first file of
the tokenized stream is the validation file). Their loaders glob `fineweb_train_*.bin` and `fineweb_val_*.bin`.

tokshard shards already hold `<|bos|>` first in every row, which is exactly the document separator those files
carry, so export is a copy of the token stream (a run's in manifest order), re-cut into files. Unlike the peers'
scripts, a file never ends in the middle of a document: modded-nanogpt's loader starts every sequence at a
`<|bos|>`, so a document's tail carried over into the next file would never be trained on. Only a document longer
than a whole file is cut, into file-sized pieces starting in a fresh file. Files therefore hold at most
`tokens_per_file` tokens and usually slightly fewer. A split without documents (`--val-fraction 0`) gets no file, so
the counter then starts the train files at 000000. The trainers hard-code GPT-2's vocabulary and `<|endoftext|>` id;
`export.json` beside the files records the vocab size and `<|bos|>` id to set instead.

The run (or the plan and its runs) and DEST may each be a local directory or an fsspec URL (`s3://`, `gs://`;
pipeline/storage.py): shards at a URL are read through storage's local cache, and every exported file is written
whole or not at all (a temporary name and rename on disk, a completed upload on a store), `export.json` last; an
export that fails removes the files it wrote.

Memory stays bounded whatever the corpus size: shards are memory-mapped and their token ranges written straight
from the map; only one shard's document offsets, or one shuffle block of a plan's rows and their segments, are held
(plus, for megatron, one length per document).
"""

from __future__ import annotations

import contextlib
import fnmatch
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokshard.pipeline import atomic, mix, storage
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.shards import ShardReader

NANOGPT_MAGIC = 20240520
NANOGPT_VERSION = 1
HEADER_INTS = 256
DEFAULT_TOKENS_PER_FILE = 100_000_000
FILE_PREFIX = "fineweb"
EXPORT_JSON = "export.json"
SPLITS = ("val", "train")  # file order: validation first
FORMATS = ("nanogpt", "megatron")
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
MEGATRON_DTYPE_CODES = {"uint16": 8, "int32": 4}  # Megatron-LM's DType enum values


@dataclass(frozen=True)
class Piece:
    """Tokens [start, end) of one shard (a path relative to the shard directory) that go into a file."""

    shard: str
    start: int
    end: int


def plan_files(shards: Iterable[tuple[str, np.ndarray]], tokens_per_file: int) -> Iterator[list[Piece]]:
    """Cut a stream of shards, given as (path, document offsets) in order, into files of whole documents.

    Greedy: a file takes documents until the next one does not fit. A document longer than a file starts a
    fresh file and is cut into `tokens_per_file`-sized pieces; its last piece starts the file after it, which
    the following documents join. `shards` is consumed lazily, so only one shard's offsets need be in memory.
    """
    pieces: list[Piece] = []
    used = 0
    for path, offsets in shards:
        i, n_docs = 0, len(offsets) - 1
        while i < n_docs:
            room = tokens_per_file - used
            # the furthest document boundary that still fits in this file
            j = int(np.searchsorted(offsets, offsets[i] + room, side="right")) - 1
            if j > i:
                pieces.append(Piece(path, int(offsets[i]), int(offsets[j])))
                used += int(offsets[j] - offsets[i])
                i = j
                continue
            if used:  # document i does not fit in what is left: close this file
                yield pieces
                pieces, used = [], 0
                continue
            start, end = int(offsets[i]), int(offsets[i + 1])  # longer than a whole file: cut it
            while end - start > tokens_per_file:
                yield [Piece(path, start, start + tokens_per_file)]
                start += tokens_per_file
            pieces, used = [Piece(path, start, end)], end - start
            i += 1
    if pieces:
        yield pieces


def nanogpt_header(n_tokens: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (NANOGPT_MAGIC, NANOGPT_VERSION, n_tokens)
    return header.tobytes()


def _check_run(out: str, fmt: str) -> Manifest:
    """The manifest of a complete, verified run in `out` (uint16 for nanogpt); otherwise a ValueError saying what
    to do."""
    manifest = Manifest.read(out)  # FileNotFoundError / ValueError with the path
    path = storage.join(out, "manifest.json")
    if not manifest.data.get("complete", False):
        errors = manifest.data.get("errors") or []
        first = f"; first: {errors[0]}" if errors else ""
        raise ValueError(f"{path} describes an incomplete run ({len(errors)} error(s){first}). Fix the input and "
                         f"re-run `tokshard encode` into {out} (it resumes) before exporting")
    tok = manifest.tokenizer
    if fmt == "nanogpt" and tok.get("dtype") != "uint16":
        raise ValueError(f"{out} holds {tok.get('dtype')} token ids (vocabulary of {tok.get('vocab_size'):,}); the "
                         "nanogpt/llm.c format stores uint16 ids only, so it needs a vocabulary of at most 65,536 "
                         "tokens (train one with --vocab-size 65536 or less), or use --format megatron")
    problems = manifest.verify(out) if not storage.is_url(out) else _fetch_verified(out, manifest)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{out} fails verification, nothing exported: {'; '.join(problems[:3])}{more}. Re-run "
                         f"`tokshard encode` into {out} to redo the damaged slices, then export again")
    return manifest


def _fetch_verified(run: str, manifest: Manifest) -> list[str]:
    """A run at a URL: each shard is downloaded once, into storage's cache keyed by the manifest's sha256 and
    checked against it as it arrives; the export then memory-maps those copies (hashing the objects first, as
    `Manifest.verify` does, would download every shard twice)."""
    problems = []
    for rec in manifest.shards:
        try:
            storage.local_file(storage.join(run, rec["path"]), rec["sha256"])
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
    return problems


@dataclass
class SplitStream:
    """What one split exports: `documents()` yields (shard path, document offsets) in export order."""

    documents: Callable[[], Iterator[tuple[str, np.ndarray]]]
    tokens: int
    count: int


def _shard_stream(run: str, records: list[dict[str, Any]]) -> Callable[[], Iterator[tuple[str, np.ndarray]]]:
    def gen() -> Iterator[tuple[str, np.ndarray]]:
        for rec in records:
            with ShardReader(storage.join(run, rec["path"]), rec["sha256"]) as reader:
                offsets = np.array(reader.offsets)  # a copy: the map is closed before the caller uses it
            yield storage.join(run, rec["path"]), offsets
    return gen


def _plan_rows_stream(plan: mix.Plan, paths: list[list[str]],
                      order: mix.RowOrder) -> Callable[[], Iterator[tuple[str, np.ndarray]]]:
    """A plan's train segments, rows in `order` and each row's segments in turn, one shuffle block at a time."""
    def gen() -> Iterator[tuple[str, np.ndarray]]:
        for b in range(order.blocks):
            for src, shard, start, length in plan.rows_segments(order.block(b)).tolist():
                yield paths[src][shard], np.array([start, start + length])
    return gen


def _split_streams(source: str, fmt: str,
                   shuffle_block: int) -> tuple[dict[str, SplitStream], dict[str, Any], dict[str, str]]:
    """Per split what to export, the tokenizer record, and every shard's sha256 by path: a run's shards in
    manifest order, or a plan's rows (their segments in `mix.RowOrder` at `shuffle_block`, padding left out) for
    train and every source's val split for val."""
    if mix.is_plan(source):
        plan = mix.read_plan(source)
        problems = mix.check_sources(plan.data)
        if problems:
            raise ValueError(f"{source}: the runs changed since the plan was made: {'; '.join(problems[:3])}. "
                             "Rebuild the plan with `tokshard mix`")
        manifests = [_check_run(src["run"], fmt) for src in plan.data["sources"]]
        paths = [[storage.join(src["run"], sh["path"]) for sh in src["shards"]] for src in plan.data["sources"]]
        segments = _plan_rows_stream(plan, paths, plan.order(shuffle_block))
        val = [(src["run"], r) for src, m in zip(plan.data["sources"], manifests, strict=True)
               for r in m.shards if r["split"] == "val"]

        def val_docs() -> Iterator[tuple[str, np.ndarray]]:
            for run, rec in val:
                yield from _shard_stream(run, [rec])()

        streams = {"val": SplitStream(val_docs, sum(r["tokens"] for _, r in val), sum(r["documents"] for _, r in val)),
                   "train": SplitStream(segments, int(plan.segments["length"].sum()), len(plan.segments))}
        sha256s = {storage.join(src["run"], r["path"]): r["sha256"] for src, m in zip(plan.data["sources"], manifests,
                                                                                    strict=True) for r in m.shards}
        return streams, manifests[0].tokenizer, sha256s
    manifest = _check_run(source, fmt)
    streams = {}
    for split in SPLITS:
        records = [r for r in manifest.shards if r["split"] == split]
        streams[split] = SplitStream(_shard_stream(source, records), sum(r["tokens"] for r in records),
                                     sum(r["documents"] for r in records))
    return streams, manifest.tokenizer, {storage.join(source, r["path"]): r["sha256"] for r in manifest.shards}


def _check_dest(dest: str, pattern: str) -> None:
    if storage.exists(dest):
        raise ValueError(f"export destination {dest} exists and is not a directory")
    old = sorted(name for name in storage.list_files(dest) if "/" not in name and fnmatch.fnmatch(name, pattern))
    if old:
        # Left in place, files of an earlier export would be globbed together with the new ones.
        raise ValueError(f"{dest} already holds {len(old)} exported file(s) (e.g. {old[0]}); choose an empty "
                         "directory or delete them first")


class _Readers:
    """Shards opened once per export (a plan's rows jump between shards), closed together at the end."""

    def __init__(self, sha256s: dict[str, str]) -> None:
        self._open: dict[str, ShardReader] = {}
        self._sha256s = sha256s  # a shard at a URL is read from the cache copy verified against it

    def tokens(self, path: str) -> np.ndarray:
        if path not in self._open:
            self._open[path] = ShardReader(path, self._sha256s.get(path))
        return self._open[path].tokens

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()


def _write_file(readers: _Readers, path: str, pieces: list[Piece]) -> int:
    n_tokens = sum(p.end - p.start for p in pieces)
    with storage.open_write(path) as f:
        f.write(nanogpt_header(n_tokens))
        for p in pieces:
            # '<u2' is a no-op view on little-endian machines, a byte swap elsewhere.
            f.write(memoryview(np.ascontiguousarray(readers.tokens(p.shard)[p.start : p.end], dtype="<u2")))
    return n_tokens


def export(source: str | Path, dest: str | Path, fmt: str = "nanogpt", *,
           tokens_per_file: int = DEFAULT_TOKENS_PER_FILE, shuffle_block: int | None = None) -> dict[str, Any]:
    """Export a complete `tokshard encode` run (its shards in manifest order) or a `tokshard mix` plan (for train its
    rows in the order `tokshard.data` reads them, for val every source's val split) as `fmt` ("nanogpt" or
    "megatron") into `dest`.

    `shuffle_block` (plans only): rows permuted together, as `tokshard.data.PackedRows(shuffle_block=)`; None is
    the loader's default `mix.SHUFFLE_BLOCK`, 0 the plan's order. Refuses (ValueError) a run that is incomplete,
    fails verification, or (nanogpt) has uint32 ids; a `shuffle_block` below 0 or given with a run; a plan whose
    runs changed; a `dest` that already holds exported files. Each file is written atomically; `dest/export.json`
    (written last) records the files, their token counts, the tokenizer a trainer must be set up with and, from a
    plan, the `shuffle_block` used.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if shuffle_block is not None and shuffle_block < 0:
        raise ValueError(f"--shuffle-block must be 0 (the plan's order) or more rows, got {shuffle_block:,}")
    if fmt == "nanogpt" and not 1 <= tokens_per_file < 2**31:
        raise ValueError(f"--tokens-per-file must be between 1 and {2**31 - 1:,} (the header's int32 token count), "
                         f"got {tokens_per_file:,}")
    source, dest = str(source), str(dest) if storage.is_url(dest) else str(Path(dest))
    from_plan = mix.is_plan(source)
    if shuffle_block is not None and not from_plan:
        raise ValueError(f"--shuffle-block orders a plan's rows; {source} is a run, exported in manifest order. "
                         f"Make a plan of it (`tokshard mix {source} --seq-len L --out PLAN`) to export shuffled rows")
    shuffle_block = mix.SHUFFLE_BLOCK if shuffle_block is None else shuffle_block
    if storage.is_url(dest):  # a missing bucket, no credentials or a denied write: said before any shard is read
        storage.check_writable(dest)
    _check_dest(dest, f"{FILE_PREFIX}_*.bin" if fmt == "nanogpt" else "*.idx")
    streams, tok, sha256s = _split_streams(source, fmt, shuffle_block)
    storage.makedirs(dest)
    if not storage.is_url(dest):
        atomic.remove_stale_temporaries(Path(dest))  # what a crashed earlier export left
    readers, written = _Readers(sha256s), _Written(dest)
    try:
        if fmt == "nanogpt":
            files, splits = _export_nanogpt(streams, written, readers, tokens_per_file)
            extra: dict[str, Any] = {"tokens_per_file": tokens_per_file, "header": {
                "magic": NANOGPT_MAGIC, "version": NANOGPT_VERSION, "ints": HEADER_INTS, "dtype": "uint16"}}
        else:
            files, splits = _export_megatron(streams, written, readers, np.dtype(tok["dtype"]))
            extra = {"data_prefix": {split: storage.join(dest, split) for split in splits}}
        if from_plan:  # the train rows' order: the same as tokshard.data's at this block size
            extra["shuffle_block"] = shuffle_block
        summary = {"format": fmt, "dest": dest, "source": source, **extra,
                   "tokenizer": {"sha256": tok["sha256"], "vocab_size": tok["vocab_size"], "bos_id": tok["bos_id"]},
                   "splits": splits, "files": files}
        storage.write_json(written.path(EXPORT_JSON), summary)
    except BaseException:
        written.remove()  # no half export: a later attempt would refuse the files left behind
        raise
    finally:
        readers.close()
    return summary


class _Written:
    """The files of one export in DEST, as they are written, so that a failed export removes them all."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.paths: list[str] = []

    def path(self, name: str) -> str:
        self.paths.append(storage.join(self.dest, name))
        return self.paths[-1]

    def remove(self) -> None:
        with contextlib.suppress(Exception):  # keep the error that failed the export, not a cleanup error
            storage.remove(self.paths)


def export_nanogpt(shard_dir: str | Path, dest: str | Path, *, tokens_per_file: int = DEFAULT_TOKENS_PER_FILE,
                   shuffle_block: int | None = None) -> dict[str, Any]:
    """`export(..., "nanogpt")`: `dest/fineweb_{val,train}_NNNNNN.bin` from a run or a plan (a plan's train rows in
    `tokshard.data`'s order at `shuffle_block`)."""
    return export(shard_dir, dest, "nanogpt", tokens_per_file=tokens_per_file, shuffle_block=shuffle_block)


def _export_nanogpt(streams: dict[str, SplitStream], out: _Written, readers: _Readers,
                    tokens_per_file: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    files: list[dict[str, Any]] = []
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        stream = streams[split]
        written = 0
        for pieces in plan_files(stream.documents(), tokens_per_file):
            name = f"{FILE_PREFIX}_{split}_{len(files):06d}.bin"
            n = _write_file(readers, out.path(name), pieces)
            files.append({"name": name, "split": split, "tokens": n})
            written += n
        _check_written(split, written, stream.tokens)
        splits[split] = {"files": sum(f["split"] == split for f in files), "tokens": written,
                         "documents": stream.count}
    return files, splits


def _check_written(split: str, written: int, expected: int) -> None:
    if written != expected:  # the export covers every token exactly once; this guards that promise
        raise RuntimeError(f"exported {written:,} {split} tokens, the source lists {expected:,}")


def megatron_index(sizes: np.ndarray, dtype: np.dtype) -> bytes:
    """Megatron-LM's indexed-dataset `.idx` for sequences of `sizes` tokens, one document each: the magic, version
    1 (u64), the dtype code (u8), the sequence count and the document-index count (u64), then the sizes (int32),
    each sequence's byte offset in the `.bin` (int64) and the document index [0, 1, ..., n] (int64), all
    little-endian."""
    sizes = np.asarray(sizes, dtype="<i4")
    pointers = np.zeros(len(sizes), dtype="<i8")
    np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    doc_index = np.arange(len(sizes) + 1, dtype="<i8")
    head = MEGATRON_MAGIC + struct.pack("<QB", MEGATRON_VERSION, MEGATRON_DTYPE_CODES[dtype.name])
    return head + struct.pack("<QQ", len(sizes), len(doc_index)) + sizes.tobytes() + pointers.tobytes() + \
        doc_index.tobytes()


def _export_megatron(streams: dict[str, SplitStream], out: _Written, readers: _Readers,
                     shard_dtype: np.dtype) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    # Megatron reads uint16 when the vocabulary fits, int32 otherwise (ids above 2**31 do not occur).
    dtype = np.dtype("<u2") if shard_dtype == np.uint16 else np.dtype("<i4")
    files: list[dict[str, Any]] = []
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        stream = streams[split]
        if stream.count == 0:
            continue
        sizes: list[int] = []
        with storage.open_write(out.path(f"{split}.bin")) as f:
            for path, offsets in stream.documents():
                tokens = readers.tokens(path)
                for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
                    f.write(memoryview(np.ascontiguousarray(tokens[a:b], dtype=dtype)))
                    sizes.append(b - a)
        storage.write_bytes(out.path(f"{split}.idx"), megatron_index(np.array(sizes, dtype=np.int64), dtype))
        written = int(sum(sizes))
        _check_written(split, written, stream.tokens)
        files += [{"name": f"{split}.bin", "split": split, "tokens": written},
                  {"name": f"{split}.idx", "split": split, "documents": len(sizes)}]
        splits[split] = {"files": 2, "tokens": written, "documents": len(sizes)}
    return files, splits


def describe(summary: dict[str, Any]) -> str:
    """A few human-readable lines about an export (for the CLI)."""
    lines = [f"exported {sum(s['tokens'] for s in summary['splits'].values()):,} tokens into "
             f"{len(summary['files'])} {summary['format']} files -> {summary['dest']}"]
    for split, s in summary["splits"].items():
        lines.append(f"  {split}: {s['documents']:,} docs, {s['tokens']:,} tokens, {s['files']} file(s)")
    if "shuffle_block" in summary:
        block = summary["shuffle_block"]
        lines.append("  train rows in the plan's order" if block <= 1 else
                     f"  train rows in tokshard.data's order (blocks of {block:,} rows, permuted by the plan's seed)")
    t = summary["tokenizer"]
    lines.append(f"  vocab_size {t['vocab_size']:,}, <|bos|> id {t['bos_id']} (set these in the trainer)")
    return "\n".join(lines)

