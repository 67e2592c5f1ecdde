"""Export a tokshard output directory to the token files modded-nanogpt and llm.c train from.

Their format ("nanogpt" here) is a flat binary file: a header of 256 little-endian int32 -- magic 20240520,
version 1, the token count -- followed by that many uint16 token ids. The files of one corpus are named
`fineweb_val_000000.bin`, then `fineweb_train_000001.bin`, `fineweb_train_000002.bin`, ...: one counter runs
across both splits, validation first, as in modded-nanogpt's and llm.c's `fineweb.py` (there the first file of
the tokenized stream is the validation file). Their loaders glob `fineweb_train_*.bin` and `fineweb_val_*.bin`.

tokshard shards already hold `<|bos|>` first in every row, which is exactly the document separator those files
carry, so export is a copy of the token stream in manifest order, re-cut into files. Unlike the peers' scripts,
a file never ends in the middle of a document: modded-nanogpt's loader starts every sequence at a `<|bos|>`, so
a document's tail carried over into the next file would never be trained on. Only a document longer than a
whole file is cut, into file-sized pieces starting in a fresh file. Files therefore hold at most
`tokens_per_file` tokens and usually slightly fewer. A split without documents (`--val-fraction 0`) gets no
file, so the counter then starts the train files at 000000. The trainers hard-code GPT-2's vocabulary and
`<|endoftext|>` id; `export.json` beside the files records the vocab size and `<|bos|>` id to set instead.

Memory stays bounded whatever the corpus size: shards are memory-mapped one at a time and their token ranges
are written straight from the map; only one shard's document offsets are held.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokshard.pipeline import atomic
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.shards import ShardReader

NANOGPT_MAGIC = 20240520
NANOGPT_VERSION = 1
HEADER_INTS = 256
DEFAULT_TOKENS_PER_FILE = 100_000_000
FILE_PREFIX = "fineweb"
EXPORT_JSON = "export.json"
SPLITS = ("val", "train")  # file order: validation first


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


def _check_source(out: Path) -> Manifest:
    """The manifest of a complete, verified, uint16 run in `out`; otherwise a ValueError saying what to do."""
    manifest = Manifest.read(out)  # FileNotFoundError / ValueError with the path
    path = out / "manifest.json"
    if not manifest.data.get("complete", False):
        errors = manifest.data.get("errors") or []
        first = f"; first: {errors[0]}" if errors else ""
        raise ValueError(f"{path} describes an incomplete run ({len(errors)} error(s){first}). Fix the input and "
                         f"re-run `tokshard encode` into {out} (it resumes) before exporting")
    tok = manifest.tokenizer
    if tok.get("dtype") != "uint16":
        raise ValueError(f"{out} holds {tok.get('dtype')} token ids (vocabulary of {tok.get('vocab_size'):,}); the "
                         "nanogpt/llm.c format stores uint16 ids only, so it needs a vocabulary of at most 65,536 "
                         "tokens (train one with --vocab-size 65536 or less)")
    problems = manifest.verify(out)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{out} fails verification, nothing exported: {'; '.join(problems[:3])}{more}. Re-run "
                         f"`tokshard encode` into {out} to redo the damaged slices, then export again")
    return manifest


def _check_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"export destination {dest} exists and is not a directory")
    old = sorted(dest.glob(f"{FILE_PREFIX}_*.bin")) if dest.is_dir() else []
    if old:
        # Left in place, files of an earlier export would be globbed together with the new ones.
        raise ValueError(f"{dest} already holds {len(old)} exported file(s) (e.g. {old[0].name}); choose an empty "
                         "directory or delete them first")


def _offsets_of(out: Path, records: list[dict[str, Any]]) -> Iterator[tuple[str, np.ndarray]]:
    for rec in records:
        with ShardReader(out / rec["path"]) as reader:
            offsets = np.array(reader.offsets)  # a copy: the map is closed before the caller uses it
        yield rec["path"], offsets


def _write_file(out: Path, path: Path, pieces: list[Piece]) -> int:
    n_tokens = sum(p.end - p.start for p in pieces)
    with atomic.atomic_open(path, "wb") as f:
        f.write(nanogpt_header(n_tokens))
        for shard, group in _by_shard(pieces):
            with ShardReader(out / shard) as reader:
                for p in group:
                    # '<u2' is a no-op view on little-endian machines, a byte swap elsewhere.
                    f.write(memoryview(np.ascontiguousarray(reader.tokens[p.start : p.end], dtype="<u2")))
    return n_tokens


def _by_shard(pieces: list[Piece]) -> Iterator[tuple[str, list[Piece]]]:
    group: list[Piece] = []
    for p in pieces:
        if group and p.shard != group[0].shard:
            yield group[0].shard, group
            group = []
        group.append(p)
    if group:
        yield group[0].shard, group


def export_nanogpt(shard_dir: str | Path, dest: str | Path, *,
                   tokens_per_file: int = DEFAULT_TOKENS_PER_FILE) -> dict[str, Any]:
    """Write `dest/fineweb_{val,train}_NNNNNN.bin` from the shards of a complete `tokshard encode` run.

    Refuses (ValueError) a run that is incomplete, fails verification or has uint32 ids, a `dest` that already
    holds exported files, and a `tokens_per_file` the int32 header cannot count; FileNotFoundError when
    `shard_dir` has no manifest. Each file is written atomically; `dest/export.json` (written last) records
    the files, their token counts and the tokenizer (vocab size, `<|bos|>` id) a trainer must be set up with.
    """
    if not 1 <= tokens_per_file < 2**31:
        raise ValueError(f"--tokens-per-file must be between 1 and {2**31 - 1:,} (the header's int32 token count), "
                         f"got {tokens_per_file:,}")
    out, dest = Path(shard_dir), Path(dest)
    manifest = _check_source(out)
    _check_dest(dest)
    dest.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(dest)  # what a crashed earlier export left

    files: list[dict[str, Any]] = []
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        records = [r for r in manifest.shards if r["split"] == split]
        written = 0
        for pieces in plan_files(_offsets_of(out, records), tokens_per_file):
            name = f"{FILE_PREFIX}_{split}_{len(files):06d}.bin"
            n = _write_file(out, dest / name, pieces)
            files.append({"name": name, "split": split, "tokens": n})
            written += n
        expected = sum(r["tokens"] for r in records)
        if written != expected:  # the plan covers every token exactly once; this guards that promise
            raise RuntimeError(f"exported {written:,} {split} tokens from {out}, the manifest lists {expected:,}")
        splits[split] = {"files": sum(f["split"] == split for f in files), "tokens": written,
                         "documents": sum(r["documents"] for r in records)}

    tok = manifest.tokenizer
    summary = {
        "format": "nanogpt", "dest": str(dest), "source": str(out), "tokens_per_file": tokens_per_file,
        "header": {"magic": NANOGPT_MAGIC, "version": NANOGPT_VERSION, "ints": HEADER_INTS, "dtype": "uint16"},
        "tokenizer": {"sha256": tok["sha256"], "vocab_size": tok["vocab_size"], "bos_id": tok["bos_id"]},
        "splits": splits, "files": files,
    }
    atomic.write_json(dest / EXPORT_JSON, summary)
    return summary


def describe(summary: dict[str, Any]) -> str:
    """A few human-readable lines about an export (for the CLI)."""
    lines = [f"exported {sum(s['tokens'] for s in summary['splits'].values()):,} tokens into "
             f"{len(summary['files'])} nanogpt files -> {summary['dest']}"]
    for split, s in summary["splits"].items():
        lines.append(f"  {split}: {s['documents']:,} docs, {s['tokens']:,} tokens, {s['files']} file(s)")
    t = summary["tokenizer"]
    lines.append(f"  vocab_size {t['vocab_size']:,}, <|bos|> id {t['bos_id']} (set these in the trainer)")
    return "\n".join(lines)

