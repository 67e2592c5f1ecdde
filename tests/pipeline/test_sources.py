"""Resolving SRC, planning row-group slices, streaming documents, and the split/sample hash."""

from __future__ import annotations

import itertools
import re
import threading
import time

import fsspec
import fsspec.implementations.local
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_parquet
from tokshard.pipeline import sources


def test_bundled_sample_is_real_fineweb_shaped_text():
    pf = pq.ParquetFile(sources.bundled_sample())
    names = pf.schema_arrow.names
    for col in ("text", "id", "dump", "url", "file_path", "language", "language_score", "token_count", "score",
                "int_score"):
        assert col in names
    table = pf.read(columns=["text", "id"])
    texts = table.column("text").to_pylist()
    assert sum(len(t.encode()) for t in texts) > 2_000_000
    assert len(set(table.column("id").to_pylist())) == table.num_rows


def test_resolve_file_dir_glob_and_default(corpus_dir):
    files = sorted(str(p) for p in corpus_dir.glob("*.parquet"))
    assert sources.resolve_files(str(corpus_dir)) == files
    assert sources.resolve_files(str(corpus_dir / "part-0[01].parquet")) == files[:2]
    assert sources.resolve_files(files[1]) == files[1:2]
    assert sources.resolve_files(None) == [sources.bundled_sample()]
    assert sources.resolve_files(f"file://{corpus_dir}/*.parquet") == [f"file://{f}" for f in files]


@pytest.mark.parametrize("bad", ["/nonexistent/x.parquet", "/nonexistent/*.parquet"])
def test_missing_source_is_a_clear_error(bad):
    with pytest.raises(sources.SourceError, match="does not exist|no .parquet"):
        sources.resolve_files(bad)


def test_slices_cover_every_row_group_once(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", [f"document {i} " * 50 for i in range(1000)], row_group_size=100)
    slices = sources.plan_slices([str(path)], slice_bytes=60_000).slices
    assert len(slices) > 2
    assert [s.name for s in slices] == [f"00000-{i:04d}" for i in range(len(slices))]
    assert slices[0].rg_start == 0 and slices[-1].rg_end == 10 and slices[-1].row_end == 1000
    for a, b in itertools.pairwise(slices):
        assert a.rg_end == b.rg_start and a.row_end == b.row_start
    rows = [(b.first_row, len(b.texts)) for s in slices for b in sources.iter_batches(s)]
    assert sum(n for _, n in rows) == 1000 and rows[0][0] == 0


def test_missing_text_column_names_file_and_columns(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"content": ["a"]}), path)
    good = write_parquet(tmp_path / "y.parquet", ["fine"])
    plan = sources.plan_slices([str(path), str(good)])
    assert [s.path for s in plan.slices] == [str(good)] and plan.slices[0].file_index == 1  # the others still run
    (problem,) = plan.problems
    assert re.search(r"x\.parquet: no column 'text' \(columns: content\)", problem)


def test_non_string_text_column_is_a_problem_of_its_file(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    assert "ints.parquet: column 'text' is int64, not a string column" in sources.plan_slices([str(path)]).problems[0]


def test_invalid_utf8_names_file_and_row(tmp_path):
    data = b"good" + b"also good" + b"bad \xff\xfe here"
    offsets = np.array([0, 4, 13, len(data)], dtype=np.int32)
    column = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"text": column}), path)
    (s,) = sources.plan_slices([str(path)]).slices
    with pytest.raises(sources.SourceError, match=r"raw\.parquet: row 2: 'text' is not valid UTF-8 \(byte 0xff"):
        list(sources.iter_batches(s))


def test_limit_docs_stops_inside_a_row_group(tmp_path):
    a = write_parquet(tmp_path / "a.parquet", [f"a{i}" for i in range(100)], row_group_size=30)
    b = write_parquet(tmp_path / "b.parquet", [f"b{i}" for i in range(100)], row_group_size=30)
    plan = sources.plan_slices([str(a), str(b)], slice_bytes=1, limit_docs=145)
    texts = [t for s in plan.slices for batch in sources.iter_batches(s) for t in batch.texts]
    assert texts == [f"a{i}" for i in range(100)] + [f"b{i}" for i in range(45)]
    assert plan.slices[-1].name == "00001-0001" and plan.slices[-1].row_end == 45


def test_ids_fall_back_to_file_and_row(tmp_path):
    path = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), path)
    (s,) = sources.plan_slices([str(path)]).slices
    assert next(sources.iter_batches(s)).ids == ["noid.parquet#0", "noid.parquet#1", "noid.parquet#2"]


def test_null_text_names_file_and_row(tmp_path):
    path = write_parquet(tmp_path / "n.parquet", ["a", "b", None, "d"], row_group_size=2)  # type: ignore[list-item]
    (s,) = sources.plan_slices([str(path)]).slices
    with pytest.raises(sources.SourceError, match=r"n\.parquet: row 2 has a null 'text'"):
        list(sources.iter_batches(s))


def test_corrupt_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    (problem,) = sources.plan_slices([str(path)]).problems
    assert "bad.parquet: not a readable parquet file" in problem


def test_split_hash_is_stable_and_roughly_uniform():
    ids = [f"<urn:uuid:{i}>" for i in range(20000)]
    mask = sources.validation_mask(ids, 0.05)
    assert 0.04 < mask.mean() < 0.06
    assert sources.id_fraction("abc") == sources.id_fraction("abc") != sources.id_fraction("abd")
    assert mask.tolist() == [sources.id_fraction(i, "tokshard-val:") < 0.05 for i in ids]
    assert sources.validation_mask(ids[:3], 0.05).tolist() == mask[:3].tolist()  # a document's split is its own
    assert not sources.validation_mask(ids[:10], 0.0).any()


def test_fsspec_urls_resolve_plan_and_stream(tmp_path):
    """Remote sources (hf://, s3://, gs://) go through fsspec; its in-memory filesystem exercises the same path."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for name, texts in (("a/part-0.parquet", ["one", "two"]), ("a/sub/part-1.parquet", ["three"])):
        local = write_parquet(tmp_path / name.replace("/", "_"), texts)
        fs.pipe(f"/corpus/{name}", local.read_bytes())
    fs.pipe("/corpus/a/README.md", b"not parquet")
    files = sources.resolve_files("memory://corpus/a")
    assert files == ["memory:///corpus/a/part-0.parquet", "memory:///corpus/a/sub/part-1.parquet"]
    assert sources.resolve_files("memory://corpus/a/*.parquet") == files[:1]
    plan = sources.plan_slices(files)
    assert [t for s in plan.slices for b in sources.iter_batches(s) for t in b.texts] == ["one", "two", "three"]
    with pytest.raises(sources.SourceError, match="holds no .parquet files"):
        sources.resolve_files("memory://corpus/a/*.json")
    with pytest.raises(sources.SourceError, match="does not exist or cannot be reached"):
        sources.resolve_files("memory://nowhere")


def test_hf_source_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(sources.SourceError, match=r"hf://datasets/HuggingFaceFW/fineweb-edu/sample/10BT"):
        sources.resolve_files("hf://datasets/HuggingFaceFW/fineweb-edu/sample/10BT/*.parquet")


class _CountingFileSystem(fsspec.implementations.local.LocalFileSystem):
    """The local disk with a short wait on every open, counting how many opens are in flight at once: how a test
    sees that footers are read concurrently without timing anything."""

    protocol = "countingfile"
    root_marker = "/"
    lock = threading.Lock()
    in_flight = peak = 0

    def _open(self, path, *args, **kwargs):
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
        try:
            time.sleep(0.05)
            return super()._open(path, *args, **kwargs)
        finally:
            with cls.lock:
                cls.in_flight -= 1


def test_planning_reads_footers_concurrently_and_plans_as_serial_does(tmp_path):
    fsspec.register_implementation("countingfile", _CountingFileSystem, clobber=True)
    for i in range(40):
        write_parquet(tmp_path / f"f{i:03d}.parquet", [f"document {i}-{j} " * 50 for j in range(30)], row_group_size=7)
    (tmp_path / "f017.parquet").write_bytes(b"not parquet")  # a problem of its own file only, in file order
    files = sources.resolve_files(f"countingfile://{tmp_path}")
    serial = sources.plan_slices(files, slice_bytes=3000, threads=1)
    assert _CountingFileSystem.peak == 1
    parallel = sources.plan_slices(files, slice_bytes=3000, threads=8)
    assert 1 < _CountingFileSystem.peak <= 8
    assert parallel == serial and len(serial.problems) == 1 and "f017.parquet" in serial.problems[0]
    limited = sources.plan_slices(files, slice_bytes=3000, limit_docs=100, threads=8)
    assert limited == sources.plan_slices(files, slice_bytes=3000, limit_docs=100, threads=1)
    assert sum(s.row_end - s.row_start for s in limited.slices) == 100


def test_source_on_s3(s3_bucket, corpus_dir):
    """Parquet files on the S3 server resolve, plan and stream like local ones."""
    fs = fsspec.filesystem("s3")
    for p in sorted(corpus_dir.glob("*.parquet")):
        fs.put_file(str(p), f"{s3_bucket.removeprefix('s3://')}/corpus/{p.name}")
    files = sources.resolve_files(f"{s3_bucket}/corpus")
    assert [f.rsplit("/", 1)[1] for f in files] == sorted(p.name for p in corpus_dir.glob("*.parquet"))
    remote = sources.plan_slices(files, slice_bytes=50_000)
    local = sources.plan_slices(sources.resolve_files(str(corpus_dir)), slice_bytes=50_000)
    assert [(s.rg_start, s.rg_end, s.file_fingerprint) for s in remote.slices] == \
        [(s.rg_start, s.rg_end, s.file_fingerprint) for s in local.slices]
    assert [b.ids for b in sources.iter_batches(remote.slices[0])] == \
        [b.ids for b in sources.iter_batches(local.slices[0])]
