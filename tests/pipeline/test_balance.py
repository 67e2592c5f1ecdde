"""Balanced training samples (pipeline/balance.py): shares, refusals, determinism, and the real Ray job."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_tokshard, sample_texts
from tokshard.pipeline import balance, jobs, sources


# -- the arithmetic ---------------------------------------------------------------------------------------
def test_parse_weights_reads_groups_and_refuses_malformed_entries():
    assert balance.parse_weights(None) == {} and balance.parse_weights("") == {}
    assert balance.parse_weights("en=2, ja=0.5,zh-CN=0") == {"en": 2.0, "ja": 0.5, "zh-CN": 0.0}
    for bad, match in [("en", "GROUP=WEIGHT"), ("=2", "GROUP=WEIGHT"), ("en=x", "not a number"),
                       ("en=-1", ">= 0"), ("en=inf", ">= 0"), ("en=1,en=2", "twice")]:
        with pytest.raises(ValueError, match=match):
            balance.parse_weights(bad)


def test_target_shares_follow_size_to_the_alpha():
    sizes = {"big": 900, "mid": 90, "small": 10}
    assert balance.target_shares(sizes, 1.0) == pytest.approx({"big": 0.9, "mid": 0.09, "small": 0.01})
    assert balance.target_shares(sizes, 0.0) == pytest.approx({g: 1 / 3 for g in sizes})
    half = balance.target_shares(sizes, 0.5)
    assert half["big"] / half["small"] == pytest.approx(math.sqrt(90))
    weighted = balance.target_shares(sizes, 0.0, {"small": 2, "big": 0})
    assert weighted == pytest.approx({"big": 0.0, "mid": 1 / 3, "small": 2 / 3})


def test_unknown_groups_bad_alpha_and_nothing_to_sample_are_refused():
    sizes = {"de": 100, "en": 10}
    with pytest.raises(ValueError, match=r"does not have: fr \(groups: de, en\)"):
        balance.target_shares(sizes, 0.3, {"fr": 2})
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0"):
            balance.target_shares(sizes, alpha)
    with pytest.raises(ValueError, match="nothing to sample"):
        balance.target_shares(sizes, 0.3, {"de": 0, "en": 0})


def test_rates_fill_the_sample_or_the_corpus_and_repeat_small_groups():
    sizes = {"big": 900, "small": 100}
    shares = balance.target_shares(sizes, 0.0)
    assert balance.sampling_rates(sizes, shares, 500) == pytest.approx({"big": 250 / 900, "small": 2.5})
    # a sample larger than the corpus is the corpus' size: at alpha 1 every document once
    assert balance.sampling_rates(sizes, balance.target_shares(sizes, 1.0), 10_000) == pytest.approx(
        {"big": 1.0, "small": 1.0})


# -- the Ray job ---------------------------------------------------------------------------------------------
def _pieces(texts: list[str], size: int = 600) -> list[str]:
    """Documents cut into ~size-character pieces, so shares can be drawn finely."""
    return [t[i : i + size] for t in texts for i in range(0, len(t), size) if len(t[i : i + size]) > 50]


def _write(path, texts: list[str], groups: list[str | None], prefix: str):
    table = pa.table({"text": texts, "id": [f"{prefix}-{i}" for i in range(len(texts))],
                      "language": pa.array(groups, pa.string())})
    pq.write_table(table, path, row_group_size=500)
    return path


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """An "English" source (one big group) and a "multilingual" one (a mid and a small group, a few null rows)."""
    d = tmp_path_factory.mktemp("balance")
    pieces = _pieces(sample_texts())
    n = len(pieces)
    english = _write(d / "en.parquet", pieces[: n // 2], ["en"] * (n // 2), "en")
    rest = pieces[n // 2 :]
    groups = ["de" if i % 8 else "fi" for i in range(len(rest))]
    groups[:3] = [None] * 3
    multi = _write(d / "multi.parquet", rest, groups, "m")
    return f"{english},{multi}"


def _record(out) -> dict:
    return json.loads((out / "tokshard.json").read_text())["training"]["balance"]


def test_balanced_job_draws_the_target_shares_from_several_sources(tmp_path, two_sources, ray_cluster):
    result = jobs.train_tokenizer(two_sources, tmp_path / "tok", vocab_size=600, sample_bytes=1_200_000,
                                  balance_by="language", balance_alpha=0.0)
    record = _record(tmp_path / "tok")
    assert result.balance == record and record["by"] == "language" and record["alpha"] == 0.0
    groups = record["groups"]
    assert set(groups) == {"en", "de", "fi", balance.NULL_GROUP}
    sizes = {g: s["corpus_bytes"] for g, s in groups.items()}
    assert sizes["en"] > 5 * sizes["fi"]  # the corpus is skewed ...
    for g, s in groups.items():  # ... the sample is not (a tiny group is repeated up to its share)
        assert s["target_share"] == pytest.approx(0.25)
        assert s["share"] == pytest.approx(0.25, abs=0.05 if s["rate"] < 1 else 0.02), g
    assert groups[balance.NULL_GROUP]["rate"] > 1 and groups["en"]["rate"] < 1
    assert sum(s["sample_bytes"] for s in groups.values()) == result.sample_bytes
    assert sum(s["sample_documents"] for s in groups.values()) == result.sample_documents
    # deterministic: the same settings give the same sample and the same tokenizer
    again = jobs.train_tokenizer(two_sources, tmp_path / "again", vocab_size=600, sample_bytes=1_200_000,
                                 balance_by="language", balance_alpha=0.0)
    assert again.sha256 == result.sha256 and _record(tmp_path / "again") == record
    # a balanced tokenizer is never taken for `run`'s uniform one
    assert jobs.reusable_tokenizer(tmp_path / "tok", two_sources, vocab_size=600, sample_bytes=1_200_000,
                                   pattern="cl100k-d2", seed=0, text_column="text", id_column="id") is None


def test_alpha_one_keeps_proportions_and_weights_steer_groups(tmp_path, two_sources, ray_cluster):
    jobs.train_tokenizer(two_sources, tmp_path / "a1", vocab_size=600, sample_bytes=1_000_000,
                         balance_by="language", balance_alpha=1.0, balance_weights={"fi": 0, balance.NULL_GROUP: 0})
    groups = _record(tmp_path / "a1")["groups"]
    assert groups["fi"]["sample_bytes"] == 0 and groups[balance.NULL_GROUP]["sample_documents"] == 0
    corpus = groups["en"]["corpus_bytes"] + groups["de"]["corpus_bytes"]
    assert groups["en"]["share"] == pytest.approx(groups["en"]["corpus_bytes"] / corpus, abs=0.05)


def test_balanced_superbpe_records_both(tmp_path, two_sources, ray_cluster):
    jobs.train_tokenizer(two_sources, tmp_path / "s", vocab_size=700, sample_bytes=600_000, balance_by="language",
                         superbpe_transition=600)
    training = json.loads((tmp_path / "s" / "tokshard.json").read_text())["training"]
    assert training["superbpe"]["stage2_merges"] == 100 and training["balance"]["alpha"] == balance.DEFAULT_ALPHA


def test_job_refuses_a_missing_column_and_unknown_weights(tmp_path, two_sources, ray_cluster):
    every_file = r"no column 'lang' to balance by in \S+en.parquet \(columns: text, id, language\); \S+multi.parquet"
    with pytest.raises(sources.SourceError, match=every_file):
        jobs.train_tokenizer(two_sources, tmp_path / "x", vocab_size=600, balance_by="lang")
    with pytest.raises(ValueError, match="does not have: english"):
        jobs.train_tokenizer(two_sources, tmp_path / "x", vocab_size=600, balance_by="language",
                             balance_weights={"english": 2})
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # trains in subprocesses, each starting its own Ray
def test_cli_prints_the_shares_and_refuses_options_without_balance_by(tmp_path, two_sources):
    out = run_tokshard("train-tokenizer", "--source", two_sources, "--out", str(tmp_path / "t"), "--vocab-size",
                       "600", "--sample-bytes", "400000", "--balance-by", "language", "--balance-alpha", "0.5",
                       "--workers", "2").stdout
    assert "balanced by 'language', alpha 0.5" in out and "\n  en " in out
    assert "  balanced by 'language', alpha 0.5" in run_tokshard("inspect", str(tmp_path / "t")).stdout
    bad = run_tokshard("train-tokenizer", "--source", two_sources, "--out", str(tmp_path / "u"),
                       "--balance-weights", "en=2", check=False)
    assert bad.returncode != 0 and "need --balance-by" in bad.stderr
    bad = run_tokshard("train-tokenizer", "--source", two_sources, "--out", str(tmp_path / "u"),
                       "--balance-by", "language", "--balance-weights", "en:2", check=False)
    assert bad.returncode != 0 and "GROUP=WEIGHT" in bad.stderr
