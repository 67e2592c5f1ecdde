"""Premiums as a target (pipeline/premium.py): worst/mean premium beside the reference's bytes/token, and the
alpha sweep of eval-tokenizer, on a synthetic two-language parallel corpus (English and its ROT13 "language")."""

from __future__ import annotations

import codecs
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_tokshard, sample_texts
from tokshard.pipeline import evaluate, premium


def _table(texts: list[str], langs: list[str], keys: list[str | None], prefix: str) -> pa.Table:
    return pa.table({"text": texts, "id": [f"{prefix}-{i}" for i in range(len(texts))], "language": langs,
                     "key": pa.array(keys, pa.string())})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Training: much "en", little "rot" (ROT13 of other English documents). Evaluation: held-out documents in
    both languages, paired by key."""
    d = tmp_path_factory.mktemp("premium")
    texts = [t[:3000] for t in sample_texts() if t.isascii() and len(t) > 500]
    train_en, train_rot, held = texts[:150], texts[150:180], texts[180:210]
    rot = [codecs.encode(t, "rot13") for t in train_rot]
    pq.write_table(_table(train_en + rot, ["en"] * len(train_en) + ["rot"] * len(rot), [None] * (len(texts[:180])),
                          "t"), d / "train.parquet")
    keys = [f"k{i}" for i in range(len(held))]
    pq.write_table(_table(held + [codecs.encode(t, "rot13") for t in held], ["en"] * len(held) + ["rot"] * len(held),
                          keys + keys, "e"), d / "eval.parquet")
    return d


@pytest.mark.slow  # trains in subprocesses, each starting its own Ray
def test_sweep_alpha_trades_reference_compression_for_premiums(tmp_path, corpus):
    args = ["eval-tokenizer", "--source", str(corpus / "eval.parquet"), "--group-by", "language", "--parallel-key",
            "key", "--reference", "en", "--train-source", str(corpus / "train.parquet"), "--sweep", "600",
            "--sweep-alpha", "1,0", "--balance-by", "language", "--sample-bytes", "2000000", "--repeats", "1",
            "--out", str(tmp_path / "r"), "--workers", "2"]
    out = run_tokshard(*args).stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    points = {p["alpha"]: p for p in report["alpha_sweep"]["points"]}
    assert set(points) == {1.0, 0.0} and report["alpha_sweep"]["vocab_size"] == 600
    # equal shares give the small language its merges: a lower premium, paid for in English bytes/token
    assert points[0.0]["worst_premium"] < points[1.0]["worst_premium"]
    assert points[0.0]["reference_bytes_per_token"] < points[1.0]["reference_bytes_per_token"]
    assert points[1.0]["worst_group"] == "rot" and report["premium_summary"]["groups"] == ["rot"]
    assert premium.PLOT in report["plots"] and (tmp_path / "r" / premium.PLOT).stat().st_size > 10_000
    assert "premiums over 1 groups with parallel text" in out and "sweep-alpha at 600 tokens" in out
    again = run_tokshard(*args)  # same settings: the trained tokenizers are reused
    assert json.loads((tmp_path / "r" / "report.json").read_text())["alpha_sweep"]["reused"] == [1.0, 0.0]
    assert "reusing" in again.stderr


def test_summary_names_groups_without_training_data(tmp_path, corpus, ray_cluster):
    from tokshard.pipeline import jobs

    jobs.train_tokenizer(str(corpus / "train.parquet"), tmp_path / "tok", vocab_size=500, sample_bytes=500_000,
                         balance_by="language", balance_weights={"rot": 0})
    report = evaluate.run([str(tmp_path / "tok")], tmp_path / "r", source=str(corpus / "eval.parquet"),
                          group_by="language", parallel_key="key", reference="en", repeats=1)
    s = report["premium_summary"]["tokenizers"]["tok"]
    assert s["groups_without_training_data"] == ["rot"] and s["worst_premium"] > 1.2
    assert s["reference_bytes_per_token"] == report["tokenizers"][0]["groups"]["en"]["bytes_per_token"]
    assert any(line.endswith("(no training data: rot)") for line in premium.summary_lines(report))
    no_parallel = evaluate.run([str(tmp_path / "tok")], tmp_path / "r2", source=str(corpus / "eval.parquet"),
                               group_by="language", repeats=1)
    assert no_parallel["premium_summary"] is None and premium.PLOT not in no_parallel["plots"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--sweep", "600"], "needs --balance-by"),
    (["--sweep", "600,700", "--balance-by", "language"], "one vocabulary size"),
    (["--balance-by", "language"], "one vocabulary size"),
    (["--sweep", "600", "--balance-by", "language", "--sweep-alpha", "1,2"], "between 0"),
    (["--sweep", "600", "--balance-by", "language", "--sweep-alpha", "1,x"], "not a number"),
])
def test_sweep_alpha_refuses_incomplete_options(tmp_path, corpus, extra, message):
    args = ["--sweep-alpha", "1,0", *extra] if "--sweep-alpha" not in extra else extra
    bad = run_tokshard("eval-tokenizer", "--source", str(corpus / "eval.parquet"), "--out", str(tmp_path / "r"),
                       *args, check=False)
    assert bad.returncode == 2 and message in bad.stderr, bad.stderr
