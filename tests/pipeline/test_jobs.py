"""The Ray jobs on a real local Ray instance over real parquet: every document exactly once, exact ids."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import hf_reference, shard_bytes
from tokshard.pipeline import jobs, progress, sources
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.progress import RowsDone
from tokshard.pipeline.shards import ShardReader
from tokshard.pipeline.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def encoded(corpus_dir, small_tokenizer_dir, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("encoded") / "out"
    result = jobs.encode(str(corpus_dir), small_tokenizer_dir, out, val_fraction=0.1, slice_bytes=100_000,
                         show_progress=False)
    return result, out


def _source_docs(corpus_dir) -> dict[str, str]:
    docs = {}
    for f in sorted(corpus_dir.glob("*.parquet")):
        t = pq.read_table(f)
        docs.update(zip(t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True))
    return docs


def _shard_rows(out):
    manifest = Manifest.read(out)
    for rec in manifest.shards:
        with ShardReader(out / rec["path"]) as r:
            for i, doc_id in enumerate(r.ids):
                yield rec, doc_id, np.array(r.row(i))


def test_every_document_exactly_once_with_exact_ids(encoded, corpus_dir, small_tokenizer_dir):
    result, out = encoded
    assert result.complete and result.errors == []
    docs = _source_docs(corpus_dir)
    seen = Counter()
    hf = hf_reference(small_tokenizer_dir)
    tok = Tokenizer.load(out / "tokenizer")
    splits = set()
    for rec, doc_id, row in _shard_rows(out):
        seen[doc_id] += 1
        splits.add(rec["split"])
        text = docs[doc_id]
        assert row.tolist() == hf.encode(text).ids, f"{doc_id} in {rec['path']}"
        assert row[0] == tok.bos_id
        assert tok.decode(row[1:]) == text
    assert seen == Counter(docs.keys())
    assert splits == {"train", "val"}


def test_validation_split_is_chosen_by_document_id(encoded):
    result, out = encoded
    rows = [(rec["split"] == "val", doc_id) for rec, doc_id, _ in _shard_rows(out)]
    assert [val for val, _ in rows] == sources.validation_mask([doc_id for _, doc_id in rows], 0.1).tolist()
    totals = result.manifest.totals()
    assert 0.03 < totals["val"]["documents"] / totals["all"]["documents"] < 0.2


def test_manifest_records_every_shard(encoded, corpus_dir):
    _result, out = encoded
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["tokenizer"]["sha256"] == Tokenizer.load(out / "tokenizer").sha256
    slices = sources.plan_slices(sources.resolve_files(str(corpus_dir)), slice_bytes=100_000).slices
    assert len(slices) > 3  # several slices per file: one file spreads over several tasks
    assert {r["slice"] for r in manifest["shards"] if r["split"] == "train"} == {s.name for s in slices}
    for rec in manifest["shards"]:
        assert rec["source"].endswith(".parquet") and rec["rows"][0] < rec["rows"][1]
        assert rec["documents"] > 0 and rec["tokens"] > rec["documents"] and rec["sha256"]
        assert rec["worker"] and rec["tokens_per_s"] > 0
    t = manifest["totals"]
    assert t["all"]["documents"] == t["train"]["documents"] + t["val"]["documents"] == len(_source_docs(corpus_dir))
    text_bytes = sum(len(x.encode()) for x in _source_docs(corpus_dir).values())
    assert t["all"]["text_bytes"] == text_bytes
    assert Manifest.read(out).verify(out) == []


def test_output_identical_whatever_the_worker_count(encoded, corpus_dir, small_tokenizer_dir, tmp_path):
    _, out = encoded
    jobs.encode(str(corpus_dir), small_tokenizer_dir, tmp_path, workers=1, val_fraction=0.1, slice_bytes=100_000,
                show_progress=False)
    a, b = Manifest.read(out).shards, Manifest.read(tmp_path).shards
    assert [(r["path"], r["sha256"]) for r in a] == [(r["path"], r["sha256"]) for r in b]


def test_bad_file_is_reported_and_others_complete(corpus_dir, small_tokenizer_dir, tmp_path, ray_cluster):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(corpus_dir, src)
    t = pq.read_table(src / "part-01.parquet")
    texts = t.column("text").to_pylist()
    texts[120] = None
    pq.write_table(t.set_column(0, "text", __import__("pyarrow").array(texts)), src / "part-01.parquet",
                   row_group_size=50)
    result = jobs.encode(str(src), small_tokenizer_dir, tmp_path / "out", val_fraction=0.1, slice_bytes=100_000,
                         show_progress=False)
    assert not result.complete
    assert any("part-01.parquet" in e and "row 120" in e for e in result.errors), result.errors
    done_sources = {r["source"] for r in result.manifest.shards}
    assert str(src / "part-00.parquet") in done_sources and str(src / "part-02.parquet") in done_sources
    assert result.manifest.data["complete"] is False


def test_other_tokenizer_outdir_is_refused(encoded, tmp_path, ray_cluster):
    _, out = encoded
    other = jobs.train_tokenizer(None, tmp_path / "tok2", vocab_size=1024, sample_bytes=300_000)
    with pytest.raises(ValueError, match="another --out"):
        jobs.encode(None, other.tokenizer_dir, out, show_progress=False)


@pytest.mark.slow
def test_uint32_shards_for_large_vocabularies(tmp_path, ray_cluster):
    trained = jobs.train_tokenizer(None, tmp_path / "tok", vocab_size=66_000, sample_bytes=50_000_000,
                                   pattern="gpt2")
    assert trained.vocab_size == 66_000
    result = jobs.encode(None, trained.tokenizer_dir, tmp_path / "out", show_progress=False)
    assert result.manifest.tokenizer["dtype"] == "uint32"
    rec = result.manifest.shards[0]
    with ShardReader(tmp_path / "out" / rec["path"]) as r:
        assert r.dtype == np.uint32 and int(r.tokens.max()) > 65535


def test_vocabulary_the_sample_cannot_fill_is_a_clear_error(tmp_path, ray_cluster):
    from tests.conftest import write_parquet

    src = write_parquet(tmp_path / "tiny.parquet", ["hello world, hello tokens"] * 20)
    with pytest.raises(ValueError, match=r"only enough distinct pairs for a \d+-token vocabulary, not 4,096"):
        jobs.train_tokenizer(str(src), tmp_path / "tok", vocab_size=4096)
    assert not (tmp_path / "tok").exists()


def _encode(src, tok_dir, out, **kw):
    return jobs.encode(str(src), tok_dir, out, val_fraction=0.1, slice_bytes=100_000, show_progress=False, **kw)


def test_rerun_keeps_verified_slices_and_redoes_only_the_broken(encoded, corpus_dir, small_tokenizer_dir, tmp_path):
    import shutil

    _, ref = encoded
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    again = _encode(corpus_dir, small_tokenizer_dir, out)
    assert again.complete and again.slices_encoded == 0 and again.slices_kept > 3
    shards = sorted(out.glob("train/shard-*.arrow"))
    shards[0].unlink()  # lost
    with open(shards[1], "r+b") as f:  # bit rot: same size, other bytes
        f.seek(200)
        f.write(b"\xff\xff")
    (out / "manifest.json").unlink()
    fixed = _encode(corpus_dir, small_tokenizer_dir, out)
    assert fixed.complete and fixed.slices_encoded == 2 and fixed.slices_kept == again.slices_kept - 2
    assert shard_bytes(out) == shard_bytes(ref)
    assert Manifest.read(out).verify(out) == []


def test_rerun_with_other_settings_or_changed_files_is_refused(encoded, corpus_dir, small_tokenizer_dir, tmp_path):
    import shutil

    _, ref = encoded
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    with pytest.raises(ValueError, match=r"belongs to another run \(--val-fraction 0.1 -> 0.2\)"):
        jobs.encode(str(corpus_dir), small_tokenizer_dir, out, val_fraction=0.2, slice_bytes=100_000)
    src = tmp_path / "src"
    shutil.copytree(corpus_dir, src)
    with pytest.raises(ValueError, match=r"belongs to another run \(source files"):
        _encode(src, small_tokenizer_dir, out)
    # Same paths, other content: the footer fingerprint in each finished slice's record catches it.
    shutil.copytree(ref, tmp_path / "out2")
    run = json.loads((tmp_path / "out2" / "run.json").read_text())
    run["files"] = [str(src / p.rsplit("/", 1)[1]) for p in run["files"]]
    (tmp_path / "out2" / "run.json").write_text(json.dumps(run))
    pq.write_table(pq.read_table(src / "part-02.parquet").slice(0, 10), src / "part-02.parquet")
    with pytest.raises(ValueError, match=r"source file\(s\) changed .*part-02\.parquet"):
        _encode(src, small_tokenizer_dir, tmp_path / "out2")
    assert shard_bytes(tmp_path / "out2") == shard_bytes(ref)  # refused before touching anything


def test_a_fixed_bad_file_is_encoded_on_the_next_run(corpus_dir, small_tokenizer_dir, tmp_path, ray_cluster):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(corpus_dir, src)
    good = (src / "part-01.parquet").read_bytes()
    (src / "part-01.parquet").write_bytes(good[: len(good) // 2])  # truncated
    first = _encode(src, small_tokenizer_dir, tmp_path / "out")
    assert not first.complete and any("part-01.parquet" in e for e in first.errors), first.errors
    assert {r["source"] for r in first.manifest.shards} == {str(src / "part-00.parquet"), str(src / "part-02.parquet")}
    (src / "part-01.parquet").write_bytes(good)
    second = _encode(src, small_tokenizer_dir, tmp_path / "out")
    assert second.complete and second.slices_kept == first.slices_encoded and second.slices_encoded > 0
    ids = [doc_id for _, doc_id, _ in _shard_rows(tmp_path / "out")]
    assert Counter(ids) == Counter(_source_docs(corpus_dir).keys())


def test_limits_for_trial_runs(corpus_dir, small_tokenizer_dir, tmp_path, ray_cluster):
    result = _encode(corpus_dir, small_tokenizer_dir, tmp_path / "docs", limit_docs=300)
    assert result.complete and result.manifest.totals()["all"]["documents"] == 300
    result = _encode(corpus_dir, small_tokenizer_dir, tmp_path / "files", limit_files=1)
    assert {r["source"] for r in result.manifest.shards} == {str(corpus_dir / "part-00.parquet")}
    with pytest.raises(ValueError, match="--limit-docs must be at least 1"):
        _encode(corpus_dir, small_tokenizer_dir, tmp_path / "zero", limit_docs=0)


_PROGRESS_LINE = re.compile(r"encode: +[\d.]+% ([\d,]+) docs ([\d,]+) tokens")


def test_live_progress_counts_every_row_group(corpus_dir, small_tokenizer_dir, tmp_path, ray_cluster, monkeypatch,
                                              capsys):
    """Tasks stream a count per row group to the driver; its log lines (every report, with LOG_EVERY_S = 0)
    rise once per row group and end at the manifest's totals, on a fresh run and on one that keeps every slice."""
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    slices = sources.plan_slices(sources.resolve_files(str(corpus_dir)), slice_bytes=1 << 20).slices
    assert max(s.rg_end - s.rg_start for s in slices) > 2
    for run, steps in (("fresh", sum(s.rg_end - s.rg_start for s in slices)), ("kept", len(slices))):
        result = jobs.encode(str(corpus_dir), small_tokenizer_dir, tmp_path / "out", val_fraction=0.1,
                             slice_bytes=1 << 20)
        assert result.slices_kept == (len(slices) if run == "kept" else 0)
        counts = [tuple(int(g.replace(",", "")) for g in m.groups())
                  for m in map(_PROGRESS_LINE.match, capsys.readouterr().err.splitlines()) if m]
        totals = result.manifest.totals()["all"]
        assert counts == sorted(counts), run
        assert counts[-1] == (totals["documents"], totals["tokens"]), run
        assert len({c for c in counts if c[0]}) == steps, run


def test_encode_slice_reports_one_item_per_row_group_on_both_paths(corpus_dir, small_tokenizer_dir, tmp_path):
    """Ray drops the items of a retried generator by position, so the path that keeps a finished slice must
    yield as many items as the one that encodes it, or a retry's result would be lost."""
    slice_ = next(s for s in sources.plan_slices(sources.resolve_files(str(corpus_dir)), slice_bytes=1 << 20).slices
                  if s.rg_end - s.rg_start > 2)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    args = (slice_, str(small_tokenizer_dir), Tokenizer.load(small_tokenizer_dir).sha256, str(tmp_path), 0.1, "text",
            "id")
    encoded, kept = list(jobs.encode_slice(*args)), list(jobs.encode_slice(*args))
    assert len(encoded) == len(kept) == slice_.rg_end - slice_.rg_start + 1
    assert all(isinstance(x, RowsDone) for x in encoded[:-1] + kept[:-1])
    assert encoded[-1] == jobs.SliceDone(encoded[-1].records, False) and kept[-1] == (encoded[-1].records, True)
    assert [sum(col) for col in zip(*encoded[:-1], strict=True)] == [sum(col) for col in zip(*kept[:-1], strict=True)]


def _manifest_without_clocks(out) -> dict:
    """The manifest minus what differs between any two runs (creation time, per-shard seconds, rate, worker)."""
    data = json.loads((out / "manifest.json").read_text())
    data.pop("created")
    for rec in data["shards"]:
        for key in ("seconds", "tokens_per_s", "worker", "stored"):
            rec.pop(key)
    return data


def test_in_process_run_writes_what_ray_writes(encoded, corpus_dir, small_tokenizer_dir, tmp_path):
    """The path without Ray (small local runs) runs the same tasks: byte-identical shards, slice records and
    tokenizer copy, and the same manifest but for clocks and worker names; it resumes a Ray run's OUT and vice
    versa, keeping what verifies."""
    _, ray_out = encoded
    local = _encode(corpus_dir, small_tokenizer_dir, tmp_path / "local", in_process=True)
    assert local.executor == "in-process" and local.complete
    assert shard_bytes(tmp_path / "local") == shard_bytes(ray_out)
    assert _manifest_without_clocks(tmp_path / "local") == _manifest_without_clocks(ray_out)
    assert Manifest.read(tmp_path / "local").tokenizer["engine"] == Tokenizer.load(small_tokenizer_dir).engine
    for name in ("tokenizer/tokenizer.json", "tokenizer/tokshard.json", "tokenizer/token_bytes.npy", "run.json"):
        assert (ray_out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    for record in (ray_out / "slices").iterdir():
        a, b = (json.loads(p.read_text()) for p in (record, tmp_path / "local" / "slices" / record.name))
        for rec in a["shards"] + b["shards"]:
            for key in ("seconds", "tokens_per_s", "worker", "stored"):
                rec.pop(key)
        assert a == b, record.name
    # Resume across paths: a Ray run keeps the in-process run's slices, and the other way round.
    next(iter(sorted((tmp_path / "local").glob("train/*.arrow")))).unlink()
    again = _encode(corpus_dir, small_tokenizer_dir, tmp_path / "local", in_process=False)
    assert again.executor == "ray" and again.slices_encoded == 1 and again.slices_kept > 3
    assert shard_bytes(tmp_path / "local") == shard_bytes(ray_out)
    import shutil

    shutil.copytree(ray_out, tmp_path / "from-ray")
    next(iter(sorted((tmp_path / "from-ray").glob("val/*.arrow")))).unlink()
    resumed = _encode(corpus_dir, small_tokenizer_dir, tmp_path / "from-ray", in_process=True)
    assert resumed.executor == "in-process" and resumed.slices_encoded == 1
    assert shard_bytes(tmp_path / "from-ray") == shard_bytes(ray_out)


def test_in_process_run_reports_a_bad_file_and_completes_the_others(corpus_dir, small_tokenizer_dir, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(corpus_dir, src)
    good = (src / "part-01.parquet").read_bytes()
    (src / "part-01.parquet").write_bytes(good[: len(good) // 2])
    result = _encode(src, small_tokenizer_dir, tmp_path / "out", in_process=True)
    assert not result.complete and any("part-01.parquet" in e for e in result.errors), result.errors
    assert {r["source"] for r in result.manifest.shards} == {str(src / "part-00.parquet"), str(src / "part-02.parquet")}


def test_where_a_run_goes(monkeypatch):
    """In this process when there is no cluster to use and the text is small; Ray otherwise, or as asked."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert jobs.runs_in_process(None, None, 10 << 20)
    assert not jobs.runs_in_process(None, None, jobs.LOCAL_MAX_BYTES + 1)
    assert not jobs.runs_in_process("auto", None, 10 << 20)
    assert jobs.runs_in_process(None, True, jobs.LOCAL_MAX_BYTES * 4)
    assert not jobs.runs_in_process(None, False, 1)
    with pytest.raises(ValueError, match="cannot be combined with --address"):
        jobs.runs_in_process("auto", True, 1)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a `ray job submit` entrypoint joins its cluster
    assert not jobs.runs_in_process(None, None, 1)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a notebook's or a test's Ray: use it
    assert not jobs.runs_in_process(None, None, 1)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with jobs.ray_session("127.0.0.1:6379"):  # `tokshard run --address`: the jobs inside join that cluster
        assert not jobs.runs_in_process(None, None, 1)
    assert jobs.runs_in_process(None, None, 1)
