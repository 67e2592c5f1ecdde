"""Training data: batches of packed rows (`tokshard.data`, the default) or of fixed-length windows streamed from
the token shards of `tokshard encode`, and the fixed validation windows.

`--data` is a run or a `tokshard mix` plan. Packed rows ("best-fit") come from the plan, or from a plan of the
run made in memory for the run's steps (packing is online, so a longer plan starts with the same rows: --steps may
change on --resume); they start at a document and carry position ids, and the model masks attention per
document. Windows ("windows", the earlier behaviour, kept for comparison) are read from a run:

The train split is one flat token stream per shard (pipeline.shards.ShardReader: a zero-copy numpy view over the
memory map), cut into windows of seq_len + 1 tokens that overlap by one token, so every token but a shard's first
is a target exactly once per epoch. Windows never straddle two shards; documents inside a window are separated by
their `<|bos|>` and attend to each other (nanoGPT-style packing). The order is a permutation of all windows
drawn from (seed, epoch), so the whole data order is a function of the seed and the number of windows consumed:
that one integer (`position`) is what a checkpoint stores to resume exactly. A background thread gathers the
next batches (only the chosen windows are copied out of the memory map) into pinned memory while the model
computes.

Validation is always the first `eval_tokens` tokens of the val split, in order, in windows of seq_len + 1.

OUTDIR may be an object-store URL (`--data s3://...`): shards are then memory-mapped from a local cache, each
copy verified against the sha256 the manifest records (pipeline/storage.py).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokshard.pipeline import mix, storage
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.shards import ShardReader
from tokshard.pipeline.tokenizer import Tokenizer


@dataclass
class Dataset:
    out_dir: Path | str  # a local directory, or a URL
    tokenizer_dir: Path | str
    tokenizer_sha256: str
    vocab_size: int
    token_bytes: np.ndarray
    train: list[ShardReader]
    val: list[ShardReader]
    complete: bool
    bos_id: int
    plan: mix.Plan | None = None  # when --data is a `tokshard mix` plan

    def close(self) -> None:
        for r in (*self.train, *self.val):
            r.close()


def open_dataset(data: str | Path) -> Dataset:
    """Open a run (or a plan's first run: its tokenizer and val split), local or on object storage, and check its
    shards belong to its tokenizer."""
    plan = mix.read_plan(data) if mix.is_plan(data) else None
    source = plan.data["sources"][0]["run"] if plan is not None else data
    remote = storage.is_url(source)
    out = str(source) if remote else Path(source)
    manifest = Manifest.read(out)
    sha = manifest.tokenizer["sha256"]
    tok_dir = storage.join(out, manifest.tokenizer.get("path", "tokenizer"))
    tok_dir = tok_dir if remote else Path(tok_dir)
    tok = Tokenizer.load(tok_dir)
    if tok.sha256 != sha:
        raise ValueError(f"{tok_dir} has tokenizer sha256 {tok.sha256[:12]}…, but {out}/manifest.json says the "
                         f"shards were made with {sha[:12]}…; BPB would be computed with the wrong token bytes. "
                         "Restore the tokenizer the shards were encoded with, or re-encode.")
    splits: dict[str, list[ShardReader]] = {"train": [], "val": []}
    for rec in sorted(manifest.shards, key=lambda r: r["path"]):
        path = storage.join(out, rec["path"])
        if not storage.exists(path):
            raise FileNotFoundError(f"{path} is listed in {out}/manifest.json but missing")
        # A downloaded copy is checked against the manifest's sha256 (a local shard is `inspect`'s to verify).
        reader = ShardReader(path, sha256=rec["sha256"] if remote else None)
        if reader.tokenizer_sha256 != sha:
            raise ValueError(f"{path} was encoded with tokenizer {reader.tokenizer_sha256[:12]}…, not the "
                             f"manifest's {sha[:12]}…")
        splits[rec["split"]].append(reader)
    if not splits["train"]:
        raise ValueError(f"{out} has no train shards")
    return Dataset(out_dir=out, tokenizer_dir=tok_dir, tokenizer_sha256=sha, vocab_size=tok.vocab_size,
                   token_bytes=tok.token_bytes, train=splits["train"], val=splits["val"],
                   complete=bool(manifest.data.get("complete", True)), bos_id=tok.bos_id, plan=plan)


class WindowStream:
    """All seq_len + 1 windows of the train shards, in a seeded order that depends only on the position."""

    def __init__(self, shards: list[ShardReader], seq_len: int, seed: int) -> None:
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        counts = np.array([max(0, (len(s.tokens) - 1) // seq_len) for s in shards], dtype=np.int64)
        self.first = np.concatenate([[0], np.cumsum(counts)])  # global index of each shard's first window
        self.n_windows = int(self.first[-1])
        if self.n_windows == 0:
            total = sum(len(s.tokens) for s in shards)
            raise ValueError(f"the train split has {total} tokens, not enough for one window of {seq_len + 1}; "
                             "use a smaller --seq-len or more data")
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._epoch = epoch
        return self._perm

    def windows(self, position: int, count: int) -> np.ndarray:
        """The `count` windows at stream positions [position, position + count) as int64 [count, seq_len + 1]."""
        out = np.empty((count, self.seq_len + 1), dtype=np.int64)
        idx = np.empty(count, dtype=np.int64)
        for i in range(count):  # a batch may cross an epoch boundary
            epoch, k = divmod(position + i, self.n_windows)
            idx[i] = self.order(epoch)[k]
        shard_of = np.searchsorted(self.first, idx, side="right") - 1
        cols = np.arange(self.seq_len + 1)
        for s in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == s)
            starts = (idx[rows] - self.first[s]) * self.seq_len
            out[rows] = self.shards[s].tokens[starts[:, None] + cols]  # copies just these windows from the mmap
        return out


def window_batches(stream: WindowStream, batch_size: int, rank: int) -> Callable[[int], dict[str, Any]]:
    """This rank's batch of windows of the global batch starting at a stream position, as model inputs."""
    def make(position: int) -> dict[str, Any]:
        w = torch.from_numpy(stream.windows(position + rank * batch_size, batch_size))
        return {"input_ids": w[:, :-1], "labels": w[:, 1:]}
    return make


class BatchLoader:
    """Batches prepared ahead by a background thread.

    `make_batch(position)` returns this rank's batch (a dict of tensors: `input_ids`, `labels`, optionally
    `position_ids`) of the global batch of `global_batch` rows starting at `position`; `next()` returns them
    in order (tensors pinned when `pin`). `position` counts the rows consumed by the batches already returned,
    across all ranks: save it, and a loader started there continues with the very next batch.
    """

    def __init__(self, make_batch: Callable[[int], dict[str, Any]], global_batch: int, position: int = 0,
                 prefetch: int = 4, pin: bool = False) -> None:
        self.make_batch, self.global_batch, self.pin = make_batch, global_batch, pin
        self.position = position
        self.wait_s = 0.0  # time next() spent waiting for the thread: data loading the model could not hide
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(position,), daemon=True, name="tokshard-data")
        self._thread.start()

    def _produce(self, position: int) -> None:
        try:
            while not self._stop.is_set():
                batch = {k: v for k, v in self.make_batch(position).items() if isinstance(v, torch.Tensor)}
                if self.pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                position += self.global_batch
                self._put((position, batch))
        except BaseException as e:  # handed to the consumer, which re-raises it in the training thread
            self._put((None, e))

    def _put(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        position, batch = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if position is None:
            raise RuntimeError("the data loader thread failed") from batch
        self.position = position
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def val_windows(shards: list[ShardReader], seq_len: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `max_tokens` val tokens (shards in order) as windows [N, seq_len + 1] overlapping by one token,
    the last one right-padded; returns (windows, real length of each row)."""
    parts, have = [], 0
    for s in shards:
        take = min(len(s.tokens), max_tokens - have)
        parts.append(np.asarray(s.tokens[:take], dtype=np.int64))
        have += take
        if have >= max_tokens:
            break
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(flat) < 2:
        raise ValueError("the val split holds no tokens to validate on; encode with --val-fraction > 0")
    n = -(-(len(flat) - 1) // seq_len)
    windows = np.zeros((n, seq_len + 1), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for i in range(n):
        row = flat[i * seq_len : i * seq_len + seq_len + 1]
        windows[i, : len(row)] = row
        lengths[i] = len(row)
    return windows, lengths
