"""`tokshard eval-tokenizer`: every number of the report on a case small enough to count by hand, ours vs the
same vocabulary as a plain tokenizer.json, the CLI on the bundled sample, the vocabulary sweep, the errors."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import matplotlib.image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from tokshard.pipeline import cli, eval_report, evaluate, jobs
from tokshard.pipeline.tokenizer import PATTERNS, Tokenizer
from tokshard.pipeline.tokenizer_adapters import char_byte_offsets

# Two "languages" of parallel text (same key = same content) plus an unpaired reference document.
ROWS = [  # text, lang, key
    ("abc abc abc", "en", "k1"),
    ("zzzzz a", "xx", "k1"),
    ("é1", "en", "k2"),
    ("b-c", "xx", "k2"),
    ("ab", "en", "k3"),
]


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hand")
    pq.write_table(pa.table({"text": [r[0] for r in ROWS], "lang": [r[1] for r in ROWS],
                             "key": [r[2] for r in ROWS], "id": [f"d{i}" for i in range(len(ROWS))]}),
                   d / "parallel.parquet")
    # Ours: the 256 bytes plus "ab", "abc" and "é", GPT-2's split pattern.
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257, "é".encode(): 258}
    Tokenizer.from_ranks(ranks, PATTERNS["gpt2"], "gpt2").save(d / "ours")
    # SentencePiece-like: Metaspace ("▁" = space, prepended), BPE with byte fallback, <unk> special.
    vocab = {"<unk>": 0, "<0x2D>": 1, "▁": 2, "a": 3, "b": 4, "c": 5, "z": 6, "1": 7, "é": 8, "ab": 9, "abc": 10,
             "▁abc": 11, "zz": 12}
    sp = HFTokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("ab", "c"), ("▁", "abc"), ("z", "z")],
                                byte_fallback=True, unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Metaspace()
    sp.add_special_tokens(["<unk>"])
    sp.save(str(d / "sp.json"))
    # Word-level over whitespace/punctuation splits: byte lengths only from offsets; "zzzzz" is [UNK].
    wl = HFTokenizer(models.WordLevel(vocab={"[UNK]": 0, "abc": 1, "a": 2, "é1": 3, "b": 4, "-": 5, "c": 6, "ab": 7},
                                      unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.add_special_tokens(["[UNK]"])
    wl.save(str(d / "wordlevel.json"))
    return {"dir": d, "parquet": d / "parallel.parquet", "ours": d / "ours", "sp": d / "sp.json",
            "wl": d / "wordlevel.json"}


def _by_name(report: dict) -> dict[str, dict]:
    return {t["name"]: t for t in report["tokenizers"]}


def test_hand_checked_numbers(hand, tmp_path):
    report = evaluate.run([str(hand["ours"]), str(hand["sp"]), str(hand["wl"])], tmp_path / "r",
                          source=str(hand["parquet"]), group_by="lang", parallel_key="key", reference="en",
                          repeats=1)
    t = _by_name(report)
    assert set(t) == {"ours", "sp", "wordlevel"}
    src = report["source"]
    assert (src["documents"], src["text_bytes"], src["words"]) == (5, 26, 9)

    # Ours. Tokens: [abc][ ][abc][ ][abc] | z z z z z [ ] [a] | [é][1] | [b][-][c] | [ab]  = 5+7+2+3+1 = 18.
    # Words: abc abc abc zzzzz a é1 b c ab; tokens over them 1+1+1+5+1+2+1+1+1 = 14, one word (zzzzz) has >= 3.
    ours = t["ours"]
    assert ours["vocab_size"] == 259 and ours["vocab_size_total"] == 259 + 8
    assert ours["token_bytes_method"] == "tokshard token_bytes"
    assert ours["mean_token_bytes_vocab"] == round((256 + 2 + 3 + 2) / 259, 6)
    assert ours["overall"] == {"documents": 5, "text_bytes": 26, "tokens": 18, "words": 9,
                               "bytes_per_token": round(26 / 18, 6), "tokens_per_word": round(14 / 9, 6),
                               "words_3plus_fraction": round(1 / 9, 6), "vocab_used": 10,
                               "vocab_used_fraction": round(10 / 259, 6), "mean_token_bytes_text": round(26 / 18, 6)}
    en, xx = ours["groups"]["en"], ours["groups"]["xx"]
    assert (en["text_bytes"], en["tokens"], en["bytes_per_token"], en["tokens_per_word"], en["vocab_used"]) == \
        (16, 8, 2.0, 1.2, 5)  # abc, " ", é, 1, ab
    assert (xx["text_bytes"], xx["tokens"], xx["bytes_per_token"], xx["tokens_per_word"], xx["words_3plus_fraction"],
            xx["vocab_used"]) == (10, 10, 1.0, 2.0, 0.25, 6)  # z, " ", a, b, -, c
    # Premium over the keys both groups have (k1, k2): xx 7+3 tokens / en 5+2 tokens.
    assert ours["premium"]["xx"] == {"premium": round(10 / 7, 6), "keys": 2, "tokens": 10, "reference_tokens": 7}
    assert ours["premium"]["en"] == {"premium": 1.0, "keys": 3, "tokens": 8, "reference_tokens": 8}
    assert report["parallel"] == {"reference": "en", "groups": {"en": {"keys": 3, "bytes_ratio": 1.0},
                                                                "xx": {"keys": 2, "bytes_ratio": round(10 / 14, 6)}}}

    # SentencePiece-like. Tokens: [▁abc]x3 | ▁ zz zz z ▁ a | ▁ é 1 | ▁ b <0x2D> c | ▁ ab = 3+6+3+4+2 = 18.
    # The prefix ▁ (which HF aligns with the first character) is whitespace: it counts for no word, so the words
    # take 1+1+1+3+1+2+1+1+1 = 12 tokens. Token bytes (▁ = 1, <0x2D> = 1): 12+8+4+4+3 = 31.
    sp = t["sp"]
    assert (sp["token_bytes_method"], sp["vocab_size"], sp["vocab_size_total"]) == ("metaspace", 12, 13)
    assert sp["mean_token_bytes_vocab"] == round(20 / 12, 6)  # 1+1+1+1+1+1+1+2+2+3+4+2
    assert sp["overall"] | {"vocab_used": None} == {
        "documents": 5, "text_bytes": 26, "tokens": 18, "words": 9, "bytes_per_token": round(26 / 18, 6),
        "tokens_per_word": round(12 / 9, 6), "words_3plus_fraction": round(1 / 9, 6), "vocab_used": None,
        "vocab_used_fraction": round(11 / 12, 6), "mean_token_bytes_text": round(31 / 18, 6)}
    assert sp["groups"]["xx"]["tokens_per_word"] == 1.5  # zzzzz 3, a 1, b 1, c 1
    assert sp["premium"]["xx"]["premium"] == round(10 / 6, 6)
    summary = report["premium_summary"]["tokenizers"]["sp"]  # one group besides the reference: worst = mean
    assert summary["worst_premium"] == summary["mean_premium"] == round(10 / 6, 6) and summary["worst_group"] == "xx"

    # Word-level: abc abc abc | [UNK] a | é1 | b - c | ab = 10 tokens, each word one token; byte lengths from the
    # offsets of the entries seen: abc 3, a 1, é1 3, b 1, - 1, c 1, ab 2 (the [UNK] span of 5 is special).
    wl = t["wordlevel"]
    assert wl["token_bytes_method"] == "offsets"
    assert (wl["overall"]["tokens"], wl["overall"]["tokens_per_word"], wl["overall"]["words_3plus_fraction"]) == \
        (10, 1.0, 0.0)
    assert (wl["overall"]["vocab_used"], wl["overall"]["vocab_used_fraction"]) == (7, 1.0)
    assert (wl["mean_token_bytes_vocab"], wl["mean_token_bytes_vocab_entries"]) == (round(12 / 7, 6), 7)
    assert wl["overall"]["mean_token_bytes_text"] == 2.3  # (9 + 5+1 + 3 + 3 + 2) / 10

    assert ours["kind"] == "tokshard" and any(e in ours["engine"] for e in ("gigatoken", "fastokens"))
    assert sp["kind"] == "tokenizer.json" and sp["engine"].startswith("HF tokenizers")
    assert all(x["throughput"]["mb_per_cpu_s"] > 0 and x["throughput"]["bytes"] == 26 for x in t.values())
    assert report["plots"] == ["bytes_per_token.png", "premium.png", "premium_tradeoff.png"]
    for name in report["plots"]:
        assert matplotlib.image.imread(tmp_path / "r" / name).ndim == 3


def test_ours_and_its_tokenizer_json_agree(hand, small_tokenizer_dir, tmp_path):
    """The same vocabulary through our engine and through HF (offsets) gives the same numbers; multilingual text
    (CJK, accents) exercises the char -> byte offset conversion."""
    report = evaluate.run([str(small_tokenizer_dir), str(small_tokenizer_dir / "tokenizer.json")], tmp_path / "r",
                          group_by="language", limit_docs=400, repeats=1)
    ours, hf = report["tokenizers"]
    assert (ours["kind"], hf["kind"], hf["token_bytes_method"]) == ("tokshard", "tokenizer.json", "byte-level")
    assert ours["name"] != hf["name"]
    assert set(report["groups"]) == {"de", "en", "fr", "ja", "zh"}
    for key in ("overall", "groups", "vocab_size", "vocab_size_total", "mean_token_bytes_vocab", "sha256"):
        assert ours[key] == hf[key], key
    assert ours["overall"]["words_3plus_fraction"] > 0 and ours["overall"]["tokens"] > 10_000


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_cli_on_the_bundled_sample(hand, small_tokenizer_dir, tmp_path):
    out = tmp_path / "report"
    argv = ["eval-tokenizer", str(small_tokenizer_dir), str(hand["sp"]), "--out", str(out), "--group-by", "url",
            "--group-regex", r"^deb://([a-z]+)", "--limit-docs", "300", "--repeats", "1"]
    code, stdout, stderr = _cli([*argv, "--json"])
    assert code == 0, stderr
    report = json.loads(stdout)
    assert json.loads((out / "report.json").read_text()) == report
    assert report["format"] == eval_report.FORMAT and set(report["definitions"]) >= {"bytes_per_token", "premium"}
    assert report["source"]["documents"] == 300 and report["source"]["group_by"] == "url"
    assert set(report["groups"]) == {"debian", "fortunes", "gnu"}  # debian-reference-*, debian-policy -> "debian"
    for t in report["tokenizers"]:
        assert set(t) >= {"name", "path", "sha256", "kind", "vocab_size", "token_bytes_method", "engine",
                          "mean_token_bytes_vocab", "overall", "groups", "throughput"}
        assert sum(g["tokens"] for g in t["groups"].values()) == t["overall"]["tokens"]
        assert "premium" not in t
    assert report["plots"] == ["bytes_per_token.png"] and not (out / "premium.png").exists()
    png = (out / "bytes_per_token.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and matplotlib.image.imread(out / "bytes_per_token.png").shape[0] > 100

    # The human summary; the same settings again refresh the report; other settings are refused unless --force.
    code, stdout, _ = _cli(argv)
    assert code == 0 and "bytes/token by url" in stdout and str(out / "report.json") in stdout
    code, _, stderr = _cli([*argv, "--limit-docs", "50"])
    assert code == 2 and "limit_docs differ" in stderr and "--force" in stderr
    code, _, _ = _cli([*argv, "--limit-docs", "50", "--force"])
    assert code == 0 and json.loads((out / "report.json").read_text())["source"]["documents"] == 50


@pytest.mark.slow
def test_sweep(tmp_path, ray_cluster):
    out = tmp_path / "sweep"
    code, stdout, stderr = _cli(["eval-tokenizer", "--sweep", "512,1024", "--sample-bytes", "1000000", "--out",
                                 str(out), "--limit-docs", "300", "--repeats", "1", "--json"])
    assert code == 0, stderr
    report = json.loads(stdout)
    sweep = report["sweep"]
    assert [p["vocab_size"] for p in sweep["points"]] == [512, 1024]
    assert sweep["trained"] == "vocab-1024" and sweep["in_sample"] is True
    small, large = sweep["points"]
    assert large["bytes_per_token"] > small["bytes_per_token"]  # more merges, better compression
    assert large["tokens_per_word"] < small["tokens_per_word"]
    assert report["plots"] == ["bytes_per_token.png", "sweep.png"]
    assert matplotlib.image.imread(out / "sweep.png").ndim == 3
    # The smaller size is the larger one's first merges; that is exactly what training at that size gives.
    direct = jobs.train_tokenizer(None, tmp_path / "direct", vocab_size=512, sample_bytes=1_000_000)
    assert Tokenizer.load(direct.tokenizer_dir).ranks == Tokenizer.load(out / "tokenizers" / "vocab-512").ranks
    assert (sweep["sample_bytes"], sweep["sample_bytes_limit"]) == (direct.sample_bytes, 1_000_000)
    # A second run reuses the trained tokenizers.
    code, stdout, _ = _cli(["eval-tokenizer", "--sweep", "512,1024", "--sample-bytes", "1000000", "--out",
                            str(out), "--limit-docs", "300", "--repeats", "1", "--json"])
    assert code == 0 and json.loads(stdout)["sweep"]["reused"] is True


def test_sweep_size_out_of_reach(tmp_path, ray_cluster):
    code, _, stderr = _cli(["eval-tokenizer", "--sweep", "512,20000", "--sample-bytes", "30000", "--out",
                            str(tmp_path / "r"), "--limit-docs", "10"])
    assert code == 2
    assert "--sweep size 20,000 cannot be trained" in stderr and "-token vocabulary, not 20,000" in stderr
    assert "drop that --sweep size" in stderr and not (tmp_path / "r" / "report.json").exists()


def test_errors(hand, tmp_path):
    base = ["eval-tokenizer", str(hand["ours"]), "--source", str(hand["parquet"]), "--out", str(tmp_path / "r")]
    code, _, stderr = _cli([*base, "--group-by", "language"])
    assert code == 2 and str(hand["parquet"]) in stderr and "no column 'language'" in stderr
    assert "text, lang, key, id" in stderr
    code, _, stderr = _cli([*base, "--group-by", "lang", "--parallel-key", "key", "--reference", "fr"])
    assert code == 2 and "--reference 'fr'" in stderr and "groups: en, xx" in stderr
    code, _, stderr = _cli([*base, "--group-by", "lang", "--parallel-key", "nokey", "--reference", "en"])
    assert code == 2 and "no column 'nokey'" in stderr
    code, _, stderr = _cli([*base, "--parallel-key", "key"])
    assert code == 2 and "--parallel-key needs --group-by" in stderr
    code, _, stderr = _cli(["eval-tokenizer", str(hand["dir"]), "--out", str(tmp_path / "r")])
    assert code == 2 and "is not a tokenizer" in stderr
    code, _, stderr = _cli(["eval-tokenizer", str(hand["parquet"]), "--out", str(tmp_path / "r")])
    assert code == 2 and "not a tokenizer.json" in stderr
    (tmp_path / "other.json").write_text('{"hello": 1}')
    code, _, stderr = _cli(["eval-tokenizer", str(tmp_path / "other.json"), "--out", str(tmp_path / "r")])
    assert code == 2 and "not a tokenizer.json" in stderr
    code, _, stderr = _cli(["eval-tokenizer", "--out", str(tmp_path / "r")])
    assert code == 2 and "at least one tokenizer" in stderr
    code, _, stderr = _cli(["eval-tokenizer", "--sweep", "8k,lots", "--out", str(tmp_path / "r")])
    assert code == 2 and "'lots' is not a vocabulary size" in stderr
    assert not (tmp_path / "r" / "report.json").exists()


def test_char_byte_offsets_and_sizes():
    assert char_byte_offsets("aé中😀").tolist() == [0, 1, 3, 6, 10]
    assert evaluate.parse_sizes("16k, 8k,512,8k") == [512, 8192, 16384]
