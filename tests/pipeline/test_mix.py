"""Mixture plans over real encode runs: token shares, seeded shuffle, BOS-aligned best-fit rows, repetition, waste
accounting, and every refusal (bad weights, sizes, tokenizers, changed runs) -- through the API and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_tokshard, sample_texts, write_parquet
from tokshard.pipeline import jobs, mix
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.shards import ShardReader

SEQ = 256


@pytest.fixture(scope="session")
def runs(tmp_path_factory, small_tokenizer_dir, ray_cluster) -> dict[str, Path]:
    """Two real runs with one tokenizer: "web" (the sample's documents) and "books" (the same text joined five
    documents at a time: fewer, longer documents), plus "tiny" (20 documents) for repetition."""
    d = tmp_path_factory.mktemp("mix")
    texts = sample_texts(900)
    books = ["\n\n".join(texts[i : i + 5]) for i in range(600, 900, 5)]
    out = {}
    for name, docs in (("web", texts[:600]), ("books", books), ("tiny", texts[:20])):
        src = write_parquet(d / f"{name}.parquet", docs)
        out[name] = d / name
        result = jobs.encode(str(src), small_tokenizer_dir, out[name], val_fraction=0.05, slice_bytes=400_000,
                             show_progress=False)
        assert result.complete
    return out


def _docs(run: Path) -> tuple[dict[str, ShardReader], dict[str, set[int]]]:
    manifest = Manifest.read(run)
    readers = {r["path"]: ShardReader(run / r["path"]) for r in manifest.shards if r["split"] == "train"}
    return readers, {p: set(r.offsets[:-1].tolist()) for p, r in readers.items()}


def test_token_shares_follow_the_weights_not_document_counts(runs):
    specs = [mix.parse_source(f"web={runs['web']}:3"), mix.parse_source(f"books={runs['books']}:1")]
    # rows long enough that few documents are cropped, so their token counts differ as the text does
    plan, packed = mix.build_plan(specs, 400_000, 8192, seed=1)
    web, books = plan["sources"]
    assert web["share_target"] == 0.75 and books["share_target"] == 0.25
    longest = max(int(x) for x in packed.segments["length"])
    assert abs(web["tokens"] - 0.75 * (web["tokens"] + books["tokens"])) <= longest, "within one document"
    assert web["tokens"] + books["tokens"] == int(packed.segments["length"].sum())
    per_source = np.bincount(packed.segments["source"], weights=packed.segments["length"])
    assert per_source.tolist() == [web["tokens"], books["tokens"]]
    # by documents the mixture is far from 3:1, which is why shares are counted in tokens
    assert web["documents_used"] / books["documents_used"] > 8
    assert plan["rows"] == -(-400_000 // 8192) and plan["tokens"] == plan["rows"] * 8192


def test_every_row_starts_at_a_document_and_holds_document_prefixes(runs):
    specs = [mix.SourceSpec("web", str(runs["web"]), 1), mix.SourceSpec("books", str(runs["books"]), 1)]
    plan, packed = mix.build_plan(specs, 60_000, SEQ, seed=0)
    row_len = SEQ + 1
    opened = [_docs(runs["web"]), _docs(runs["books"])]
    for i in range(len(packed.row_first) - 1):
        segs = packed.segments[packed.row_first[i] : packed.row_first[i + 1]]
        assert 0 < int(segs["length"].sum()) <= row_len
        for src, shard, start, length in segs.tolist():
            readers, starts = opened[src]
            path = plan["sources"][src]["shards"][shard]["path"]
            assert start in starts[path], "every segment is the start of a document"
            reader = readers[path]
            doc = int(np.searchsorted(reader.offsets, start))
            assert length <= reader.offsets[doc + 1] - start
            assert reader.tokens[start] == plan["tokenizer"]["bos_id"]
    w = plan["waste"]["best_fit"]
    assert w["padded"] == row_len * plan["rows"] - int(packed.segments["length"].sum())
    for readers, _ in opened:
        for r in readers.values():
            r.close()


def test_order_is_a_function_of_the_seed_and_longer_plans_extend_shorter_ones(runs):
    specs = [mix.SourceSpec("web", str(runs["web"]), 2), mix.SourceSpec("books", str(runs["books"]), 1)]
    _, a = mix.build_plan(specs, 40_000, SEQ, seed=7)
    _, b = mix.build_plan(specs, 40_000, SEQ, seed=7)
    _, c = mix.build_plan(specs, 40_000, SEQ, seed=8)
    _, longer = mix.build_plan(specs, 80_000, SEQ, seed=7)
    assert np.array_equal(a.segments, b.segments) and np.array_equal(a.row_first, b.row_first)
    assert not np.array_equal(a.segments[:50], c.segments[:50])
    # packing is online: more tokens append rows, so a run may be resumed with more --steps
    assert np.array_equal(longer.segments[: len(a.segments)], a.segments)
    # the shuffle is global: the first rows draw from every shard, not from the first file
    assert len(np.unique(a.segments["shard"][a.segments["source"] == 0][:200])) > 1


def test_a_small_source_is_repeated_for_reported_epochs_up_to_the_limit(runs):
    specs = [mix.SourceSpec("web", str(runs["web"]), 1), mix.SourceSpec("tiny", str(runs["tiny"]), 1)]
    plan, _ = mix.build_plan(specs, 20_000, SEQ, seed=0, max_epochs=100)
    tiny = plan["sources"][1]
    assert tiny["epochs"] > 1.5, tiny
    assert abs(tiny["share"] - 0.5) < 0.05
    with pytest.raises(mix.PlanError, match=r"source tiny .* epochs, above --max-epochs 4"):
        mix.build_plan(specs, 100_000, SEQ, seed=0)


def test_waste_is_reported_beside_naive_concatenation_and_nanochat_crop(runs):
    plan, _ = mix.build_plan([mix.SourceSpec("web", str(runs["web"]), 1)], None, 4096, seed=0)
    w = plan["waste"]
    assert w["best_fit"]["waste"] < w["nanochat_crop"]["waste"]
    assert w["naive_concatenation"]["rows_starting_at_bos"] < 0.2
    assert w["best_fit"]["wasted_tokens"] == (w["best_fit"]["padded"] + w["best_fit"]["cropped_to_fit"]
                                              + w["best_fit"]["cropped_long_documents"])


def test_waste_baselines_by_hand():
    # rows of 10: documents 4, 4, 5, 12, 3
    lengths = np.array([4, 4, 5, 12, 3])
    # crop: [4 4 |5->2] (3 lost), [5? no: 5 is consumed] -> row 2: [5 ... ] see below
    crop = mix.waste_crop(lengths, 10)
    # row 1: 4 + 4, then 5 cropped to 2 (3 lost); row 2: 12 cropped to 10 (2 lost); row 3: 3 (unfinished: 3 lost)
    assert crop == {"rows": 2, "wasted_tokens": 8, "waste": 8 / 28, "rows_starting_at_bos": 1.0}
    naive = mix.waste_naive(lengths, 10)  # 28 tokens: rows overlap by one, 3 rows use 28 tokens
    assert naive["rows"] == 3 and naive["wasted_tokens"] == 0


def test_row_order_permutes_each_block_by_seed_and_block_number():
    order = mix.RowOrder(1000, seed=7, shuffle_block=300)  # blocks of 300, 300, 300 and a last one of 100
    assert order.blocks == 4
    each = [order.plan_row(i) for i in range(1000)]
    # the definition, stated independently: block b is b * 300 + default_rng([seed, b]).permutation(its size)
    expected = np.concatenate([b * 300 + np.random.default_rng([7, b]).permutation(min(300, 1000 - b * 300))
                               for b in range(4)])
    assert each == expected.tolist() and each != sorted(each)
    assert np.concatenate([order.block(b) for b in range(4)]).tolist() == each
    for first, count in ((0, 1000), (250, 100), (299, 2), (900, 100), (1000, 0), (5, 0)):
        assert order.plan_rows(first, count).tolist() == each[first : first + count]
    assert mix.RowOrder(1000, seed=8, shuffle_block=300).plan_rows(0, 300).tolist() != each[:300]
    # a longer plan's complete blocks read the same rows in the same order
    assert mix.RowOrder(1500, seed=7, shuffle_block=300).plan_rows(0, 900).tolist() == each[:900]
    for off in (0, 1):
        plain = mix.RowOrder(50, seed=7, shuffle_block=off)
        assert plain.blocks == 1 and plain.plan_rows(0, 50).tolist() == list(range(50)) == plain.block(0).tolist()
    with pytest.raises(ValueError, match="shuffle_block must be >= 0"):
        mix.RowOrder(10, seed=0, shuffle_block=-1)
    with pytest.raises(IndexError, match="outside the plan's 1000 rows"):
        order.plan_rows(990, 11)


def test_plans_round_trip_and_refuse_replaced_arrays(runs, tmp_path):
    plan, packed = mix.build_plan([mix.SourceSpec("web", str(runs["web"]), 1)], 10_000, SEQ, seed=0)
    mix.write_plan(tmp_path / "plan", plan, packed)
    back = mix.read_plan(tmp_path / "plan")
    assert back.rows == plan["rows"] and np.array_equal(back.segments, packed.segments)
    with pytest.raises(mix.PlanError, match="exists"):
        mix.write_plan(tmp_path / "plan", plan, packed)
    np.save(tmp_path / "plan" / mix.ROWS_NPY, packed.row_first[::-1].copy())
    with pytest.raises(ValueError, match="rows.npy: sha256 .* differs"):
        mix.read_plan(tmp_path / "plan")


def test_changed_runs_are_named(runs, tmp_path):
    run = tmp_path / "web"
    shutil.copytree(runs["web"], run)
    plan, _ = mix.build_plan([mix.SourceSpec("web", str(run), 1)], 10_000, SEQ, seed=0)
    assert mix.check_sources(plan) == []
    manifest = json.loads((run / "manifest.json").read_text())
    rec = next(r for r in manifest["shards"] if r["split"] == "train")
    rec["sha256"] = "f" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    problems = mix.check_sources(plan)
    assert len(problems) == 1 and rec["path"] in problems[0] and "ffffffffffff" in problems[0]
    manifest["tokenizer"]["sha256"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert any("tokenizer is now 000000000000" in p for p in mix.check_sources(plan))


def test_source_arguments():
    assert mix.parse_source("web=out/web:3") == mix.SourceSpec("web", "out/web", 3.0)
    assert mix.parse_source("out/web") == mix.SourceSpec("web", "out/web", 1.0)
    assert mix.parse_source("b=s3://bucket/runs/books:0.5") == mix.SourceSpec("b", "s3://bucket/runs/books", 0.5)
    assert mix.parse_source("s3://bucket/runs/books") == mix.SourceSpec("books", "s3://bucket/runs/books", 1.0)
    for bad, msg in (("web=out/web:0", "must be above 0"), ("web=out/web:-1", "must be above 0"),
                     ("web=out/web:x", "must be a number"), ("web=", "no run directory")):
        with pytest.raises(mix.PlanError, match=msg):
            mix.parse_source(bad)


@pytest.mark.slow
def test_bad_input_from_the_command_line_exits_2(runs, tmp_path, small_tokenizer_dir):
    cases = [
        ([f"web={runs['web']}:0"], "weight 0 must be above 0"),
        ([f"web={runs['web']}", "--seq-len", "100000000"], "fewer than one row"),
        ([f"web={runs['web']}", f"tiny={runs['tiny']}", "--tokens", "10000000"], "above --max-epochs"),
        ([f"web={runs['web']}", f"web={runs['books']}"], "source names must differ"),
        ([str(tmp_path / "nowhere")], "not the output of `tokshard encode`"),
    ]
    for args, msg in cases:
        proc = run_tokshard("mix", *args, "--out", str(tmp_path / "plan"), check=False)
        assert proc.returncode == 2 and msg in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "plan").exists()


@pytest.mark.slow
def test_sources_with_different_tokenizers_are_refused_naming_both(runs, tmp_path, ray_cluster):
    other_tok = tmp_path / "tok"
    jobs.train_tokenizer(None, other_tok, vocab_size=600, sample_bytes=300_000)
    src = write_parquet(tmp_path / "x.parquet", sample_texts(40))
    jobs.encode(str(src), other_tok, tmp_path / "other", val_fraction=0.0, show_progress=False)
    proc = run_tokshard("mix", f"web={runs['web']}", f"other={tmp_path / 'other'}", "--out", str(tmp_path / "p"),
                        check=False)
    assert proc.returncode == 2
    assert "sources web" in proc.stderr and "and other" in proc.stderr and "different tokenizers" in proc.stderr


@pytest.mark.slow
def test_cli_writes_a_plan_and_reports_it(runs, tmp_path):
    proc = run_tokshard("mix", f"web={runs['web']}:3", f"books={runs['books']}:1", "--tokens", "50000", "--seq-len",
                        str(SEQ), "--seed", "3", "--out", str(tmp_path / "plan"), "--json")
    summary = json.loads(proc.stdout)
    assert summary["rows"] == -(-50_000 // SEQ) and [s["name"] for s in summary["sources"]] == ["web", "books"]
    on_disk = json.loads((tmp_path / "plan" / mix.PLAN_JSON).read_text())
    assert on_disk["files"].keys() == {mix.SEGMENTS_NPY, mix.ROWS_NPY}
    assert on_disk["sources"] == summary["sources"]
    text = run_tokshard("mix", str(runs["web"]), "--seq-len", str(SEQ), "--out", str(tmp_path / "one")).stdout
    assert "planned" in text and "nanochat crop" in text


def test_split_long_documents_are_placed_whole_in_row_sized_pieces(runs):
    specs = [mix.SourceSpec("books", str(runs["books"]), 1)]
    crop, _ = mix.build_plan(specs, 40_000, SEQ, seed=0)
    plan, packed = mix.build_plan(specs, 40_000, SEQ, seed=0, split_long=True)
    assert plan["long_documents"] == "split" and crop["long_documents"] == "crop"
    w, c = plan["waste"]["best_fit"], crop["waste"]["best_fit"]
    assert w["cropped_long_documents"] == 0 and c["cropped_long_documents"] > 0
    assert w["waste"] < 0.05 < c["waste"], (w, c)
    assert 0 < w["rows_starting_at_bos"] < 1 and c["rows_starting_at_bos"] == 1
    # the pieces of one document are disjoint ranges of it
    seen: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for _src, shard, start, length in packed.segments.tolist():
        seen.setdefault((shard, start), []).append(length)
    assert all(len(v) == 1 for v in seen.values()), "no range is placed twice within one pass"
    assert int(packed.segments["length"].max()) <= SEQ + 1


def test_an_empty_source_is_refused(tmp_path, small_tokenizer_dir, ray_cluster):
    src = write_parquet(tmp_path / "x.parquet", sample_texts(3))
    jobs.encode(str(src), small_tokenizer_dir, tmp_path / "run", val_fraction=0.999, show_progress=False)
    assert Manifest.read(tmp_path / "run").totals()["train"]["documents"] == 0  # every document drew val
    proc = run_tokshard("mix", f"empty={tmp_path / 'run'}", "--out", str(tmp_path / "plan"), check=False)
    assert proc.returncode == 2 and "source empty" in proc.stderr and "has no train documents" in proc.stderr
