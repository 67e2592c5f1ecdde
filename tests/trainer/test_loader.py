"""tokshard.data on a real run and a real plan: rows equal the plan's documents, labels and document boundaries are
right, resume is exact at any step and across world sizes, DataLoader workers keep the order, changed runs and
tokenizers are refused, and `import tokshard` stays free of torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tokshard.data import IGNORE_INDEX, Loader, PackedRows, open_plan
from tokshard.pipeline import mix
from tokshard.pipeline.shards import ShardReader

SEQ = 64


@pytest.fixture(scope="module")
def plan(sample_run, tmp_path_factory) -> Path:
    """A written plan of the sample run (short rows, so some are padded and some documents cropped)."""
    d = tmp_path_factory.mktemp("plan") / "plan"
    data, packed = mix.build_plan([mix.SourceSpec("sample", str(sample_run), 1)], 40 * 24 * SEQ, SEQ, seed=5)
    mix.write_plan(d, data, packed)
    return d


def rows_of(batches: list[dict]) -> np.ndarray:
    return np.concatenate([b["input_ids"].numpy() for b in batches])


def test_rows_hold_the_plans_documents_with_labels_and_boundaries(plan, sample_run):
    ds = PackedRows(plan, batch_size=4)
    p = mix.read_plan(plan)
    batch = next(iter(ds))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (4, SEQ)
    bos = p.data["tokenizer"]["bos_id"]
    for i in range(4):
        expected, positions = [], []
        for _src, shard, start, length in p.row_segments(ds.plan_row(i)).tolist():
            with ShardReader(sample_run / p.data["sources"][0]["shards"][shard]["path"]) as r:
                expected.append(np.array(r.tokens[start : start + length]))
            positions.append(np.arange(length))
        row = np.concatenate(expected)
        filled = len(row)
        assert batch["input_ids"][i, 0] == bos, "every row starts at a document"
        assert np.array_equal(batch["input_ids"][i, : min(filled, SEQ)].numpy(), row[:SEQ])
        assert np.array_equal(batch["labels"][i, : filled - 1].numpy(), row[1:filled])
        assert (batch["labels"][i, filled - 1 :] == IGNORE_INDEX).all()
        assert np.array_equal(batch["position_ids"][i, : min(filled, SEQ)].numpy(), np.concatenate(positions)[:SEQ])
    # cu_seqlens: every document start over the flattened batch, and its end
    flat_starts = np.flatnonzero(batch["position_ids"].reshape(-1).numpy() == 0)
    assert batch["cu_seqlens"].tolist() == [*flat_starts.tolist(), 4 * SEQ]
    assert batch["max_seqlen"] == int(np.diff(batch["cu_seqlens"].numpy()).max())
    assert batch["position"] == 4


def test_rows_are_read_once_each_in_a_seeded_shuffled_order(plan):
    ds = PackedRows(plan, batch_size=4)
    order = [ds.plan_row(i) for i in range(ds.plan.rows)]
    assert sorted(order) == list(range(ds.plan.rows)) and order != sorted(order)
    assert order == [PackedRows(plan, batch_size=4).plan_row(i) for i in range(ds.plan.rows)]
    assert [PackedRows(plan, batch_size=4, shuffle_block=0).plan_row(i) for i in range(5)] == list(range(5))
    # blocks: a plan row stays inside its block, so a longer plan's complete first blocks read the same order
    small = PackedRows(plan, batch_size=4, shuffle_block=100)
    assert all(small.plan_row(i) // 100 == i // 100 for i in range(ds.plan.rows))


def _largest_document_share(ds: PackedRows, batches: int) -> float:
    """Mean over batches of the share of a batch's tokens that come from its most frequent document."""
    run = mix.open_run(ds.plan.data["sources"][0]["run"])
    key = run.doc_shard * (1 << 40) + run.doc_start  # document starts, sorted: shards in order, offsets ascending
    shares = []
    for b in range(batches):
        tokens: dict[int, int] = {}
        for i in range(b * ds.batch_size, (b + 1) * ds.batch_size):
            for _src, shard, start, length in ds.plan.row_segments(ds.plan_row(i)).tolist():
                doc = int(np.searchsorted(key, shard * (1 << 40) + start, side="right")) - 1
                tokens[doc] = tokens.get(doc, 0) + length
        shares.append(max(tokens.values()) / sum(tokens.values()))
    return float(np.mean(shares))


def test_batches_of_split_long_documents_mix_documents(sample_run):
    """The packer places a long document's row-sized pieces one after another; read in plan order, batches were
    mostly one document (the cause of a 0.2 val BPB gap to windows, docs/benchmarks.md). Read shuffled they mix."""
    data, packed = mix.build_plan([mix.SourceSpec("s", str(sample_run), 1)], None, SEQ, seed=0, split_long=True)
    plan = mix.Plan(sample_run, data, packed.segments, packed.row_first)
    batches = plan.rows // 8
    in_plan_order = _largest_document_share(PackedRows(plan, batch_size=8, shuffle_block=0), batches)
    shuffled = _largest_document_share(PackedRows(plan, batch_size=8), batches)
    assert in_plan_order > 0.4, "the fixture must hold long documents for this test to mean anything"
    assert shuffled < in_plan_order / 3, (shuffled, in_plan_order)


def _read_megatron_train(dest: Path) -> list[np.ndarray]:
    """`DEST/train` as Megatron-LM's indexed dataset lays it out (header of 34 bytes, sizes, pointers; one
    sequence per document); tests/pipeline/test_export.py checks the layout itself."""
    idx = (dest / "train.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    n = int(np.frombuffer(idx, "<u8", 1, 18)[0])
    sizes = np.frombuffer(idx, "<i4", n, 34)
    pointers = np.frombuffer(idx, "<i8", n, 34 + 4 * n)
    data = (dest / "train.bin").read_bytes()
    return [np.frombuffer(data, "<u2", int(k), int(p)) for k, p in zip(sizes, pointers, strict=True)]


@pytest.mark.parametrize(("shuffle_block", "batch_size"), [(None, 13), (100, 7), (0, 13)])
def test_an_export_of_the_plan_holds_the_loaders_rows_in_the_loaders_order(plan, tmp_path, shuffle_block,
                                                                           batch_size):
    """What `tokshard export` writes from a plan is what PackedRows yields at the same shuffle block, row after row
    (padding left out), then the rows of the last partial batch the loader drops."""
    from tokshard.pipeline.export import export

    p = mix.read_plan(plan)
    block = mix.SHUFFLE_BLOCK if shuffle_block is None else shuffle_block
    ds = PackedRows(plan, batch_size=batch_size, shuffle_block=block)
    loaded = []
    for batch in ds:
        full = np.concatenate([batch["input_ids"].numpy(), batch["labels"].numpy()[:, -1:]], axis=1)
        filled = (batch["labels"].numpy() != IGNORE_INDEX).sum(axis=1) + 1  # labels are -100 only on padding
        loaded += [row[:n] for row, n in zip(full, filled.tolist(), strict=True)]
    dropped = p.rows % batch_size
    assert dropped and len(loaded) == p.rows - dropped, "the fixture must leave a partial batch for the loader to drop"
    # the dropped rows, and every row's segments, from the order and the plan directly
    order = mix.RowOrder(p.rows, p.data["seed"], block).plan_rows(0, p.rows)
    assert (order.tolist() == list(range(p.rows))) == (block == 0)
    src = p.data["sources"][0]
    readers = {i: ShardReader(Path(src["run"]) / sh["path"]) for i, sh in enumerate(src["shards"])}
    segments = [p.row_segments(r).tolist() for r in order.tolist()]
    for row in segments[len(loaded) :]:
        loaded.append(np.concatenate([readers[shard].tokens[a : a + n] for _s, shard, a, n in row]))
    for r in readers.values():
        r.close()
    kwargs = {} if shuffle_block is None else {"shuffle_block": shuffle_block}
    export(plan, tmp_path / "meg", "megatron", **kwargs)
    docs = _read_megatron_train(tmp_path / "meg")
    assert [len(d) for d in docs] == [n for row in segments for _s, _sh, _a, n in row], "one sequence per segment"
    assert np.array_equal(np.concatenate(docs), np.concatenate(loaded))
    summary = export(plan, tmp_path / "bins", "nanogpt", tokens_per_file=5_000, **kwargs)
    assert summary["shuffle_block"] == block
    train = [np.fromfile(tmp_path / "bins" / f["name"], "<u2", offset=1024) for f in summary["files"]
             if f["split"] == "train"]
    assert np.array_equal(np.concatenate(train), np.concatenate(loaded))


def test_resume_at_any_step_gives_the_same_batches(plan):
    straight = list(PackedRows(plan, batch_size=3))
    assert len(straight) == mix.read_plan(plan).rows // 3
    for k in (0, 1, 7, len(straight) - 1):
        first = PackedRows(plan, batch_size=3)
        it = iter(first)
        for _ in range(k):
            next(it)
        state = first.state_dict()
        assert state["position"] == 3 * k
        resumed = PackedRows(plan, batch_size=3)
        resumed.load_state_dict(state)
        assert np.array_equal(rows_of(list(resumed)), rows_of(straight[k:]))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_together_read_the_single_process_sequence_and_resume_across_world_sizes(plan, world):
    single = rows_of(list(PackedRows(plan, batch_size=6, world=1, rank=0)))
    per_rank = [list(PackedRows(plan, batch_size=6 // world, world=world, rank=r)) for r in range(world)]
    steps = len(per_rank[0])
    assert all(len(b) == steps for b in per_rank)
    joint = np.concatenate([per_rank[r][s]["input_ids"].numpy() for s in range(steps) for r in range(world)])
    assert np.array_equal(joint, single)
    # stop after 5 steps at this world size, resume on one process: the rest of the single-process sequence
    state = {"position": per_rank[0][4]["position"], "rows": mix.read_plan(plan).rows, "seed": 5, "seq_len": SEQ}
    one = PackedRows(plan, batch_size=6)
    one.load_state_dict(state)
    assert np.array_equal(rows_of(list(one)), single[5 * 6 :])
    # and the other way round: one process's state resumed by `world` ranks
    back = [PackedRows(plan, batch_size=6 // world, world=world, rank=r) for r in range(world)]
    for r in back:
        r.load_state_dict({"position": 12})
    joint = np.concatenate([b["input_ids"].numpy() for batches in zip(*back, strict=True) for b in batches])
    assert np.array_equal(joint, single[12:])


def test_dataloader_workers_keep_the_order_and_the_resume_position(plan):
    reference = rows_of(list(PackedRows(plan, batch_size=4)))
    loader = Loader(PackedRows(plan, batch_size=4), num_workers=2)
    got = []
    for i, batch in enumerate(loader):
        got.append(batch)
        if i == 4:
            break
    assert loader.state_dict()["position"] == 20
    state = loader.state_dict()
    del loader
    resumed = Loader(PackedRows(plan, batch_size=4), num_workers=2)
    resumed.load_state_dict(state)
    assert np.array_equal(np.concatenate([rows_of(got), rows_of(list(resumed))]), reference)


def test_a_run_is_a_plan_too(sample_run):
    ds = PackedRows(sample_run, batch_size=2, seq_len=SEQ, tokens=10 * 2 * SEQ)
    batches = list(ds)
    assert len(batches) == 10 and ds.state_dict()["position"] == 20
    with pytest.raises(ValueError, match="give seq_len"):
        open_plan(sample_run)


def test_changed_runs_and_tokenizers_are_refused(sample_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sample_run, run)
    data, packed = mix.build_plan([mix.SourceSpec("s", str(run), 1)], 2000, SEQ, seed=0)
    mix.write_plan(tmp_path / "plan", data, packed)
    PackedRows(tmp_path / "plan", batch_size=2)  # unchanged: fine
    tok_json = run / "tokenizer" / "tokenizer.json"
    tok_json.write_text(tok_json.read_text().replace('"<|pad|>"', '"<|pod|>"'))
    with pytest.raises(ValueError, match=r"tokenizer.json does not match the sha256"):
        PackedRows(tmp_path / "plan", batch_size=2)
    shutil.rmtree(run / "train")
    with pytest.raises(ValueError, match=r"source s: .*train/shard-.* is missing"):
        PackedRows(tmp_path / "plan", batch_size=2)
    with pytest.raises(ValueError, match="seq_len 64, not 128"):
        open_plan(tmp_path / "plan", seq_len=128)


def test_position_outside_the_plan_is_refused(plan):
    ds = PackedRows(plan, batch_size=2)
    with pytest.raises(ValueError, match="outside the plan"):
        ds.load_state_dict({"position": 10**9})
    with pytest.raises(ValueError, match="another plan"):
        ds.load_state_dict({"position": 0, "seq_len": 32})


def test_import_tokshard_does_not_import_torch():
    code = "import sys, tokshard, tokshard.pipeline.mix, tokshard.trainer.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_masked_attention_trains_each_document_as_if_alone():
    from tokshard.trainer.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, seq_len=16))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    a, b = torch.randint(1, 50, (1, 6)), torch.randint(1, 50, (1, 9))
    row = torch.cat([a, b], dim=1)
    pos = torch.cat([torch.arange(6), torch.arange(9)])[None]
    packed = model(row, pos)
    torch.testing.assert_close(packed[:, :6], model(a))
    torch.testing.assert_close(packed[:, 6:], model(b))
    assert not torch.allclose(model(row)[:, 6:], model(b)), "without the mask the second document sees the first"
