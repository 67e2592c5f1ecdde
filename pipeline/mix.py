"""Token-exact mixtures: a deterministic plan of packed training rows over finished `tokshard encode` runs.

A plan answers "which tokens does row i hold?" once, so every trainer that reads it (tokshard's own, any PyTorch loop
through `tokshard.data`, nanoGPT and Megatron through `tokshard export`) trains on exactly the same rows in exactly
the same order. It is built from the train split of one or more runs:

- **Token shares.** Each source gets `weight / sum(weights)` of the row tokens: every segment is taken from the
  source furthest below its share (counted in placed tokens, not documents), so at any row the shares are within
  about one document of the weights. A source smaller than its share is repeated, each pass with a fresh
  shuffle, and the number of epochs is reported; more than `max_epochs` is refused.
- **Global shuffle.** Each source's documents, across all its shards, are permuted by (seed, source, epoch).
- **Best-fit packing.** Rows hold `seq_len + 1` tokens and start at a document start (`<|bos|>`). The packer keeps
  up to `PACK_BUFFER` shuffled documents per source sorted by length and fills each row with the longest document
  that still fits; when none fits, it pads the rest of the row or crops the shortest document into it, whichever
  wastes fewer tokens. A document longer than a row contributes its first `seq_len + 1` tokens (nanochat's
  choice: every row starts at a `<|bos|>`), or with `split_long` all of it, in row-sized pieces that are each
  masked as a document of their own (a row may then start mid-document). Every row records its segments
  (source, shard, first token, length), so a loader can mask attention per document.

**Read order.** Trainers read a plan's rows in the order `RowOrder` defines, not the order they were packed in: the
packer emits the row-sized pieces of a long document one after another, so read in plan order a batch held mostly
one document. Rows are taken in blocks of `SHUFFLE_BLOCK` (8,192) rows, each block permuted by (plan seed, block
number). A block is a whole number of rows, so a longer plan of the same sources and seed starts with the same rows
in the same order once its first blocks are complete. `tokshard.data` and `tokshard export` both read through it.

The plan directory holds `plan.json` (sources with the sha256 of every shard used and the tokenizer, shares,
epochs, waste beside what naive concatenation and nanochat-style cropping give on the same documents) and
`segments.npy` / `rows.npy` (the segments and each row's first segment), written atomically, plan.json last.
Runs and the plan directory may be local or fsspec URLs (`s3://...`, pipeline/storage.py).
numpy and pyarrow only: no torch here (the loader in `tokshard.data` adds it).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokshard.pipeline import storage
from tokshard.pipeline.manifest import MANIFEST, Manifest
from tokshard.pipeline.shards import ShardReader

PLAN_FORMAT = "tokshard-plan/1"
PLAN_JSON = "plan.json"
SEGMENTS_NPY = "segments.npy"
ROWS_NPY = "rows.npy"
DEFAULT_SEQ_LEN = 1024
DEFAULT_MAX_EPOCHS = 4.0  # repeating data up to ~4 epochs costs little (Muennighoff et al. 2023); beyond, say so
# Documents per source the best-fit packer chooses among. Best fit takes long documents first, so short ones wait
# in the buffer: a large buffer holds back a share of the short documents for as long as it takes to fill it (on
# ../shared/corpus at seq 128, 1,024 halved their tokens in the first 4,800 rows, 4.4% vs 9.3%), while 64 wastes
# only 0.03 points more (0.79% vs 0.76%).
PACK_BUFFER = 64
# Rows permuted together when a plan is read (module doc): over 6x the row-sized pieces of ../shared/corpus's longest
# document at seq 128, so those pieces spread over many batches.
SHUFFLE_BLOCK = 8192
SEGMENT_DTYPE = np.dtype([("source", "<u2"), ("shard", "<u4"), ("start", "<i8"), ("length", "<u4")])


class PlanError(ValueError):
    """Bad mixture input (weights, sizes, sources); the CLI exits 2 with this message."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    run: str
    weight: float


def parse_source(arg: str) -> SourceSpec:
    """`NAME=RUN:WEIGHT`, `NAME=RUN` or `RUN` (weight 1). RUN may itself hold ':' (s3://...): only a numeric tail
    after the last ':' is a weight."""
    name, _, rest = arg.partition("=") if "=" in arg.split("://")[0] else ("", "", arg)
    run, weight = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep and head and "/" not in tail:
        try:
            run, weight = head, float(tail)
        except ValueError:
            raise PlanError(f"{arg!r}: the weight after the last ':' must be a number, got {tail!r} "
                            "(write NAME=RUN:WEIGHT, e.g. web=out/web:3)") from None
    if not math.isfinite(weight) or weight <= 0:
        raise PlanError(f"{arg!r}: weight {weight:g} must be above 0 (leave the source out instead)")
    if not run:
        raise PlanError(f"{arg!r}: no run directory given (write NAME=RUN:WEIGHT)")
    return SourceSpec(name or _default_name(run), run, weight)


def _default_name(run: str) -> str:
    return run.rstrip("/").rsplit("/", 1)[-1] or run


@dataclass
class RunDocs:
    """The train documents of one finished run: per shard its manifest record and document offsets."""

    run: str
    tokenizer_sha256: str
    bos_id: int
    shards: list[dict[str, Any]]  # manifest records of the train shards, in path order
    offsets: list[np.ndarray]

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.concatenate([np.diff(o) for o in self.offsets]) if self.offsets else np.zeros(0, np.int64)

    @property
    def doc_shard(self) -> np.ndarray:
        return np.concatenate([np.full(len(o) - 1, i, np.int64) for i, o in enumerate(self.offsets)])

    @property
    def doc_start(self) -> np.ndarray:
        return np.concatenate([o[:-1] for o in self.offsets])


def open_run(run: str) -> RunDocs:
    """Read a run's manifest and its train shards' document offsets (not the tokens)."""
    manifest = Manifest.read(run)
    if not manifest.data.get("complete", False):
        raise PlanError(f"{storage.join(run, MANIFEST)} describes an incomplete run; finish it (re-run "
                        "`tokshard encode` into the same directory) before mixing it")
    records = sorted((r for r in manifest.shards if r["split"] == "train"), key=lambda r: r["path"])
    offsets = []
    for rec in records:
        path = storage.join(run, rec["path"])
        with ShardReader(path, rec["sha256"]) as reader:
            if reader.tokenizer_sha256 != manifest.tokenizer["sha256"]:
                raise PlanError(f"{path} was encoded with tokenizer {reader.tokenizer_sha256[:12]}…, "
                                f"not the manifest's {manifest.tokenizer['sha256'][:12]}…")
            offsets.append(np.array(reader.offsets, dtype=np.int64))
    return RunDocs(run=run, tokenizer_sha256=manifest.tokenizer["sha256"], bos_id=int(manifest.tokenizer["bos_id"]),
                   shards=[{"path": r["path"], "sha256": r["sha256"], "size": r["size"]} for r in records],
                   offsets=offsets)


@dataclass
class _Source:
    """One source while packing: its documents, its seeded per-epoch order, and a buffer of the next documents
    sorted by (row-capped) length for best fit."""

    index: int
    name: str
    weight: float
    lengths: np.ndarray
    shard: np.ndarray
    start: np.ndarray
    seed: int
    buffer_docs: int
    split_long: bool = False  # documents longer than a row: cut into row-sized pieces instead of cropped
    placed: int = 0  # tokens placed in rows so far
    drawn: int = 0  # documents taken from the shuffled order so far
    _epoch: int = -1
    _order: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.buffer_docs = max(1, min(self.buffer_docs, len(self.lengths)))
        self.lens: list[int] = []  # buffer, sorted by (capped or piece) length
        self.docs: list[tuple[int, int, int]] = []  # (document, first token in it, draw number), parallel to lens

    def _next_doc(self) -> int:
        epoch, k = divmod(self.drawn, len(self.lengths))
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), epoch])
            self._order, self._epoch = rng.permutation(len(self.lengths)), epoch
        self.drawn += 1
        return int(self._order[k])  # type: ignore[index]

    def refill(self, row_len: int, draws: Iterator[int]) -> None:
        """Top the buffer up; `draws` numbers documents in the order they are drawn from all sources (the
        shuffled order the waste baselines are computed on)."""
        while len(self.lens) < self.buffer_docs:
            doc, drawn = self._next_doc(), next(draws)
            full = int(self.lengths[doc])
            for offset in range(0, full, row_len) if self.split_long else (0,):
                length = min(full - offset, row_len)
                j = bisect.bisect_right(self.lens, length)
                self.lens.insert(j, length)
                self.docs.insert(j, (doc, offset, drawn))

    def longest_fitting(self, room: int) -> int:
        """Buffer index of the longest document of at most `room` tokens, or -1."""
        return bisect.bisect_right(self.lens, room) - 1


@dataclass
class PackResult:
    segments: np.ndarray  # SEGMENT_DTYPE, rows' segments in order
    row_first: np.ndarray  # int64 [rows + 1]: row i holds segments[row_first[i]:row_first[i + 1]]
    used_docs: list[tuple[int, int, int]]  # (source, doc, full length) of every document placed, in draw order
    tokens_per_source: np.ndarray
    padded: int
    cropped_fit: int  # tokens cut off documents cropped to fill a row's end
    cropped_long: int  # tokens beyond the first row_len of documents longer than a row (not with split_long)
    rows_at_bos: int  # rows whose first segment is a document start (all of them unless split_long)


def pack_best_fit(sources: list[_Source], n_rows: int, row_len: int) -> PackResult:
    """Fill `n_rows` rows of `row_len` tokens (module doc). Each segment comes from the source furthest below its
    token share that has a document fitting the room left (its longest such document), so the shares of placed
    tokens stay within about one document of the weights; when no source has one, the row's end is padded or
    filled with a crop of the neediest source's shortest document, whichever wastes less."""
    segs: list[tuple[int, int, int, int]] = []
    row_first = [0]
    used: list[tuple[int, int, int, int]] = []  # (draw number, source, doc, full length)
    draws = itertools.count()
    padded = cropped_fit = cropped_long = rows_at_bos = 0

    def take(s: _Source, j: int, length: int) -> None:
        nonlocal cropped_fit, cropped_long, rows_at_bos
        (doc, offset, drawn), capped = s.docs.pop(j), s.lens.pop(j)
        full = int(s.lengths[doc])
        if room == row_len and offset == 0:
            rows_at_bos += 1
        segs.append((s.index, int(s.shard[doc]), int(s.start[doc]) + offset, length))
        if offset == 0:
            used.append((drawn, s.index, doc, full))
            cropped_long += 0 if s.split_long else full - capped
        s.placed += length
        cropped_fit += capped - length

    room = row_len
    for _ in range(n_rows):
        room = row_len  # take() reads it: a segment placed into an empty row starts the row
        while room > 0:
            neediest = sorted(sources, key=lambda x: (x.placed / x.weight, x.index))
            for s in neediest:
                s.refill(row_len, draws)
                j = s.longest_fitting(room)
                if j >= 0:
                    length = s.lens[j]
                    take(s, j, length)
                    room -= length
                    break
            else:
                s = neediest[0]
                if s.lens[0] - room < room:  # cropping the shortest document wastes less than padding
                    take(s, 0, room)
                else:
                    padded += room
                room = 0
        row_first.append(len(segs))
    return PackResult(segments=np.array(segs, dtype=SEGMENT_DTYPE).reshape(-1),
                      row_first=np.array(row_first, np.int64), used_docs=[u[1:] for u in sorted(used)],
                      tokens_per_source=np.array([s.placed for s in sources], np.int64), padded=padded,
                      cropped_fit=cropped_fit, cropped_long=cropped_long, rows_at_bos=rows_at_bos)


def waste_naive(lengths: np.ndarray, row_len: int) -> dict[str, Any]:
    """Naive concatenation (nanoGPT): the documents end to end, cut into rows of row_len overlapping by one token.
    Nothing is cropped but the tail; rows start wherever the cut falls, so contexts run across documents."""
    total = int(lengths.sum())
    rows = max(0, (total - 1) // (row_len - 1))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    row_starts = np.arange(rows) * (row_len - 1)
    at_bos = np.isin(row_starts, starts).sum() if rows else 0
    wasted = total - (rows * (row_len - 1) + (1 if rows else 0))
    return {"rows": int(rows), "wasted_tokens": int(wasted), "waste": wasted / max(total, 1),
            "rows_starting_at_bos": float(at_bos / max(rows, 1))}


def waste_crop(lengths: np.ndarray, row_len: int) -> dict[str, Any]:
    """nanochat's BOS-aligned loader without best fit: documents in order; one that does not fit the rest of the
    row is cropped to fill it and its remainder dropped."""
    rows, room, wasted = 0, 0, 0
    for n in lengths.tolist():
        if room == 0:
            rows, room = rows + 1, row_len
        if n <= room:
            room -= n
        else:
            wasted += n - room
            room = 0
    total = int(lengths.sum())
    if room:  # the last row is not full: its documents are not trained on
        wasted += row_len - room
        rows -= 1
    return {"rows": rows, "wasted_tokens": int(wasted), "waste": wasted / max(total, 1), "rows_starting_at_bos": 1.0}


def build_plan(specs: list[SourceSpec], tokens: int | None, seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0,
               max_epochs: float = DEFAULT_MAX_EPOCHS, buffer_docs: int = PACK_BUFFER,
               split_long: bool = False) -> tuple[dict[str, Any], PackResult]:
    """The plan (plan.json's content) and its rows; `tokens=None` means one pass over the sources' documents.
    `split_long` cuts documents longer than a row into row-sized pieces (each masked as its own document; rows
    may then start mid-document) instead of keeping only their first row."""
    if not specs:
        raise PlanError("no sources given: name at least one finished run (NAME=RUN:WEIGHT)")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise PlanError(f"source names must differ, got {names}; name them NAME=RUN:WEIGHT")
    if seq_len < 1:
        raise PlanError(f"--seq-len must be at least 1, got {seq_len}")
    if tokens is not None and tokens < 1:
        raise PlanError(f"--tokens must be a positive number of tokens, got {tokens}")
    row_len = seq_len + 1
    runs = [open_run(s.run) for s in specs]
    first = runs[0]
    for spec, run in zip(specs, runs, strict=True):
        if run.tokenizer_sha256 != first.tokenizer_sha256:
            raise PlanError(f"sources {specs[0].name} ({specs[0].run}) and {spec.name} ({spec.run}) were encoded with "
                            f"different tokenizers ({first.tokenizer_sha256[:12]}… vs {run.tokenizer_sha256[:12]}…); "
                            "a mixture needs one tokenizer: re-encode one of them with the other's")
    sources = []
    for i, (spec, run) in enumerate(zip(specs, runs, strict=True)):
        lengths = run.doc_lengths
        if len(lengths) == 0:
            raise PlanError(f"source {spec.name} ({spec.run}) has no train documents")
        if int(lengths.sum()) < row_len:
            raise PlanError(f"--seq-len {seq_len}: source {spec.name} holds only {int(lengths.sum()):,} train tokens, "
                            f"fewer than one row of {row_len:,}; lower --seq-len")
        sources.append(_Source(i, spec.name, spec.weight, lengths, run.doc_shard, run.doc_start, seed,
                               buffer_docs, split_long))
    total_w = sum(s.weight for s in specs)
    capacity = [int((s.lengths if split_long else np.minimum(s.lengths, row_len)).sum()) for s in sources]
    # tokens=None: one pass, as many rows as the capped documents fill
    n_rows = max(1, sum(capacity) // row_len) if tokens is None else -(-tokens // seq_len)
    for spec, cap in zip(specs, capacity, strict=True):
        need = n_rows * row_len * spec.weight / total_w
        if need > cap * max_epochs:
            raise PlanError(f"--tokens {n_rows * seq_len:,}: source {spec.name} ({spec.run}) holds {cap:,} usable "
                            f"tokens; its share of {need:,.0f} would take {need / cap:.1f} epochs, above --max-epochs "
                            f"{max_epochs:g}. Lower --tokens or its weight, or raise --max-epochs")
    packed = pack_best_fit(sources, n_rows, row_len)
    plan = _describe(specs, runs, sources, packed, seq_len, seed, n_rows, max_epochs, buffer_docs)
    plan["long_documents"] = "split" if split_long else "crop"
    return plan, packed


def _describe(specs: list[SourceSpec], runs: list[RunDocs], sources: list[_Source], packed: PackResult, seq_len: int,
              seed: int, n_rows: int, max_epochs: float, buffer_docs: int) -> dict[str, Any]:
    row_len = seq_len + 1
    total = int(packed.tokens_per_source.sum())
    used_lengths = np.array([full for _, _, full in packed.used_docs], np.int64)
    doc_tokens = int(used_lengths.sum())
    wasted = packed.padded + packed.cropped_fit + packed.cropped_long
    used_per_source = np.bincount([s for s, _, _ in packed.used_docs], minlength=len(sources))
    out_sources = []
    for spec, run, s in zip(specs, runs, sources, strict=True):
        n = int(packed.tokens_per_source[s.index])
        out_sources.append({
            "name": spec.name, "run": spec.run, "weight": spec.weight, "share_target": spec.weight / sum(
                x.weight for x in specs), "share": n / max(total, 1), "tokens": n,
            "documents_used": int(used_per_source[s.index]), "documents": len(s.lengths),
            "epochs": int(used_per_source[s.index]) / len(s.lengths), "shards": run.shards})
    return {
        "format": PLAN_FORMAT, "seq_len": seq_len, "row_len": row_len, "rows": n_rows, "seed": seed,
        "tokens": n_rows * seq_len, "max_epochs": max_epochs, "pack_buffer": buffer_docs,
        "tokenizer": {"sha256": runs[0].tokenizer_sha256, "bos_id": runs[0].bos_id},
        "sources": out_sources,
        "waste": {
            "best_fit": {"rows": n_rows, "wasted_tokens": wasted, "waste": wasted / max(doc_tokens, 1),
                         "padded": packed.padded, "cropped_to_fit": packed.cropped_fit,
                         "cropped_long_documents": packed.cropped_long,
                         "rows_starting_at_bos": packed.rows_at_bos / max(n_rows, 1)},
            "naive_concatenation": waste_naive(used_lengths, row_len),
            "nanochat_crop": waste_crop(used_lengths, row_len),
            "document_tokens": doc_tokens,
            "definition": "wasted_tokens / document_tokens over the documents the best-fit plan placed, in the "
                          "shuffled order they were drawn: tokens cropped or padded (naive concatenation wastes "
                          "only its tail, but its rows start mid-document)",
        },
    }


def write_plan(plan_dir: str | Path, plan: dict[str, Any], packed: PackResult) -> str:
    """segments.npy and rows.npy first, plan.json (with their sha256) last: a plan.json always describes
    complete arrays. `plan_dir` is a local directory or a URL (each file written whole, pipeline/storage.py)."""
    d = str(plan_dir)
    if storage.exists(storage.join(d, PLAN_JSON)):
        raise PlanError(f"{storage.join(d, PLAN_JSON)} exists; choose another --out or delete the old plan")
    storage.makedirs(d)
    files = {}
    for name, arr in ((SEGMENTS_NPY, packed.segments), (ROWS_NPY, packed.row_first)):
        with storage.open_write(storage.join(d, name)) as f:
            np.save(f, arr)
        files[name] = storage.sha256_of(storage.join(d, name))
    storage.write_json(storage.join(d, PLAN_JSON), {**plan, "files": files})
    return storage.join(d, PLAN_JSON)


@dataclass
class Plan:
    """A plan read back: its description and memory-mapped rows."""

    path: str
    data: dict[str, Any]
    segments: np.ndarray
    row_first: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.row_first) - 1

    @property
    def row_len(self) -> int:
        return int(self.data["row_len"])

    def row_segments(self, i: int) -> np.ndarray:
        return self.segments[self.row_first[i] : self.row_first[i + 1]]

    def rows_segments(self, rows: np.ndarray) -> np.ndarray:
        """The segments of plan rows `rows`, row after row (one gather, no Python loop over rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        first = np.asarray(self.row_first[rows], dtype=np.int64)
        counts = np.asarray(self.row_first[rows + 1], dtype=np.int64) - first
        # index of each wanted segment: its row's first segment plus its rank inside the row
        ends = np.cumsum(counts)
        idx = np.repeat(first - (ends - counts), counts) + np.arange(int(ends[-1]) if len(ends) else 0)
        return self.segments[idx]

    def order(self, shuffle_block: int = SHUFFLE_BLOCK) -> RowOrder:
        """The order trainers read this plan's rows in (`RowOrder`)."""
        return RowOrder(self.rows, int(self.data["seed"]), shuffle_block)


class RowOrder:
    """Which plan row is read at each global row position (module doc, "Read order"): positions are cut into blocks
    of `shuffle_block` rows and block b (the last one may be shorter) is permuted by
    `np.random.default_rng([seed, b])`. `shuffle_block` 0 (or 1) reads the plan's order. Only one block's
    permutation is held, so a plan of millions of rows costs one block of memory."""

    def __init__(self, rows: int, seed: int, shuffle_block: int = SHUFFLE_BLOCK) -> None:
        if shuffle_block < 0:
            raise ValueError(f"shuffle_block must be >= 0 rows (0 = the plan's order), got {shuffle_block}")
        if rows < 0:
            raise ValueError(f"a plan holds 0 or more rows, got {rows}")
        self.n_rows, self.seed, self.shuffle_block = rows, seed, shuffle_block
        self._block, self._perm = -1, np.empty(0, dtype=np.int64)

    @property
    def blocks(self) -> int:
        return -(-self.n_rows // self.shuffle_block) if self.shuffle_block > 1 else min(self.n_rows, 1)

    def block(self, b: int) -> np.ndarray:
        """The plan rows read at the positions of block b, in read order (int64; the plan's order when shuffling
        is off, then the whole plan is block 0)."""
        size = self.shuffle_block
        if size <= 1:
            if b != 0:
                raise IndexError(f"block {b}: without shuffling the plan's {self.n_rows} rows are one block")
            return np.arange(self.n_rows, dtype=np.int64)
        if not 0 <= b < self.blocks:
            raise IndexError(f"block {b} is outside the plan's {self.blocks} blocks of {size} rows")
        if b != self._block:
            n = min(size, self.n_rows - b * size)
            self._perm = b * size + np.random.default_rng([self.seed, b]).permutation(n).astype(np.int64)
            self._block = b
        return self._perm

    def plan_row(self, i: int) -> int:
        """The plan row read at global row position `i`."""
        if not 0 <= i < self.n_rows:
            raise IndexError(f"row position {i} is outside the plan's {self.n_rows} rows")
        if self.shuffle_block <= 1:
            return i
        b, k = divmod(i, self.shuffle_block)
        return int(self.block(b)[k])

    def plan_rows(self, first: int, count: int) -> np.ndarray:
        """The plan rows read at positions [first, first + count), as int64."""
        if count < 0 or not 0 <= first <= first + count <= self.n_rows:
            raise IndexError(f"row positions [{first}, {first + count}) are outside the plan's {self.n_rows} rows")
        size = self.shuffle_block
        if size <= 1:
            return np.arange(first, first + count, dtype=np.int64)
        parts, i, end = [], first, first + count
        while i < end:
            b, k = divmod(i, size)
            take = min(end - i, size - k)
            parts.append(self.block(b)[k : k + take])
            i += take
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def is_plan(path: str | Path) -> bool:
    return storage.exists(storage.join(str(path), PLAN_JSON))


def read_plan(plan_dir: str | Path) -> Plan:
    """A plan, local or at a URL (its arrays then memory-mapped from storage's local cache)."""
    d = str(plan_dir)
    try:
        data = storage.read_json(storage.join(d, PLAN_JSON))
    except FileNotFoundError:
        raise FileNotFoundError(f"{storage.join(d, PLAN_JSON)} not found: {d} is not a `tokshard mix` plan") from None
    if data.get("format") != PLAN_FORMAT:
        raise ValueError(f"{storage.join(d, PLAN_JSON)}: unknown plan format {data.get('format')!r}")
    local = {}
    for name, sha in data["files"].items():
        local[name] = storage.local_file(storage.join(d, name), sha)  # a URL's copy is checked as it is fetched
        if storage.is_url(d):
            continue
        got = hashlib.sha256(local[name].read_bytes()).hexdigest()
        if got != sha:
            raise ValueError(f"{storage.join(d, name)}: sha256 {got[:12]}… differs from plan.json's {sha[:12]}… (file "
                             "replaced or damaged); rebuild the plan with `tokshard mix`")
    return Plan(d, data, np.load(local[SEGMENTS_NPY], mmap_mode="r"), np.load(local[ROWS_NPY], mmap_mode="r"))


def check_sources(plan_data: dict[str, Any]) -> list[str]:
    """What changed in the plan's runs since it was made (tokenizer, shard sha256 or size), one line each; the
    manifest's records are compared, and each shard file's size (the manifest's sha256 covers the bytes; a full
    re-hash is `tokshard inspect`)."""
    problems = []
    for src in plan_data["sources"]:
        try:
            manifest = Manifest.read(src["run"])
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"source {src['name']}: {e}")
            continue
        if manifest.tokenizer["sha256"] != plan_data["tokenizer"]["sha256"]:
            problems.append(f"source {src['name']} ({src['run']}): tokenizer is now "
                            f"{manifest.tokenizer['sha256'][:12]}…, the plan was made with "
                            f"{plan_data['tokenizer']['sha256'][:12]}…")
        now = {r["path"]: r for r in manifest.shards}
        for rec in src["shards"]:
            cur = now.get(rec["path"])
            if cur is None:
                problems.append(f"source {src['name']}: shard {rec['path']} is no longer in {src['run']}")
            elif cur["sha256"] != rec["sha256"]:
                problems.append(f"source {src['name']}: shard {rec['path']} sha256 is now {cur['sha256'][:12]}…, "
                                f"the plan was made with {rec['sha256'][:12]}…")
            else:  # what the store or disk reports, without reading the shard
                path = storage.join(src["run"], rec["path"])
                found = storage.info(path)
                if found is None:
                    problems.append(f"source {src['name']}: {path} is missing")
                elif found["size"] != rec["size"]:
                    problems.append(f"source {src['name']}: {path} is {found['size']:,} bytes, the plan says "
                                    f"{rec['size']:,}")
    return problems


def describe(plan: dict[str, Any]) -> str:
    """A few human-readable lines about a plan (for the CLI)."""
    w = plan["waste"]
    lines = [f"planned {plan['rows']:,} rows of {plan['row_len']:,} tokens ({plan['tokens']:,} training tokens, "
             f"seed {plan['seed']})"]
    for s in plan["sources"]:
        lines.append(f"  {s['name']}: {s['tokens']:,} tokens ({100 * s['share']:.2f}%, target "
                     f"{100 * s['share_target']:.2f}%), {s['documents_used']:,} documents, {s['epochs']:.2f} epochs")
    lines.append(f"  waste: best fit {100 * w['best_fit']['waste']:.2f}% (padded {w['best_fit']['padded']:,}, "
                 f"cropped {w['best_fit']['cropped_to_fit'] + w['best_fit']['cropped_long_documents']:,}, long "
                 f"documents {plan['long_documents']}, {100 * w['best_fit']['rows_starting_at_bos']:.1f}% of rows "
                 "starting at <|bos|>); "
                 f"nanochat crop {100 * w['nanochat_crop']['waste']:.2f}%; naive concatenation "
                 f"{100 * w['naive_concatenation']['waste']:.2f}% with "
                 f"{100 * (1 - w['naive_concatenation']['rows_starting_at_bos']):.1f}% of rows starting mid-document")
    return "\n".join(lines)
