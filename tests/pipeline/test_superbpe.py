"""SuperBPE (pipeline/superbpe.py): the stage-2 regex splits alike in every engine, the trainer counts exactly the
segmentation the encoder produces, the saved tokenizer.json encodes like our engine on real text and arbitrary
Unicode, and it needs fewer tokens than ordinary BPE of the same size on held-out English."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import regex
import rustbpe
import tiktoken
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SHARED_CORPUS, hf_reference
from tokshard.pipeline import cli, jobs, sources, superbpe
from tokshard.pipeline.tokenizer import PATTERNS, SPECIAL_TOKENS, Tokenizer, resolve_pattern

# Total sizes, special tokens included. The saving grows with the vocabulary (measured on the held-out English of
# the bundled sample: 2.1% fewer tokens at 1,024/768, 4.2% at 2,048/1,792, 6.9% at 4,096/3,584).
VOCAB, TRANSITION = 2048, 1792
ENGLISH = ("deb://debian-reference-en/", "deb://debian-policy/", "deb://gnu-standards/", "deb://fortunes")


def _sample() -> tuple[list[str], list[str]]:
    """The bundled sample: the first 900 documents to train on, the held-out English rest to measure."""
    rows = pq.read_table(sources.bundled_sample(), columns=["text", "url"]).to_pylist()
    train = [r["text"] for r in rows[:900]]
    held_out = [r["text"] for r in rows[900:] if r["url"].startswith(ENGLISH)]
    return train, held_out


def _ordinary(texts: list[str], vocab: int, pattern: str = "cl100k-d2") -> dict[bytes, int]:
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size=vocab - len(SPECIAL_TOKENS), pattern=PATTERNS[pattern])
    return dict(bpe.get_mergeable_ranks())



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Ordinary BPE at VOCAB and SuperBPE at VOCAB with transition TRANSITION, trained on the same text."""
    train, held_out = _sample()
    stage1 = _ordinary(train, TRANSITION)
    pattern = superbpe.stage2_pattern("cl100k-d2")
    ranks, stats = superbpe.train_stage2(train, stage1, pattern, VOCAB - len(SPECIAL_TOKENS))
    d = tmp_path_factory.mktemp("superbpe")
    Tokenizer.from_ranks(ranks, pattern, "superbpe-cl100k-d2").save(d)
    ordinary = Tokenizer.from_ranks(_ordinary(train, VOCAB), PATTERNS["cl100k-d2"], "cl100k-d2")
    return {"train": train, "held_out": held_out, "stage1": stage1, "ranks": ranks, "stats": stats,
            "tok": Tokenizer.load(d), "hf": hf_reference(d), "ordinary": ordinary}


# Unassigned code points (Cn in Python's Unicode tables) are left out: the `regex` module follows a newer Unicode than
# HF's Oniguruma, so a character assigned since (e.g. U+12550, a letter to `regex`, unassigned to Oniguruma) splits
# differently in the two. The encoders themselves are checked against HF on such text in test_tokenizer.
unicode_text = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cn"]), max_size=300)
edge = st.sampled_from(["the", " of", " the", ", and", ". ", "? ", ": ", "; ", "!", " ", "  ", "\t", "\n", "\r\n",
                        "\n\n", "1", "2025", "3.5", "e.g.", "U.S.", "don't", "中文", "日本語", "é", "e\u0301", "😀",
                        "\u00a0", "\u2028", "\u3000", "\x1f", "\x00", "-", "...", "<|bos|>", "İ", "ſ"])
long_runs = st.builds(lambda s, n: s * n, edge, st.integers(1, 300))
mixed_text = st.lists(st.one_of(edge, unicode_text, long_runs), max_size=40).map("".join)


@pytest.mark.parametrize("name", sorted(superbpe.STAGE2_PATTERNS))
def test_stage2_pieces_follow_the_design(name):
    """Words join across spaces and commas; sentences, digits and lines stay apart (one regex, all presets)."""
    pattern = superbpe.stage2_pattern(name)
    pieces = regex.findall(pattern, "By the way, I am a fan of the Milky Way. It is 2025!  Yes: no\nSee e.g. this.\n")
    assert "By the way, I am a fan of the Milky Way." in pieces
    assert " It is" in pieces and "!" in pieces and "  Yes:" in pieces
    assert " no\n" in pieces and "See e.g." in pieces and " this.\n" in pieces
    assert not any(c.isdigit() for p in pieces for c in p if not p.strip().isdigit())


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(unicode_text, mixed_text))
def test_stage2_regex_splits_alike_in_oniguruma_and_regex(text):
    """HF tokenizers (Oniguruma) and `regex` cut the same pieces, and no piece crosses a sentence end, a digit
    boundary or a line (tiktoken's fancy-regex is checked through whole encodings below)."""
    for pattern in superbpe.STAGE2_PATTERNS.values():
        ours = regex.findall(pattern, text)
        split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), "isolated")
        assert ours == [p for p, _ in split.pre_tokenize_str(text)]
        assert "".join(ours) == text
    for piece in regex.findall(superbpe.stage2_pattern("cl100k-d2"), text):
        assert not regex.search(r"[.!?;:][^\S\r\n]", piece), piece
        assert not piece.strip() or not regex.search(r"[\r\n]", piece.rstrip("\r\n")), piece
        assert not regex.search(r"\p{N}", piece) or regex.fullmatch(r"\p{N}{1,2}", piece), piece


@pytest.mark.slow
def test_trainer_counts_what_the_encoder_produces(trained):
    """Every training piece's final segmentation in the trainer is tiktoken's with the final ranks, so the pair
    counts it merged by were the encoder's; and the ranks start with ordinary BPE up to the transition."""
    ranks, stage1 = trained["ranks"], trained["stage1"]
    assert len(ranks) == VOCAB - len(SPECIAL_TOKENS) and trained["stats"]["skipped_existing"] == 0
    assert {t: r for t, r in ranks.items() if r < len(stage1)} == stage1
    pattern = superbpe.stage2_pattern("cl100k-d2")
    state = superbpe._Stage2(stage1, superbpe.MAX_WORDS)
    pieces = superbpe.split_pieces(trained["train"][:300], pattern)
    enc1 = tiktoken.Encoding("s1", pat_str=pattern, mergeable_ranks=stage1, special_tokens={})
    for piece, freq in pieces.items():
        state.add_word(enc1._encode_single_piece(piece.encode()), freq)
    inverse = {r: t for t, r in ranks.items()}
    for r in range(len(stage1), len(ranks)):
        data = inverse[r]
        splits = [(state.rank.get(data[:k]), state.rank.get(data[k:])) for k in range(1, len(data))]
        pair = next(p for p in splits if None not in p)
        state.merge(pair)
    final = tiktoken.Encoding("s2", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    for (piece, _), ids in zip(pieces.items(), state.words, strict=True):
        assert ids == final._encode_single_piece(piece.encode()), piece
    assert state.token == [inverse[r] for r in range(len(ranks))]


@pytest.mark.slow
def test_superwords_are_learned_and_capped(trained):
    ranks, stage1 = trained["ranks"], trained["stage1"]
    stage2 = [t for t, r in ranks.items() if r >= len(stage1)]
    assert max(len(t.split()) for t in stage2) <= superbpe.MAX_WORDS
    # Stage 2 learns subwords too (the transition here is small); words joined across a space are the new kind.
    superwords = [t for t in stage2 if regex.search(rb"\S[ \t]+\S", t)]
    assert len(superwords) >= 10 and {b" of the", b" in the", b", and"} <= set(superwords), superwords


_RETRAIN = """
import hashlib, pickle, sys
from tokshard.pipeline import superbpe
texts, stage1, n = pickle.load(open(sys.argv[1], "rb"))
ranks, _ = superbpe.train_stage2(texts, stage1, superbpe.stage2_pattern("cl100k-d2"), n)
print(hashlib.sha256(pickle.dumps(sorted(ranks.items(), key=lambda kv: kv[1]))).hexdigest())
"""


@pytest.mark.slow
def test_training_is_deterministic_across_processes(trained, tmp_path):
    """Same text, same ranks, whatever the process's hash seed (bytes and str hashes are randomised per process)."""
    import pickle
    import subprocess
    import sys

    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps((trained["train"][:300], trained["stage1"], TRANSITION + 128)))
    digests = {subprocess.run([sys.executable, "-c", _RETRAIN, str(args)], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(digests) == 1 and len(digests.pop().strip()) == 64


@pytest.mark.slow
def test_matches_tokenizer_json_on_real_text(trained):
    tok, hf = trained["tok"], trained["hf"]
    texts = trained["held_out"] + trained["train"][:200]
    if SHARED_CORPUS.is_dir():
        texts += pq.read_table(SHARED_CORPUS / "val-00000.parquet", columns=["text"]).column("text").to_pylist()[:600]
    ours = tok.encode_batch(texts)
    theirs = [e.ids for e in hf.encode_batch(texts)]
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not bad, f"{len(bad)} documents differ, first: {texts[bad[0]][:200]!r}"
    assert tok.engine == "fastokens"  # stage-2 pieces span words: no preset pre-splitter (gigatoken) fits them


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(text=st.one_of(unicode_text, mixed_text))
def test_arbitrary_unicode_matches_reference_and_round_trips(trained, text):
    tok, hf = trained["tok"], trained["hf"]
    ids = tok.encode(text)
    assert ids == hf.encode(text).ids
    assert tok.decode(ids[1:]) == text
    assert tok.decode_bytes(ids[1:]) == text.encode()


@pytest.mark.slow
def test_fewer_tokens_than_ordinary_bpe_on_held_out_english(trained):
    held_out = trained["held_out"]
    assert sum(len(t) for t in held_out) > 200_000
    ordinary = sum(map(len, trained["ordinary"].encode_batch(held_out, bos=False)))
    ours = sum(map(len, trained["tok"].encode_batch(held_out, bos=False)))
    assert ours < 0.98 * ordinary, f"SuperBPE {ours:,} tokens vs ordinary {ordinary:,}"


@pytest.mark.slow
def test_train_tokenizer_job_records_superbpe_and_reuse_tells_transitions_apart(tmp_path, ray_cluster):
    vocab, transition = 1024, 768  # smaller than the module's: this one runs the real Ray job
    out, source = tmp_path / "tok", str(sources.bundled_sample())
    settings_ = {"vocab_size": vocab, "sample_bytes": 1_500_000, "pattern": "cl100k-d2", "seed": 0,
                 "text_column": "text", "id_column": "id"}
    assert cli.main(["train-tokenizer", "--source", source, "--out", str(out), "--vocab-size", str(vocab),
                     "--sample-bytes", "1500000", "--superbpe-transition", str(transition),
                     "--pattern", "cl100k-d2"]) == 0
    meta = json.loads((out / "tokshard.json").read_text())
    record = meta["training"]["superbpe"]
    assert record["transition"] == transition and record["stage1_merges"] == transition - len(SPECIAL_TOKENS) - 256
    assert record["stage2_merges"] == vocab - transition and record["skipped_existing"] == 0
    assert record["stage2_documents"] == meta["training"]["sample_documents"]  # stage 2 sees stage 1's sample
    assert record["stage1_pattern"] == resolve_pattern("cl100k-d2")[1]
    assert record["stage2_pattern"] == meta["pattern"] == superbpe.stage2_pattern("cl100k-d2")
    assert meta["pattern_name"] == "superbpe-cl100k-d2" and meta["vocab_size"] == vocab
    assert jobs.reusable_tokenizer(out, source, superbpe_transition=transition, **settings_) is not None
    assert jobs.reusable_tokenizer(out, source, superbpe_transition=transition + 64, **settings_) is None
    assert jobs.reusable_tokenizer(out, source, **settings_) is None
    with pytest.raises(ValueError, match="superbpe-transition"):
        jobs.train_tokenizer(None, tmp_path / "bad", superbpe_transition=vocab, **settings_)
    with pytest.raises(ValueError, match="preset"):
        jobs.train_tokenizer(None, tmp_path / "bad", superbpe_transition=transition,
                             **{**settings_, "pattern": r"\S+|\s+"})


def test_stage2_subset_is_evenly_spaced_and_bounded() -> None:
    texts = [f"doc {i:04d} " + "x" * 90 for i in range(1000)]  # 100 bytes each, 100,000 in all
    assert superbpe.stage2_subset(texts, max_bytes=100_000) is texts
    subset = superbpe.stage2_subset(texts, max_bytes=25_000)
    assert subset == texts[::4]  # every 4th: spans the sample from first to last file, not just its start
    assert sum(map(len, subset)) <= 25_000
    assert superbpe.stage2_subset(texts, max_bytes=25_000) == subset  # deterministic


def test_sharded_stage2_gives_the_single_process_merges(trained):
    """Pieces are independent: splitting them over shards changes nothing, merge for merge."""
    texts, stage1 = trained["train"][:400], trained["stage1"]
    pattern, n = superbpe.stage2_pattern("cl100k-d2"), TRANSITION + 192
    one, stats_one = superbpe.train_stage2(texts, stage1, pattern, n)
    three, stats_three = superbpe.train_stage2(texts, stage1, pattern, n, shards=3)
    assert one == three and len(one) == n and stats_three["shards"] == 3
    assert stats_three["pieces_trained"] >= stats_one["pieces_trained"]  # a piece may be in two shards


def test_ray_stage2_matches_in_process_on_the_limited_refs(trained, ray_cluster, capsys):
    """The job's path: actors read the sample's refs, only the documents stage 1 used (limits), same merges; its
    progress (a bar when asked) counts every merge."""
    import ray

    texts, stage1 = trained["train"][:400], trained["stage1"]
    pattern, n = superbpe.stage2_pattern("cl100k-d2"), TRANSITION + 128
    chunks = [texts[i : i + 50] for i in range(0, len(texts), 50)]
    limits = [50] * (len(chunks) - 2) + [20, 0]  # stage 1 stopped inside the second to last chunk
    used = [t for chunk, k in zip(chunks, limits, strict=True) for t in chunk[:k]]
    refs = [ray.put(c) for c in chunks]
    capsys.readouterr()
    ranks, stats = superbpe.train_stage2_ray(refs, limits, stage1, pattern, n, shards=2, show_progress=True)
    progress = capsys.readouterr().err
    assert "superbpe stage 2: splitting and counting" in progress and f"{n - len(stage1)}/{n - len(stage1)}" in progress
    assert ranks == superbpe.train_stage2(used, stage1, pattern, n)[0]
    few = len(stage1) + 4  # quiet: the same merges, not a character on stderr (4 merges keep the test short)
    quiet = superbpe.train_stage2_ray(refs, limits, stage1, pattern, few, shards=2, show_progress=False)[0]
    assert quiet == {t: r for t, r in ranks.items() if r < few} and capsys.readouterr().err == ""
    assert stats["stage2_documents"] == len(used) and stats["shards"] == 2 and stats["skipped_existing"] == 0
    assert len(stats["shard_cpu_seconds"]) == 2 and all(c > 0 for c in stats["shard_cpu_seconds"])
