"""tokshard.data: packed training rows for any PyTorch trainer, from a `tokshard mix` plan or a finished run.

`PackedRows` is an `IterableDataset` of whole batches (use it with `DataLoader(..., batch_size=None)`, or
`Loader`, which also keeps the resume position when workers are used). Each batch is a dict of

- `input_ids` int64 [B, L] and `labels` int64 [B, L] (the next token; -100 on padding),
- `position_ids` int64 [B, L]: the position inside its document, 0 at every `<|bos|>`, so attention can be masked
  per document (`doc = cumsum(position_ids == 0)`) and RoPE restarts at each document,
- `cu_seqlens` int32 [segments + 1]: document boundaries over the flattened B*L tokens (flash-attn's varlen layout)
  and `max_seqlen`,
- `position`: the global row position after this batch (what `state_dict()` stores).

Rows are read in a shuffled order, `tokshard.pipeline.mix.RowOrder` (the order `tokshard export` writes too): the
plan's rows in blocks of `shuffle_block` (8,192) rows, each block permuted by (plan seed, block number). The packer
emits the row-sized pieces of a long document one after another (best fit takes the longest piece first), so in
plan order a batch held mostly one document: on ../shared/corpus at seq 128 half the 16-row batches drew over 48%
of their tokens from a single document, and the tiny model trained on them ended 0.2 val BPB behind windows
(docs/benchmarks.md). A block is a whole number of rows, so a longer plan of the same sources and seed starts with
the same rows in the same order once its first blocks are complete.
The order is a function of the plan (seed) and a global row position only. A global batch is `batch_size * world`
consecutive rows and rank r takes rows [r * batch_size, (r + 1) * batch_size) of it, so the concatenation of all
ranks' rows is the single-process sequence, and a state saved at world size W1 resumes exactly at W2. With
DataLoader workers, worker k of K produces this rank's batches k, k + K, ... which the DataLoader hands out in
order. Only whole global batches are yielded; the plan's last partial one is dropped on every rank alike.

Shards are read through `ShardReader` (memory-mapped); opening checks that the runs still hold the shards and
tokenizer the plan was made with. `import tokshard` never imports torch; this module does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tokshard.pipeline import mix, storage
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.shards import ShardReader
from tokshard.pipeline.tokenizer import Tokenizer

IGNORE_INDEX = -100  # labels on padding: torch.nn.functional.cross_entropy skips them
SHUFFLE_BLOCK = mix.SHUFFLE_BLOCK  # rows permuted together (module doc)

__all__ = ["IGNORE_INDEX", "Loader", "PackedRows", "open_plan"]


def open_plan(source: str | Path, *, seq_len: int | None = None, tokens: int | None = None, seed: int = 0,
              max_epochs: float = mix.DEFAULT_MAX_EPOCHS, split_long: bool = False) -> mix.Plan:
    """A plan directory as is, or a run directory planned in memory (one pass, or `tokens`, at `seq_len`)."""
    if mix.is_plan(source):
        plan = mix.read_plan(source)
        if seq_len is not None and seq_len != plan.data["seq_len"]:
            raise ValueError(f"{source} was planned for seq_len {plan.data['seq_len']}, not {seq_len}; make a plan "
                             f"with `tokshard mix ... --seq-len {seq_len}`")
        return plan
    if seq_len is None:
        raise ValueError(f"{source} is a run, not a plan: give seq_len (rows are seq_len + 1 tokens)")
    data, packed = mix.build_plan([mix.SourceSpec("run", str(source), 1.0)], tokens, seq_len, seed, max_epochs,
                                  split_long=split_long)
    return mix.Plan(Path(str(source)), data, packed.segments, packed.row_first)


def _verify(plan: mix.Plan) -> None:
    problems = mix.check_sources(plan.data)
    want = plan.data["tokenizer"]["sha256"]
    for src in plan.data["sources"]:
        if problems:
            break
        tok_dir = storage.join(src["run"], Manifest.read(src["run"]).tokenizer.get("path", "tokenizer"))
        got = Tokenizer.load(tok_dir).sha256
        if got != want:
            problems.append(f"source {src['name']}: {tok_dir} has sha256 {got[:12]}…, the plan's shards were made "
                            f"with {want[:12]}…")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{plan.path}: the runs changed since the plan was made: {'; '.join(problems[:5])}{more}. "
                         "Rebuild the plan with `tokshard mix`")


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class PackedRows(IterableDataset):
    """Batches of packed rows of a plan or run for one rank (module doc). `batch_size` is rows per rank per batch;
    rank and world default to torch.distributed's (or RANK / WORLD_SIZE)."""

    def __init__(self, source: str | Path | mix.Plan, *, batch_size: int, seq_len: int | None = None,
                 tokens: int | None = None, seed: int = 0, rank: int | None = None, world: int | None = None,
                 verify: bool = True, shuffle_block: int = SHUFFLE_BLOCK) -> None:
        super().__init__()
        self.plan = source if isinstance(source, mix.Plan) else open_plan(source, seq_len=seq_len, tokens=tokens,
                                                                           seed=seed)
        if verify:
            _verify(self.plan)
        r, w = _dist_rank_world()
        self.rank, self.world = (r if rank is None else rank), (w if world is None else world)
        if batch_size < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, {self.rank}, {self.world}")
        self.order = self.plan.order(shuffle_block)  # ValueError for a negative block
        self.batch_size = batch_size
        self.seq_len = int(self.plan.data["seq_len"])
        self.bos_id = int(self.plan.data["tokenizer"]["bos_id"])
        self.position = 0
        self._readers: dict[tuple[int, int], np.ndarray] = {}
        self._open: list[ShardReader] = []

    @property
    def shuffle_block(self) -> int:
        """Rows permuted together when read (0 or 1: the plan's order); the read order holds it."""
        return self.order.shuffle_block

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def __len__(self) -> int:
        """Batches left for this rank from the current position."""
        return max(0, (self.plan.rows - self.position) // self.global_batch)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "rows": self.plan.rows, "seed": self.plan.data["seed"],
                "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batch the state was saved at, at this loader's world size and batch size."""
        mine = self.state_dict()
        for key in ("rows", "seed", "seq_len"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"the state was saved over another plan ({key} {state[key]}, this one {mine[key]})")
        position = int(state["position"])
        if not 0 <= position <= self.plan.rows:
            raise ValueError(f"position {position} is outside the plan's {self.plan.rows} rows")
        self.position = position

    def _tokens(self, source: int, shard: int) -> np.ndarray:
        key = (source, shard)
        if key not in self._readers:
            src = self.plan.data["sources"][source]
            reader = ShardReader(storage.join(src["run"], src["shards"][shard]["path"]))
            self._open.append(reader)
            self._readers[key] = reader.tokens
        return self._readers[key]

    def plan_row(self, i: int) -> int:
        """The plan row read at global row position `i` (module doc: blocks of rows, each permuted)."""
        return self.order.plan_row(i)

    def rows(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows read at positions [first, first + count) as (tokens [count, L + 1], position in document
        [count, L + 1], filled length of each row)."""
        row_len = self.plan.row_len
        tokens = np.full((count, row_len), self.bos_id, dtype=np.int64)
        pos = np.zeros((count, row_len), dtype=np.int64)
        filled = np.zeros(count, dtype=np.int64)
        ramp = np.arange(row_len, dtype=np.int64)
        for i, row in enumerate(self.order.plan_rows(first, count).tolist()):
            o = 0
            for src, shard, start, length in self.plan.row_segments(row).tolist():
                tokens[i, o : o + length] = self._tokens(src, shard)[start : start + length]
                pos[i, o : o + length] = ramp[:length]
                o += length
            filled[i] = o
            pos[i, o:] = ramp[: row_len - o]  # padding is a segment of its own
        return tokens, pos, filled

    def batch(self, position: int) -> dict[str, Any]:
        """This rank's batch of the global batch that starts at row `position`."""
        tokens, pos, filled = self.rows(position + self.rank * self.batch_size, self.batch_size)
        seq = self.seq_len
        labels = tokens[:, 1:].copy()
        labels[np.arange(seq)[None, :] + 1 >= filled[:, None]] = IGNORE_INDEX
        position_ids = pos[:, :seq]
        starts = np.flatnonzero(position_ids.reshape(-1) == 0)
        cu = np.append(starts, position_ids.size).astype(np.int32)
        return {"input_ids": torch.from_numpy(tokens[:, :seq]), "labels": torch.from_numpy(labels),
                "position_ids": torch.from_numpy(np.ascontiguousarray(position_ids)),
                "cu_seqlens": torch.from_numpy(cu), "max_seqlen": int(np.diff(cu).max()),
                "position": position + self.global_batch}

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start = self.position
        j = worker
        while start + (j + 1) * self.global_batch <= self.plan.rows:
            out = self.batch(start + j * self.global_batch)
            self.position = out["position"]
            yield out
            j += workers

    def close(self) -> None:
        self._readers.clear()
        for r in self._open:
            r.close()
        self._open.clear()


class Loader(DataLoader):
    """A DataLoader over `PackedRows` whose `state_dict()` is right with workers too: the main process records
    the position of every batch it hands out."""

    def __init__(self, dataset: PackedRows, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)

    def __iter__(self):
        for batch in super().__iter__():
            self.dataset.position = int(batch["position"])
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
