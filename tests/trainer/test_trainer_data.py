"""Windows streamed from real shard files: coverage, seeded order, resumable positions, ranks, validation windows.

The shards here hold token ids equal to their position in a global stream, so every window says where it came
from."""

from __future__ import annotations

import numpy as np
import pytest

from tokshard.pipeline.shards import ShardReader, write_shard
from tokshard.trainer.data import BatchLoader, WindowStream, val_windows, window_batches

SEQ = 8


@pytest.fixture
def readers(tmp_path):
    """Three shards of 50, 17 and 5 tokens (the last too short for a window), ids = global positions."""
    out, start = [], 0
    for i, n in enumerate((50, 17, 5)):
        tokens = np.arange(start, start + n, dtype=np.uint16)
        offsets = np.array([0, n // 2, n], dtype=np.int64)
        write_shard(tmp_path / f"shard-{i}.arrow", [f"a{i}", f"b{i}"], tokens, offsets, tokenizer_sha256="s",
                    bos_id=0)
        out.append(ShardReader(tmp_path / f"shard-{i}.arrow"))
        start += n
    yield out
    for r in out:
        r.close()


def test_windows_cover_each_shard_once_per_epoch(readers):
    stream = WindowStream(readers, SEQ, seed=0)
    assert stream.n_windows == (50 - 1) // SEQ + (17 - 1) // SEQ == 6 + 2
    w = stream.windows(0, stream.n_windows)
    assert w.dtype == np.int64 and w.shape == (8, SEQ + 1)
    assert (np.diff(w, axis=1) == 1).all(), "a window is a contiguous run of one shard"
    starts = sorted(int(x) for x in w[:, 0])
    assert starts == [0, 8, 16, 24, 32, 40, 50, 58]  # consecutive windows share one token: every target once
    assert sorted(stream.windows(8, 8)[:, 0].tolist()) == starts  # the next epoch: the same windows...
    assert stream.windows(8, 8)[:, 0].tolist() != w[:, 0].tolist()  # ...in another order


def test_order_depends_on_seed_and_position_only(readers):
    a, b = WindowStream(readers, SEQ, seed=1), WindowStream(readers, SEQ, seed=1)
    assert np.array_equal(a.windows(0, 20), np.concatenate([b.windows(0, 7), b.windows(7, 13)]))
    assert not np.array_equal(a.windows(0, 8), WindowStream(readers, SEQ, seed=2).windows(0, 8))


def _rows(batch: dict) -> np.ndarray:
    """The windows a batch was cut from: inputs plus the last target."""
    return np.concatenate([batch["input_ids"].numpy(), batch["labels"].numpy()[:, -1:]], axis=1)


def test_loader_resumes_at_its_position_and_splits_ranks(readers):
    stream = WindowStream(readers, SEQ, seed=0)
    loader = BatchLoader(window_batches(stream, 3, rank=0), global_batch=3, prefetch=2)
    first = [_rows(loader.next()) for _ in range(4)]
    assert loader.position == 12
    resumed = BatchLoader(window_batches(stream, 3, rank=0), global_batch=3, position=loader.position)
    assert np.array_equal(_rows(resumed.next()), _rows(loader.next()))
    loader.close()
    resumed.close()
    assert np.array_equal(np.concatenate(first), stream.windows(0, 12))
    ranks = [BatchLoader(window_batches(stream, 2, rank=r), global_batch=4) for r in (0, 1)]
    got = [[_rows(lo.next()) for _ in range(2)] for lo in ranks]
    assert np.array_equal(np.concatenate([got[0][0], got[1][0], got[0][1], got[1][1]]), stream.windows(0, 8))
    assert ranks[0].position == ranks[1].position == 8
    for lo in ranks:
        lo.close()


def test_a_failing_batch_reaches_the_training_thread(readers):
    def broken(position: int) -> dict:
        raise OSError(f"shard unreadable at {position}")

    loader = BatchLoader(broken, global_batch=2)
    with pytest.raises(RuntimeError, match="loader thread failed") as e:
        loader.next()
    assert "shard unreadable at 0" in str(e.value.__cause__)
    loader.close()


def test_too_little_data_is_a_clear_error(readers):
    with pytest.raises(ValueError, match="not enough for one window of 65"):
        WindowStream(readers[2:], 64, seed=0)
    with pytest.raises(ValueError, match="val split holds no tokens"):
        val_windows([], SEQ, 100)


def test_val_windows_are_the_first_tokens_in_order(readers):
    windows, lengths = val_windows(readers, SEQ, max_tokens=30)
    assert windows.shape == (4, SEQ + 1) and lengths.tolist() == [9, 9, 9, 6]
    assert windows[0].tolist() == list(range(9)) and windows[3, :6].tolist() == list(range(24, 30))
    everything, lens = val_windows(readers, SEQ, max_tokens=10**6)
    assert int(everything[-1, lens[-1] - 1]) == 71  # all 72 tokens, across the shard boundaries
