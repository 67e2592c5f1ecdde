"""The `tokshard` command as a user runs it: a separate process that starts and stops its own Ray."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_tokshard
from tests.local_cluster import LocalCluster

tokshard = run_tokshard


@pytest.fixture(scope="module")
def run_out(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    proc = tokshard("run", "--source", str(corpus_dir / "*.parquet"), "--out", str(out), "--vocab-size", "1024",
                    "--workers", "2", "--json", "--no-progress")
    return out, json.loads(proc.stdout)


def test_run_prints_summary_and_writes_everything(run_out):
    out, summary = run_out
    assert summary["complete"] is True
    assert summary["documents"] == 606 and summary["tokens"] > summary["documents"]
    assert 1.5 < summary["bytes_per_token"] < 6
    assert summary["tokenizer"]["vocab_size"] == 1024
    assert (out / "manifest.json").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert list((out / "train").glob("*.arrow"))


def test_inspect_verifies_and_detects_corruption(run_out, tmp_path):
    import shutil

    out, summary = run_out
    ok = tokshard("inspect", str(out), "--json")
    report = json.loads(ok.stdout)
    assert report["problems"] == [] and report["totals"]["all"]["tokens"] == summary["tokens"]
    human = tokshard("inspect", str(out / "tokenizer")).stdout
    assert "vocab 1,024" in human and "verified" in human

    out = shutil.copytree(out, tmp_path / "copy")  # the module's other tests share run_out: damage a copy
    shard = sorted((out / "train").glob("*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = tokshard("inspect", str(out), check=False)
    assert bad.returncode == 1 and shard.name in bad.stdout and "sha256" in bad.stdout


def test_inspect_names_missing_tokenizer_files(tmp_path, capsys):
    """A tokenizer directory without tokshard.json or token_bytes.npy still loads: inspect must say what it could
    not check, in the JSON (the problems it exits 1 for) and in the text (no "verified" for an unchecked sha256)."""
    from tokshard.pipeline import cli
    from tokshard.pipeline.tokenizer import METADATA_JSON, PATTERNS, TOKEN_BYTES_NPY, Tokenizer

    d = tmp_path / "tok"
    Tokenizer.from_ranks({bytes([b]): b for b in range(256)} | {b"ab": 256}, PATTERNS["gpt2"], "gpt2").save(d)

    def inspect(*flags: str) -> tuple[int, str]:
        code = cli.main(["inspect", str(d), *flags])
        return code, capsys.readouterr().out

    code, out = inspect("--json")
    assert code == 0 and json.loads(out)["problems"] == [] and json.loads(out)["sha256_verified"] is True
    code, out = inspect()
    assert code == 0 and f"(verified against {METADATA_JSON})" in out and "no problems found" in out

    (d / TOKEN_BYTES_NPY).unlink()
    code, out = inspect("--json")
    assert code == 1 and [p.split(":")[0] for p in json.loads(out)["problems"]] == [str(d / TOKEN_BYTES_NPY)]

    (d / METADATA_JSON).unlink()
    code, out = inspect("--json")
    report = json.loads(out)
    assert code == 1 and report["sha256_verified"] is False
    assert [p.split(":")[0] for p in report["problems"]] == [str(d / METADATA_JSON), str(d / TOKEN_BYTES_NPY)]
    code, out = inspect()
    assert code == 1 and "(NOT verified)" in out and "(verified" not in out
    assert f"PROBLEM {d / METADATA_JSON}: missing" in out and f"PROBLEM {d / TOKEN_BYTES_NPY}: missing" in out

    (d / METADATA_JSON).write_text(json.dumps({"pattern_name": "gpt2"}))  # present but records no sha256
    code, out = inspect("--json")
    assert code == 1 and json.loads(out)["sha256_verified"] is False
    assert "records no tokenizer_json_sha256" in json.loads(out)["problems"][0]


def test_help_shows_every_default_from_the_code():
    """`tokshard CMD --help` ends each option's help with the default argparse holds, and those defaults are the
    constants the code runs with (trainer's `train` and `sample` are checked with the trainer)."""
    import argparse

    from tokshard.pipeline import cli, jobs, sources
    from tokshard.pipeline.tokenizer import DEFAULT_VOCAB_SIZE
    from tokshard.service import cli as service_cli

    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    checked = 0
    for name, p in sub.choices.items():
        if name in ("train", "sample"):
            continue
        text = " ".join(p.format_help().split())  # argparse wraps lines anywhere
        for action in p._actions:
            if action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
                assert f"(default: {action.default})" in text, (name, action.option_strings)
                checked += 1
    assert checked > 30

    def default(command: str, dest: str):
        return sub.choices[command].get_default(dest)

    assert default("run", "vocab_size") == DEFAULT_VOCAB_SIZE
    assert default("run", "sample_bytes") == default("eval-tokenizer", "sample_bytes") == jobs.DEFAULT_SAMPLE_BYTES
    assert default("encode", "val_fraction") == jobs.DEFAULT_VAL_FRACTION
    assert default("encode", "slice_mb") << 20 == sources.DEFAULT_SLICE_BYTES
    assert default("serve", "port") == service_cli.DEFAULT_PORT


@pytest.mark.slow
def test_human_summary_of_run(corpus_dir, tmp_path):
    proc = tokshard("run", "--source", str(corpus_dir / "part-00.parquet"), "--out", str(tmp_path / "o"),
                    "--vocab-size", "600", "--no-progress")
    assert "encoded 256 documents" in proc.stdout and "bytes/token" in proc.stdout and "tokens/s" in proc.stdout


@pytest.mark.slow
def test_run_refuses_an_outdir_of_another_tokenizer(run_out, corpus_dir):
    out, _ = run_out
    before = (out / "tokenizer" / "tokenizer.json").read_bytes()
    proc = tokshard("run", "--source", str(corpus_dir), "--out", str(out), "--vocab-size", "700", "--no-progress",
                    check=False)
    assert proc.returncode == 2 and "belongs to another run (tokenizer " in proc.stderr
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == before
    assert [p.name for p in out.iterdir() if p.name.startswith("tmp")] == []


def test_usage_errors_name_the_problem(tmp_path):
    proc = tokshard("encode", "--source", str(tmp_path / "nope.parquet"), "--tokenizer", str(tmp_path),
                    "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "tokenizer.json is missing" in proc.stderr
    proc = tokshard("inspect", str(tmp_path), check=False)
    assert proc.returncode == 2 and "neither" in proc.stderr


@pytest.fixture()
def external_ray():
    """A Ray head started with `ray start --block` on loopback; every process it started is stopped after."""
    cluster = LocalCluster(head_cpus=2)
    try:
        yield cluster.address
    finally:
        cluster.stop()


@pytest.mark.slow
def test_encode_joins_an_existing_cluster(external_ray, corpus_dir, run_out, tmp_path):
    out, _ = run_out
    proc = tokshard("encode", "--address", external_ray, "--source", str(corpus_dir / "part-02.parquet"),
                    "--tokenizer", str(out / "tokenizer"), "--out", str(tmp_path / "o"), "--json", "--no-progress")
    summary = json.loads(proc.stdout)
    assert summary["complete"] and summary["documents"] == 150
    assert tokshard("inspect", str(tmp_path / "o")).returncode == 0


def test_export_nanogpt_from_the_command_line(run_out, tmp_path):
    import numpy as np

    out, summary = run_out
    proc = tokshard("export", "--format", "nanogpt", str(out), str(tmp_path / "bin"), "--tokens-per-file", "20000",
                    "--json")
    exported = json.loads(proc.stdout)
    names = [f["name"] for f in exported["files"]]
    assert names[0] == "fineweb_val_000000.bin" and names[1] == "fineweb_train_000001.bin"
    header = np.fromfile(tmp_path / "bin" / names[1], dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1 and header[2] == exported["files"][1]["tokens"]
    assert sum(f["tokens"] for f in exported["files"]) == summary["tokens"]
    again = tokshard("export", "--format", "nanogpt", str(out), str(tmp_path / "bin"), check=False)
    assert again.returncode == 2 and "already holds" in again.stderr
