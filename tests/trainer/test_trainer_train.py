"""The training loop end to end on real shards of the bundled sample: BPB drops, resume is exact, the CLI trains,
survives Ctrl-C and samples, mismatched tokenizers are refused, and a >65,536-token vocabulary (uint32) trains."""

from __future__ import annotations

import json
import os
import shutil
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import sample_texts, write_parquet
from tokshard.pipeline import jobs
from tokshard.pipeline.shards import ShardReader
from tokshard.pipeline.tokenizer import PATTERNS, Tokenizer
from tokshard.trainer import checkpoint
from tokshard.trainer.bpb import score_windows
from tokshard.trainer.data import open_dataset, val_windows
from tokshard.trainer.train import TrainConfig, train

TOKSHARD = str(Path(sys.executable).with_name("tokshard"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster, small_tokenizer_dir) -> Path:
    out = tmp_path_factory.mktemp("trainer") / "out"
    jobs.encode(None, small_tokenizer_dir, out, show_progress=False)
    return out


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def quiet(_: str) -> None:
    pass


@pytest.mark.slow
def test_tiny_preset_learns_real_text(shards, tmp_path):
    run = tmp_path / "run"
    t0 = time.time()
    summary = train(TrainConfig(data=str(shards), out=str(run), preset="tiny", steps=200, batch_size=8, eval_every=100),
                    echo=quiet)
    took = time.time() - t0
    assert summary["finished"] and summary["step"] == 200
    val = records(run, "val")
    assert [v["step"] for v in val] == [0, 100, 200]
    first, last = val[0]["val_bpb"], val[-1]["val_bpb"]
    assert last < 0.75 * first, f"val BPB {first:.3f} -> {last:.3f}: the model did not learn"
    losses = [r["loss"] for r in records(run, "train")]
    assert len(losses) == 200 and np.mean(losses[-20:]) < np.mean(losses[:20]) - 2.0
    assert {"lr_mult", "tokens_per_s", "step_ms", "data_ms", "grad_norm"} <= set(records(run, "train")[0])
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["steps"] == 200 and cfg["model"]["n_layer"] == 2
    # the exported model scores the fixed val windows to exactly the BPB the trainer logged
    inf = checkpoint.load_inference(run / "model.pt")
    ds = open_dataset(shards)
    windows, lengths = val_windows(ds.val, inf.config.seq_len, 1 << 20)
    score = score_windows(inf.model, windows, ds.token_bytes, lengths=lengths)
    ds.close()
    assert inf.step == 200 and inf.tokenizer_sha256 == ds.tokenizer_sha256
    assert score.bpb == pytest.approx(last, rel=1e-6)
    print(f"tiny preset: 200 steps in {took:.1f} s, val bpb {first:.3f} -> {last:.3f}, "
          f"{summary['tokens_per_s']:,.0f} tok/s")


def small_run(shards: Path, run: Path, **kw) -> TrainConfig:
    return TrainConfig(data=str(shards), out=str(run), preset="tiny", steps=16, batch_size=4, seq_len=64,
                       eval_every=8, **kw)


def test_resume_gives_the_same_loss_curve(shards, tmp_path):
    train(small_run(shards, tmp_path / "straight"), echo=quiet)
    half = train(small_run(shards, tmp_path / "resumed", stop_at=8), echo=quiet)
    assert not half["finished"] and half["step"] == 8
    assert checkpoint.load_training(tmp_path / "resumed" / "checkpoint.pt")["data_position"] == 8 * 4
    done = train(TrainConfig(out=str(tmp_path / "resumed")), resume=True, echo=quiet)
    assert done["finished"] and done["step"] == 16
    a = records(tmp_path / "straight", "train")
    b = records(tmp_path / "resumed", "train")
    assert [r["step"] for r in b] == list(range(1, 17))
    # same batches, same optimiser state, same kernels: bit-identical on CPU
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    assert [r["val_bpb"] for r in records(tmp_path / "resumed", "val")] == [
        r["val_bpb"] for r in records(tmp_path / "straight", "val")]
    wa = checkpoint.load_inference(tmp_path / "straight" / "model.pt").model.state_dict()
    wb = checkpoint.load_inference(tmp_path / "resumed" / "model.pt").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_runs_refuse_what_would_corrupt_them(shards, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(TrainConfig(out=str(run)), resume=True, echo=quiet)
    train(small_run(shards, run, stop_at=2), echo=quiet)
    with pytest.raises(ValueError, match="already holds a run"):
        train(small_run(shards, run), echo=quiet)
    with pytest.raises(ValueError, match=r"batch_size \(run: 4, given: 8\)"):
        train(TrainConfig(out=str(run), batch_size=8), resume=True, echo=quiet)
    with pytest.raises(ValueError, match="unknown preset"):
        train(TrainConfig(data=str(shards), out=str(tmp_path / "x"), preset="huge"), echo=quiet)


def test_tokenizer_that_does_not_match_the_shards_is_refused(shards, tmp_path):
    bad = tmp_path / "out"
    shutil.copytree(shards, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="shards were made with 000000000000"):
        train(small_run(bad, tmp_path / "run"), echo=quiet)


@pytest.mark.slow
def test_cli_train_interrupt_resume_and_sample(shards, tmp_path):
    run = tmp_path / "run"
    args = [TOKSHARD, "train", "--data", str(shards), "--out", str(run), "--steps", "3000", "--batch-size", "2",
            "--seq-len", "32", "--eval-every", "1000", "--eval-tokens", "256", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 60
        while not (run / "log.jsonl").is_file() or (run / "log.jsonl").read_text().count('"train"') < 5:
            assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else "slow"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output
    assert "checkpoint saved, continue with --resume" in output
    state = checkpoint.load_training(run / "checkpoint.pt")
    stopped = state["step"]
    assert 5 <= stopped < 3000 and records(run, "train")[-1]["step"] == stopped
    # resume to a shorter end (allowed: --steps may change), JSON summary
    r = subprocess.run([TOKSHARD, "train", "--out", str(run), "--resume", "--steps", str(stopped + 3), "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["finished"] and summary["step"] == stopped + 3
    assert [x["step"] for x in records(run, "train")] == list(range(1, stopped + 4))
    r = subprocess.run([TOKSHARD, "sample", "--checkpoint", str(run / "model.pt"), "--prompt", "The package",
                        "--max-tokens", "12", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt"] == "The package" and 0 < len(out["tokens"]) <= 12 and out["step"] == stopped + 3
    r = subprocess.run([TOKSHARD, "sample", "--checkpoint", str(tmp_path / "none.pt")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and "none.pt not found" in r.stderr


def byte_pair_tokenizer() -> Tokenizer:
    """All 256 bytes plus all 65,536 byte pairs (lowercase pairs last, so common ones get ids > 65535): a valid
    BPE vocabulary of 65,800 ids, built instantly instead of trained."""
    low = set(string.ascii_lowercase.encode())
    pairs = sorted(((a, b) for a in range(256) for b in range(256)), key=lambda p: (p[0] in low and p[1] in low, p))
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({bytes(p): 256 + i for i, p in enumerate(pairs)})
    return Tokenizer.from_ranks(ranks, PATTERNS["gpt2"], "gpt2")


@pytest.mark.slow
def test_uint32_vocabulary_trains(tmp_path, ray_cluster):
    tok = byte_pair_tokenizer()
    assert tok.vocab_size > 65536 and tok.dtype == np.uint32
    tok.save(tmp_path / "tok")
    src = write_parquet(tmp_path / "docs.parquet", sample_texts(120))
    jobs.encode(str(src), tmp_path / "tok", tmp_path / "out", val_fraction=0.2, show_progress=False)
    with ShardReader(next((tmp_path / "out" / "train").glob("*.arrow"))) as r:
        assert r.dtype == np.uint32 and int(r.tokens.max()) > 65535
    summary = train(TrainConfig(data=str(tmp_path / "out"), out=str(tmp_path / "run"), steps=3, batch_size=2,
                                seq_len=32, n_embd=32, eval_every=3, eval_tokens=512), echo=quiet)
    assert summary["finished"] and summary["val_bpb"] > 0
    assert checkpoint.load_inference(tmp_path / "run" / "model.pt").config.vocab_size == 65_800


@pytest.mark.slow
def test_torchrun_two_ranks_train_like_one_process_with_their_joint_batch(shards, tmp_path):
    common = {"steps": 6, "seq_len": 32, "eval_every": 3, "eval_tokens": 2048}
    train(TrainConfig(data=str(shards), out=str(tmp_path / "one"), batch_size=4, **common), echo=quiet)
    flags = [a for k, v in common.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2",
                        TOKSHARD, "train", "--data", str(shards), "--out", str(tmp_path / "two"), "--batch-size", "2",
                        *flags], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "device cpu x2" in r.stdout and r.stdout.count("| val bpb") == 3 and r.stdout.count("finished") == 1
    # rank r takes windows [p + 2r, p + 2r + 2) of each global batch of 4: the same windows as batch 4 in one
    # process, gradients averaged by DDP; equal up to the order of floating-point sums
    one, two = records(tmp_path / "one", "train"), records(tmp_path / "two", "train")
    assert [x["step"] for x in two] == list(range(1, 7))
    np.testing.assert_allclose([x["loss"] for x in two], [x["loss"] for x in one], rtol=2e-4)
    np.testing.assert_allclose([x["val_bpb"] for x in records(tmp_path / "two", "val")],
                               [x["val_bpb"] for x in records(tmp_path / "one", "val")], rtol=2e-4)
    assert checkpoint.load_training(tmp_path / "two" / "checkpoint.pt")["data_position"] == 6 * 4
