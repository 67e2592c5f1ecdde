"""Export to modded-nanogpt / llm.c token files and Megatron-LM's indexed dataset, from a real encode run and from a
mix plan, read back with readers written here from each format's description (not tokshard's), and every refusal
on a real bad OUT."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_tokshard, sample_texts, write_parquet
from tokshard.pipeline import jobs, mix
from tokshard.pipeline.export import Piece, export, export_nanogpt, plan_files
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.shards import ShardReader
from tokshard.pipeline.tokenizer import Tokenizer

FILE_TOKENS = 8_000  # a few documents of the sample are longer: they must be cut


def read_bin(path: Path) -> np.ndarray:
    """llm.c's reader, re-stated: 256 little-endian int32 (magic, version, count), then `count` uint16."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520, f"{path.name}: magic {header[0]}"
    assert header[1] == 1, f"{path.name}: version {header[1]}"
    assert not header[3:].any(), f"{path.name}: reserved header ints must be zero"
    tokens = np.fromfile(path, dtype="<u2", offset=256 * 4)
    assert len(tokens) == header[2], f"{path.name}: header says {header[2]} tokens, file holds {len(tokens)}"
    assert path.stat().st_size == 1024 + 2 * int(header[2])
    return tokens


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, small_tokenizer_dir, ray_cluster) -> Path:
    """The bundled sample encoded into several shards per split (1 MB slices, 10% validation)."""
    out = tmp_path_factory.mktemp("export") / "out"
    result = jobs.encode(None, small_tokenizer_dir, out, val_fraction=0.1, slice_bytes=1_000_000,
                         show_progress=False)
    assert result.complete
    return out


@pytest.fixture(scope="module")
def exported(out_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("nanogpt") / "bins"
    return export_nanogpt(out_dir, dest, tokens_per_file=FILE_TOKENS), dest


def _split_stream(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's tokens in manifest order and its document lengths, read through tokshard's own reader."""
    tokens, lengths = [], []
    for rec in Manifest.read(out).shards:
        if rec["split"] == split:
            with ShardReader(out / rec["path"]) as r:
                tokens.append(np.array(r.tokens))
                lengths.append(np.diff(r.offsets))
    return np.concatenate(tokens), np.concatenate(lengths)


def test_files_hold_the_shards_tokens_in_manifest_order(out_dir, exported):
    summary, dest = exported
    manifest = Manifest.read(out_dir)
    assert sum(r["split"] == "val" for r in manifest.shards) > 1 and sum(r["split"] == "train" for r in
                                                                           manifest.shards) > 1
    names = sorted((p.name for p in dest.glob("*.bin")), key=lambda n: n.rsplit("_", 1)[1])  # by file number
    assert names == [f["name"] for f in summary["files"]]
    n_val = summary["splits"]["val"]["files"]
    assert n_val >= 2 and summary["splits"]["train"]["files"] >= 10
    # one counter across splits, validation first: val_000000, val_000001, ..., then train continues
    assert names == ([f"fineweb_val_{i:06d}.bin" for i in range(n_val)]
                     + [f"fineweb_train_{i:06d}.bin" for i in range(n_val, len(names))])
    bos = manifest.tokenizer["bos_id"]
    for split in ("val", "train"):
        files = [dest / f["name"] for f in summary["files"] if f["split"] == split]
        parts = [read_bin(p) for p in files]
        expected, _ = _split_stream(out_dir, split)
        assert np.array_equal(np.concatenate(parts), expected)
        assert summary["splits"][split]["tokens"] == len(expected) == manifest.totals()[split]["tokens"]
        assert [len(p) for p in parts] == [f["tokens"] for f in summary["files"] if f["split"] == split]
        assert all(0 < len(p) <= FILE_TOKENS for p in parts)
        assert int((np.concatenate(parts) == bos).sum()) == manifest.totals()[split]["documents"]


def test_files_end_between_documents_and_are_packed_greedily(out_dir, exported):
    summary, _ = exported
    seen = set()
    for split in ("val", "train"):
        _, lengths = _split_stream(out_dir, split)
        starts = np.concatenate(([0], np.cumsum(lengths)))
        sizes = [f["tokens"] for f in summary["files"] if f["split"] == split]
        cut = 0
        for size in sizes[:-1]:
            cut += size
            doc = int(np.searchsorted(starts, cut, side="right")) - 1  # the document holding token `cut`
            if starts[doc] == cut:  # a file ends between documents: only because the next one did not fit
                assert size + lengths[doc] > FILE_TOKENS
                seen.add("between")
            else:  # a file ends inside a document only when that document is longer than a whole file
                assert lengths[doc] > FILE_TOKENS
                seen.add("inside")
    assert seen == {"between", "inside"}


def test_summary_and_export_json(out_dir, exported):
    summary, dest = exported
    assert json.loads((dest / "export.json").read_text()) == summary
    tok = Tokenizer.load(out_dir / "tokenizer")
    assert summary["tokenizer"] == {"sha256": tok.sha256, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id}
    assert summary["dest"] == str(dest) and summary["tokens_per_file"] == FILE_TOKENS
    assert not [p for p in dest.iterdir() if ".tmp-" in p.name]


def test_plan_cuts_only_documents_longer_than_a_file():
    # shard a: documents of 3, 4, 2 tokens; shard b: 12 (longer than a file of 5), 1, 5
    a = np.array([0, 3, 7, 9])
    b = np.array([0, 12, 13, 18])
    files = list(plan_files([("a", a), ("b", b)], 5))
    assert files == [
        [Piece("a", 0, 3)],  # 3 + 4 > 5
        [Piece("a", 3, 7)],  # 4 + 2 > 5
        [Piece("a", 7, 9)],  # then the long document starts a fresh file ...
        [Piece("b", 0, 5)],
        [Piece("b", 5, 10)],
        [Piece("b", 10, 12), Piece("b", 12, 13)],  # ... its last piece; the next document joins it
        [Piece("b", 13, 18)],  # exactly a file
    ]
    assert list(plan_files([("a", np.array([0, 5, 10]))], 5)) == [[Piece("a", 0, 5)], [Piece("a", 5, 10)]]
    assert list(plan_files([("a", np.array([0, 1, 2])), ("b", np.array([0, 2]))], 10)) == [
        [Piece("a", 0, 2), Piece("b", 0, 2)]]  # a file spans shards
    assert list(plan_files([], 10)) == []


def test_uint32_vocabulary_is_refused(tmp_path, ray_cluster):
    # 256 bytes + every byte pair: a valid BPE vocabulary of 65,792 ranks, so ids need uint32.
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({bytes([x, y]): 256 + 256 * x + y for x in range(256) for y in range(256)})
    Tokenizer.from_ranks(ranks, r"""\s+|\S+""").save(tmp_path / "tok")
    result = jobs.encode(None, tmp_path / "tok", tmp_path / "out", limit_docs=20, show_progress=False)
    assert result.manifest.tokenizer["dtype"] == "uint32"
    with pytest.raises(ValueError, match=r"uint32 token ids \(vocabulary of 65,800\).*uint16 ids only"):
        export_nanogpt(tmp_path / "out", tmp_path / "bins")
    assert not (tmp_path / "bins").exists()


def test_incomplete_run_is_refused(tmp_path, small_tokenizer_dir, ray_cluster):
    texts = sample_texts(40)
    texts[7] = None
    write_parquet(tmp_path / "bad.parquet", texts)
    result = jobs.encode(str(tmp_path / "bad.parquet"), small_tokenizer_dir, tmp_path / "out", show_progress=False)
    assert not result.complete
    with pytest.raises(ValueError, match=r"manifest.json describes an incomplete run \(1 error.*bad.parquet.*row 7"):
        export_nanogpt(tmp_path / "out", tmp_path / "bins")
    assert not (tmp_path / "bins").exists()


def test_corrupt_or_missing_shards_are_refused_naming_the_file(out_dir, tmp_path):
    bad = tmp_path / "out"
    shutil.copytree(out_dir, bad)
    rec = Manifest.read(bad).shards[-1]
    data = bytearray((bad / rec["path"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / rec["path"]).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"fails verification, nothing exported: {rec['path']}: sha256 differs"):
        export_nanogpt(bad, tmp_path / "bins")
    (bad / rec["path"]).unlink()
    with pytest.raises(ValueError, match=rf"{rec['path']}: missing"):
        export_nanogpt(bad, tmp_path / "bins")
    assert not (tmp_path / "bins").exists()
    with pytest.raises(FileNotFoundError, match="not the output of `tokshard encode`"):
        export_nanogpt(tmp_path / "nowhere", tmp_path / "bins")


def test_bad_destination_or_file_size_is_refused(out_dir, exported, tmp_path):
    _, dest = exported
    with pytest.raises(ValueError, match=r"already holds \d+ exported file\(s\).*fineweb_train_"):
        export_nanogpt(out_dir, dest)
    with pytest.raises(ValueError, match="--tokens-per-file must be between 1 and 2,147,483,647"):
        export_nanogpt(out_dir, tmp_path / "x", tokens_per_file=2**31)
    with pytest.raises(ValueError, match="--tokens-per-file"):
        export_nanogpt(out_dir, tmp_path / "x", tokens_per_file=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        export_nanogpt(out_dir, tmp_path / "file")


def read_megatron(prefix: Path) -> list[np.ndarray]:
    """Megatron-LM's indexed dataset, read here from the layout its definition gives (not tokshard's writer): the
    .idx holds b"MMIDIDX\\x00\\x00", version u64, dtype code u8, sequence count u64, document-index count u64, then
    int32 sizes, int64 byte pointers into the .bin, int64 document index; all little-endian."""
    idx = prefix.with_suffix(".idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00", idx[:9]
    version, code = struct.unpack_from("<QB", idx, 9)
    assert version == 1
    dtype = {8: np.dtype("<u2"), 4: np.dtype("<i4")}[code]
    n_seq, n_doc = struct.unpack_from("<QQ", idx, 18)
    pos = 34
    sizes = np.frombuffer(idx, "<i4", n_seq, pos)
    pointers = np.frombuffer(idx, "<i8", n_seq, pos + 4 * n_seq)
    doc_index = np.frombuffer(idx, "<i8", n_doc, pos + 12 * n_seq)
    assert len(idx) == pos + 12 * n_seq + 8 * n_doc, "nothing after the document index"
    assert doc_index[0] == 0 and doc_index[-1] == n_seq and (np.diff(doc_index) >= 0).all()
    data = prefix.with_suffix(".bin").read_bytes()
    assert len(data) == int(sizes.sum()) * dtype.itemsize
    return [np.frombuffer(data, dtype, int(n), int(p)) for n, p in zip(sizes, pointers, strict=True)]


@pytest.fixture(scope="module")
def plan_dir(out_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plan") / "plan"
    data, packed = mix.build_plan([mix.SourceSpec("sample", str(out_dir), 1)], 200_000, 512, seed=3)
    mix.write_plan(d, data, packed)
    return d


def _plan_documents(plan_dir: Path, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """The segments of the plan's `rows` (default: all, in plan order), row after row, read from the shards."""
    plan = mix.read_plan(plan_dir)
    src = plan.data["sources"][0]
    rows = np.arange(plan.rows) if rows is None else rows
    readers = {}
    docs = []
    try:
        for row in rows.tolist():
            for _s, shard, start, length in plan.row_segments(row).tolist():
                if shard not in readers:
                    readers[shard] = ShardReader(Path(src["run"]) / src["shards"][shard]["path"])
                docs.append(np.array(readers[shard].tokens[start : start + length]))
    finally:
        for r in readers.values():
            r.close()
    return docs


def test_megatron_from_a_run_holds_every_document_in_manifest_order(out_dir, tmp_path):
    summary = export(out_dir, tmp_path / "meg", "megatron")
    for split in ("val", "train"):
        seqs = read_megatron(tmp_path / "meg" / split)
        tokens, lengths = _split_stream(out_dir, split)
        assert [len(s) for s in seqs] == lengths.tolist()
        assert np.array_equal(np.concatenate(seqs), tokens)
        assert summary["splits"][split] == {"files": 2, "tokens": len(tokens), "documents": len(lengths)}
    assert summary["data_prefix"]["train"] == str(tmp_path / "meg" / "train")
    with pytest.raises(ValueError, match=r"already holds 2 exported file\(s\)"):
        export(out_dir, tmp_path / "meg", "megatron")


@pytest.mark.slow
def test_a_plan_exports_its_rows_in_the_loaders_order_to_megatron_and_nanogpt(out_dir, plan_dir, tmp_path):
    plan = mix.read_plan(plan_dir)
    # the loader's default order (plan_dir's rows are fewer than a block: one permutation of them all)
    read_order = mix.RowOrder(plan.rows, 3, mix.SHUFFLE_BLOCK).plan_rows(0, plan.rows)
    assert read_order.tolist() != list(range(plan.rows)), "the fixture must hold enough rows to shuffle"
    docs = _plan_documents(plan_dir, read_order)
    run_tokshard("export", "--format", "megatron", str(plan_dir), str(tmp_path / "meg"))
    assert [s.tolist() for s in read_megatron(tmp_path / "meg" / "train")] == [d.tolist() for d in docs]
    assert json.loads((tmp_path / "meg" / "export.json").read_text())["shuffle_block"] == mix.SHUFFLE_BLOCK
    val_tokens, _ = _split_stream(out_dir, "val")
    assert np.array_equal(np.concatenate(read_megatron(tmp_path / "meg" / "val")), val_tokens)
    summary = export(plan_dir, tmp_path / "bins", "nanogpt", tokens_per_file=FILE_TOKENS)
    train = [read_bin(tmp_path / "bins" / f["name"]) for f in summary["files"] if f["split"] == "train"]
    assert np.array_equal(np.concatenate(train), np.concatenate(docs))
    bos = Manifest.read(out_dir).tokenizer["bos_id"]
    assert all(t[0] == bos for t in train), "a file starts at a document"
    # the order is the segments' only change: the same documents, and val is untouched
    val = [read_bin(tmp_path / "bins" / f["name"]) for f in summary["files"] if f["split"] == "val"]
    assert np.array_equal(np.concatenate(val), val_tokens)


@pytest.mark.slow
def test_shuffle_block_0_exports_the_plans_order_and_smaller_blocks_stay_in_their_block(plan_dir, tmp_path):
    plan = mix.read_plan(plan_dir)
    run_tokshard("export", "--format", "megatron", "--shuffle-block", "0", str(plan_dir), str(tmp_path / "plain"))
    in_plan_order = [d.tolist() for d in _plan_documents(plan_dir)]
    assert [s.tolist() for s in read_megatron(tmp_path / "plain" / "train")] == in_plan_order
    assert json.loads((tmp_path / "plain" / "export.json").read_text())["shuffle_block"] == 0
    block = 37  # not a divisor of the plan's rows: the last block is shorter
    assert plan.rows % block
    summary = export_nanogpt(plan_dir, tmp_path / "bins", tokens_per_file=FILE_TOKENS, shuffle_block=block)
    read_order = mix.RowOrder(plan.rows, 3, block).plan_rows(0, plan.rows)
    assert (read_order // block == np.arange(plan.rows) // block).all() and summary["shuffle_block"] == block
    train = [read_bin(tmp_path / "bins" / f["name"]) for f in summary["files"] if f["split"] == "train"]
    assert np.array_equal(np.concatenate(train), np.concatenate(_plan_documents(plan_dir, read_order)))


def test_shuffle_block_is_refused_below_0_or_for_a_run(out_dir, plan_dir, tmp_path):
    proc = run_tokshard("export", "--format", "megatron", "--shuffle-block", "-1", str(plan_dir), str(tmp_path / "a"),
                        check=False)
    assert proc.returncode == 2 and "--shuffle-block must be 0" in proc.stderr
    with pytest.raises(ValueError, match=r"is a run, exported in manifest order.*tokshard mix"):
        export(out_dir, tmp_path / "b", "megatron", shuffle_block=100)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_plan_over_a_changed_run_is_not_exported(out_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(out_dir, run)
    data, packed = mix.build_plan([mix.SourceSpec("s", str(run), 1)], 20_000, 512, seed=0)
    mix.write_plan(tmp_path / "plan", data, packed)
    manifest = json.loads((run / "manifest.json").read_text())
    victim = next(r for r in manifest["shards"] if r["split"] == "train")
    victim["sha256"] = "e" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    proc = run_tokshard("export", "--format", "megatron", str(tmp_path / "plan"), str(tmp_path / "meg"), check=False)
    assert proc.returncode == 2 and "changed since the plan was made" in proc.stderr and victim["path"] in proc.stderr
    assert not (tmp_path / "meg").exists()
