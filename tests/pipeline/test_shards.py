"""Shard files: readable by pyarrow, datasets and polars; zero-copy reader; no visible partial shard ever."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from tokshard.pipeline import atomic
from tokshard.pipeline.shards import ShardReader, write_shard


def _write(tmp_path, tok, texts, name="s.arrow"):
    flat, offsets = tok.encode_to_array(texts)
    ids = [f"doc-{i}" for i in range(len(texts))]
    return write_shard(tmp_path / name, ids, flat, offsets, tokenizer_sha256=tok.sha256, bos_id=tok.bos_id), flat


def test_roundtrip_and_zero_copy_view(tmp_path, small_tokenizer):
    texts = ["hello world", "", "über 中文 😀", "x" * 100]
    written, flat = _write(tmp_path, small_tokenizer, texts)
    with ShardReader(written.path) as r:
        assert r.documents == 4 and written.tokens == len(flat) == len(r.tokens)
        assert r.dtype == np.uint16 and r.bos_id == small_tokenizer.bos_id
        assert r.tokenizer_sha256 == small_tokenizer.sha256
        np.testing.assert_array_equal(r.tokens, flat)
        assert not r.tokens.flags.owndata  # a view over the memory map, not a copy
        assert not r.tokens.flags.writeable
        for i, t in enumerate(texts):
            assert r.row(i)[0] == small_tokenizer.bos_id
            assert small_tokenizer.decode(r.row(i)[1:]) == t
        assert r.ids == [f"doc-{i}" for i in range(4)]


def test_loads_as_is_with_pyarrow_datasets_and_polars(tmp_path, small_tokenizer):
    import datasets
    import polars as pl

    written, _ = _write(tmp_path, small_tokenizer, ["a b c", "d e"])
    with pa.memory_map(str(written.path)) as src:
        table = pa.ipc.open_stream(src).read_all()
    assert table.schema.field("tokens").type == pa.list_(pa.uint16())
    meta = table.schema.metadata
    assert meta[b"tokshard.dtype"] == b"uint16" and meta[b"tokshard.format_version"] == b"1"
    ds = datasets.Dataset.from_file(str(written.path))
    assert ds[1]["tokens"][0] == small_tokenizer.bos_id and ds[1]["id"] == "doc-1"
    df = pl.read_ipc_stream(written.path)
    assert df.height == 2 and df["tokens"].dtype == pl.List(pl.UInt16)


def test_uint32_tokens_column(tmp_path):
    tokens = np.array([70000, 1, 65536, 2], dtype=np.uint32)
    w = write_shard(tmp_path / "u32.arrow", ["a", "b"], tokens, np.array([0, 2, 4]), tokenizer_sha256="x",
                    bos_id=70000)
    with ShardReader(w.path) as r:
        assert r.dtype == np.uint32
        np.testing.assert_array_equal(r.tokens, tokens)


def test_sha256_is_of_the_file_bytes(tmp_path, small_tokenizer):
    import hashlib

    written, _ = _write(tmp_path, small_tokenizer, ["abc"] * 10)
    assert hashlib.sha256(written.path.read_bytes()).hexdigest() == written.sha256
    assert written.size == written.path.stat().st_size


def test_failed_write_leaves_nothing(tmp_path, small_tokenizer):
    with pytest.raises(ValueError):
        write_shard(tmp_path / "bad.arrow", ["a"], np.zeros(3, np.uint16), np.array([0, 5]), tokenizer_sha256="x",
                    bos_id=0)
    assert list(tmp_path.iterdir()) == []


_KILLED_WRITER = """
import sys, time, numpy as np
from tokshard.pipeline import shards
import pyarrow as pa
real_new_stream = pa.ipc.new_stream
class Slow:
    def __init__(self, sink, schema):
        self.w = real_new_stream(sink, schema)
    def __enter__(self): return self
    def __exit__(self, *a): self.w.close()
    def write_batch(self, b):
        self.w.write_batch(b)
        print("WRITTEN", flush=True)
        time.sleep(60)  # killed here: data written to the temp file, not yet renamed
pa.ipc.new_stream = Slow
tokens = np.arange(5_000_000, dtype=np.uint16)
shards.write_shard(sys.argv[1], ["a", "b"], tokens, np.array([0, 2_500_000, 5_000_000]),
                   tokenizer_sha256="x", bos_id=0)
"""


def test_killed_writer_leaves_no_visible_shard(tmp_path):
    target = tmp_path / "train" / "shard-000000.arrow"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "WRITTEN"
        temps = list(target.parent.iterdir())
        assert len(temps) == 1 and atomic.TMP_MARKER in temps[0].name and temps[0].stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.1)
    assert not target.exists()
    assert atomic.remove_stale_temporaries(target.parent) == 1
    assert list(target.parent.iterdir()) == []


def test_not_a_shard_is_a_clear_error(tmp_path):
    p = tmp_path / "junk.arrow"
    p.write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match="junk.arrow"):
        ShardReader(p)
