"""Our encoder must give exactly tokenizer.json's ids (HF tokenizers is the reference) and round-trip any text."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rustbpe
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SHARED_CORPUS, hf_reference, sample_texts
from tokshard.pipeline import engines
from tokshard.pipeline.superbpe import STAGE2_PATTERNS
from tokshard.pipeline.tokenizer import (
    BOS,
    DEFAULT_PATTERN,
    PATTERNS,
    SPECIAL_TOKENS,
    Tokenizer,
    UnencodableError,
    bpe_merge,
    build_tokenizer_json,
    copy_tokenizer,
    load_cached,
    piece_aligned_chunks,
    resolve_pattern,
)


def train(texts: list[str], vocab: int, pattern_name: str) -> Tokenizer:
    _, regex = resolve_pattern(pattern_name)
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size=vocab - len(SPECIAL_TOKENS), pattern=regex)
    return Tokenizer.from_ranks(dict(bpe.get_mergeable_ranks()), regex, pattern_name)


# Every preset with every engine that can encode it (gigatoken only has the three it implements natively), plus
# a custom regex (fastokens after its load-time probe) and SuperBPE's stage-2 pattern.
_CUSTOM = r"""[\p{L}\p{M}]+|\p{N}|[^\s\p{L}\p{M}\p{N}]+|\s+"""
_ENGINE_CASES = [(p, "gigatoken") for p in sorted(engines.GIGATOKEN_SCHEMES)] + [
    (p, "fastokens") for p in sorted(PATTERNS)] + [("cl100k-d2", "tokenizers"), ("custom", "fastokens"),
                                                     ("superbpe-cl100k-d2", "fastokens")]


@pytest.fixture(scope="module", params=_ENGINE_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def pattern_tokenizer(request, tmp_path_factory):
    name, engine = request.param
    pattern = {"custom": _CUSTOM, "superbpe-cl100k-d2": STAGE2_PATTERNS["cl100k-d2"]}.get(name) or PATTERNS[name]
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(sample_texts(1500)), vocab_size=3000 - len(SPECIAL_TOKENS), pattern=pattern)
    d = tmp_path_factory.mktemp(f"tok-{name}")
    Tokenizer.from_ranks(dict(bpe.get_mergeable_ranks()), pattern, name).save(d)
    tok = Tokenizer.load(d)
    tok.use_engine(engine)
    assert tok.engine == engine
    return tok, hf_reference(d)


def test_every_pattern_matches_tokenizer_json_on_real_text(pattern_tokenizer):
    tok, hf = pattern_tokenizer
    texts = sample_texts()[1500:2500]
    ours = tok.encode_batch(texts)
    theirs = [e.ids for e in hf.encode_batch(texts)]
    mismatches = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not mismatches, f"{len(mismatches)} documents differ, first: {texts[mismatches[0]][:200]!r}"


@pytest.mark.slow
def test_real_corpus_identity_at_32k(tmp_path):
    """32k vocabulary trained on real text; every document of a 15 MB corpus file encodes like tokenizer.json."""
    if SHARED_CORPUS.is_dir():
        texts = pq.read_table(SHARED_CORPUS / "train-00000.parquet", columns=["text"]).column("text").to_pylist()
        train_texts = pq.read_table(SHARED_CORPUS / "train-00001.parquet", columns=["text"]).column("text")
        tok = train(train_texts.to_pylist()[:8000], 32768, "cl100k-d2")
    else:
        texts = sample_texts()
        tok = train(texts, 8192, "cl100k-d2")
    tok.save(tmp_path)
    hf = hf_reference(tmp_path)
    ours = tok.encode_batch(texts, bos=True)
    theirs = [e.ids for e in hf.encode_batch(texts)]
    assert sum(a != b for a, b in zip(ours, theirs, strict=True)) == 0
    assert sum(len(x) for x in ours) > 100_000


unicode_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]),  # lone surrogates cannot be UTF-8; their neighbours can
    max_size=300,
)
edge_chars = st.sampled_from(
    ["\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff", "😀", "👩‍👩‍👧", "中", "語", "\x00", "\x1f", "\r", "\n",
     "\t", " ", "\u00a0", "\u2028", "é", "e\u0301", "'", "1", "-", "a", "<|bos|>", "ſ", "İ"]
)
mixed_text = st.lists(st.one_of(edge_chars, unicode_text), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(unicode_text, mixed_text))
def test_arbitrary_unicode_matches_reference_and_round_trips(pattern_tokenizer, text):
    tok, hf = pattern_tokenizer
    ids = tok.encode(text)
    assert ids == hf.encode(text).ids
    assert tok.decode(ids[1:]) == text
    assert tok.decode_bytes(ids[1:]) == text.encode()


@settings(max_examples=60, deadline=None)
@given(char=st.one_of(st.sampled_from([" ", "-", "a", "=", "0", "\n", "é", "中", "😀", "ab", "\r\n", " a", "\t"]),
                      st.characters(blacklist_categories=["Cs"])),
       n=st.sampled_from([1, 200, 499, 500, 501, 701, 1000, 3000, 5000]))
def test_long_runs_of_one_character(pattern_tokenizer, char, n):
    """Runs around 500 bytes are where engines switch merge algorithms (riptoken, which this project used
    before, went wrong there); up to 5,000 characters, alone and inside a batch."""
    tok, hf = pattern_tokenizer
    text = f"x {char * n} y"
    ids = tok.encode(text)
    assert ids == hf.encode(text).ids
    assert tok.decode(ids[1:]) == text
    assert tok.encode_batch([text, "ok"])[0] == ids


@pytest.mark.slow
@pytest.mark.parametrize("run", [" ", "a", "-", "1", "\n", " \n", "ab "])
def test_million_character_runs(pattern_tokenizer, run):
    """A million characters of one class: one pre-split piece of a megabyte for most patterns. Every engine must
    give the reference's ids (tiktoken's regex engine overflowed its stack on the spaces)."""
    tok, hf = pattern_tokenizer
    text = "start " + run * (1_000_000 // len(run)) + " end"
    assert tok.encode_ordinary(text) == hf.encode(text, add_special_tokens=False).ids


def test_engine_choice(small_tokenizer, tmp_path):
    """The fastest exact engine per pattern: gigatoken where it has the pre-splitter, fastokens elsewhere, and HF
    tokenizers where fastokens' PCRE2 reads the regex differently from Oniguruma (`\\h`: horizontal space vs a hex
    digit), caught by the load-time probe (which needs merges: with bytes only, every split gives the same ids)."""
    ranks = small_tokenizer.ranks
    expected = {"cl100k": "gigatoken", "gpt2": "gigatoken", "o200k": "gigatoken", "cl100k-d2": "fastokens"}
    for name, engine in expected.items():
        assert Tokenizer.from_ranks(ranks, PATTERNS[name], name).engine == engine, name
    assert Tokenizer.from_ranks(ranks, STAGE2_PATTERNS["cl100k-d2"]).engine == "fastokens"
    assert Tokenizer.from_ranks(ranks, _CUSTOM).engine == "fastokens"
    onig_only = Tokenizer.from_ranks(ranks, r"\h+|\H")
    assert onig_only.engine == "tokenizers"
    onig_only.save(tmp_path)
    text = "deadbeef \t cafe"
    assert onig_only.encode_ordinary(text) == hf_reference(tmp_path).encode(text, add_special_tokens=False).ids
    with pytest.raises(ValueError, match="gigatoken has no exact pre-splitter"):
        Tokenizer.from_ranks(ranks, PATTERNS["cl100k-d2"]).use_engine("gigatoken")


def test_engine_can_be_forced_by_environment(monkeypatch):
    ranks = {bytes([b]): b for b in range(256)}
    monkeypatch.setenv(engines.ENGINE_ENV, "tokenizers")
    assert Tokenizer.from_ranks(ranks, PATTERNS["cl100k"], "cl100k").engine == "tokenizers"
    monkeypatch.setenv(engines.ENGINE_ENV, "nope")
    with pytest.raises(ValueError, match="unknown engine"):
        _ = Tokenizer.from_ranks(ranks, PATTERNS["cl100k"], "cl100k").engine


def test_repr_does_not_dump_the_vocabulary(small_tokenizer):
    text = repr(small_tokenizer)
    assert len(text) < 200 and "2,048" in text and DEFAULT_PATTERN in text
    assert str(small_tokenizer) == text


def test_one_merge_rule_for_tokenizer_json_and_superbpe(small_tokenizer):
    """`bpe_merge` is tiktoken's rule: merging a token's bytes with every lower rank ends in the token itself,
    and with only lower ranks in exactly the two halves tokenizer.json records as its merge."""
    tok = small_tokenizer
    id_to_token = [tok.id_bytes(i) for i in range(len(tok.ranks))]
    for token, rank in list(tok.ranks.items())[256:600]:
        byte_ids = [tok.ranks[token[i : i + 1]] for i in range(len(token))]
        assert bpe_merge(byte_ids, id_to_token, tok.ranks) == [rank]
        assert len(bpe_merge(byte_ids, id_to_token, tok.ranks, below=rank)) == 2
    assert tok.encode_ordinary("hello world") == [
        i for piece in ("hello", " world")
        for i in bpe_merge([tok.ranks[bytes([b])] for b in piece.encode()], id_to_token, tok.ranks)]


def test_engine_error_names_the_document(small_tokenizer):
    """A run beyond every regex engine's limits (PCRE2's match limit; HF tokenizers gives up too) is an error
    naming the row. (gigatoken, with no regex engine, encodes it.)"""
    tok = Tokenizer.from_ranks(small_tokenizer.ranks, PATTERNS["cl100k-d2"], "cl100k-d2")
    assert tok.engine == "fastokens"
    texts = ["fine", "x" + " " * 20_000_000 + "y", "also fine"]
    with pytest.raises(UnencodableError) as err:
        tok.encode_to_array(texts)
    assert err.value.index == 1 and "strip or drop that row" in err.value.reason


def test_special_token_text_is_plain_text(small_tokenizer):
    ids = small_tokenizer.encode("a <|bos|> b <|pad|>", bos=False)
    assert small_tokenizer.bos_id not in ids
    assert small_tokenizer.special_tokens["<|pad|>"] not in ids
    assert small_tokenizer.decode(ids) == "a <|bos|> b <|pad|>"


def test_directory_contents_and_token_bytes(small_tokenizer_dir, small_tokenizer):
    meta = json.loads((small_tokenizer_dir / "tokshard.json").read_text())
    assert meta["vocab_size"] == small_tokenizer.vocab_size == 2048
    assert meta["special_tokens"][BOS] == small_tokenizer.bos_id
    assert meta["pattern_name"] == DEFAULT_PATTERN
    assert meta["training"]["sample_documents"] > 100 and meta["training"]["sample_bytes"] > 100_000
    tb = np.load(small_tokenizer_dir / "token_bytes.npy")
    assert tb.shape == (2048,)
    for i in range(2048):
        expect = 0 if i in small_tokenizer.special_tokens.values() else len(small_tokenizer.id_bytes(i))
        assert tb[i] == expect
    assert all(tb[i] == 1 for i in range(256))  # the 256 byte tokens are always there
    assert {small_tokenizer.id_bytes(i) for i in range(256)} == {bytes([b]) for b in range(256)}


def test_changed_tokenizer_json_is_refused(small_tokenizer_dir, tmp_path):
    import shutil

    d = tmp_path / "tok"
    shutil.copytree(small_tokenizer_dir, d)
    spec = json.loads((d / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]
    (d / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="sha256"):
        Tokenizer.load(d)


@pytest.mark.slow
def test_uint32_when_vocabulary_exceeds_uint16(tmp_path):
    # 66,000 ids cannot be uint16; train on enough real text to reach that many merges.
    texts = sample_texts()
    tok = train(texts, 66_000, "gpt2")
    assert tok.vocab_size == 66_000, "the bundled sample should support a 66k vocabulary"
    assert tok.dtype == np.uint32
    tok.save(tmp_path)
    hf = hf_reference(tmp_path)
    some = texts[:200]
    assert tok.encode_batch(some) == [e.ids for e in hf.encode_batch(some)]
    assert max(max(ids) for ids in tok.encode_batch(texts[:2000])) > 65535


def test_build_rejects_vocabulary_without_all_bytes():
    with pytest.raises(ValueError, match="256 single bytes"):
        build_tokenizer_json({b"a": 0, b"b": 1}, PATTERNS["gpt2"], SPECIAL_TOKENS)


def test_out_of_range_id_is_a_clear_error(small_tokenizer):
    with pytest.raises(ValueError, match="out of range"):
        small_tokenizer.decode([small_tokenizer.vocab_size])


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.one_of(mixed_text, st.sampled_from(["a b", "a\nb", "a \nb", "-\n/", "x\n\ny", " \n "])),
                      max_size=30),
       chunk_chars=st.integers(1, 40))
def test_piece_aligned_chunks_encode_like_the_whole(pattern_tokenizer, parts, chunk_chars):
    """Long documents are encoded chunk by chunk; the cut points must never change the ids (every preset)."""
    tok, hf = pattern_tokenizer
    if tok.preset is None:
        pytest.skip("long documents are cut into chunks only for the preset patterns")
    text = "".join(parts)
    chunks = list(piece_aligned_chunks(text, chunk_chars))
    assert "".join(chunks) == text
    ids = [i for c in chunks for i in tok.encode_ordinary(c)]
    assert ids == hf.encode(text, add_special_tokens=False).ids


def test_long_documents_go_through_chunks_with_the_same_ids(small_tokenizer, monkeypatch):
    import tokshard.pipeline.tokenizer as tokenizer_module

    texts = sample_texts(40)
    long_doc = "\n".join(texts[:30])
    batch = [texts[30], long_doc, "", long_doc[:5000], texts[31]]
    expected = small_tokenizer.encode_batch(batch)
    monkeypatch.setattr(tokenizer_module, "LONG_DOC_CHARS", 4000)
    monkeypatch.setattr(tokenizer_module, "CHUNK_CHARS", 1000)
    assert len(list(piece_aligned_chunks(long_doc))) > 10
    flat, offsets = small_tokenizer.encode_to_array(batch)
    assert [flat[a:b].tolist() for a, b in itertools.pairwise(offsets)] == expected


def test_load_cached_shares_one_tokenizer_across_directories_and_checks_the_file(small_tokenizer_dir, tmp_path):
    """Each run copies its tokenizer into its OUTDIR; a warm worker must not parse it again per run, and must
    never serve a directory whose tokenizer.json differs from the sha256 it was asked for."""
    sha = Tokenizer.load(small_tokenizer_dir).sha256
    copy_tokenizer(small_tokenizer_dir, tmp_path / "run-a")
    copy_tokenizer(small_tokenizer_dir, tmp_path / "run-b")
    first = load_cached(str(tmp_path / "run-a"), sha)
    assert load_cached(str(tmp_path / "run-b"), sha) is first
    assert first.encode_ordinary("cached across runs") == Tokenizer.load(small_tokenizer_dir).encode_ordinary(
        "cached across runs")
    changed = tmp_path / "run-b" / "tokenizer.json"
    changed.write_text(changed.read_text().replace('"<|bos|>"', '"<|BOS|>"'))
    with pytest.raises(ValueError, match=f"has sha256 [0-9a-f]{{64}}, expected {sha}"):
        load_cached(str(tmp_path / "run-b"), sha)


def test_gigatoken_cache_bound_rebuilds_the_engine_with_the_same_ids(monkeypatch):
    """gigatoken's piece cache never evicts; past the memory bound the engine is rebuilt (here: at every check)
    and must keep giving the same ids."""
    texts = sample_texts(300)
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size=2000 - len(SPECIAL_TOKENS), pattern=PATTERNS["cl100k"])
    tok = Tokenizer.from_ranks(dict(bpe.get_mergeable_ranks()), PATTERNS["cl100k"], "cl100k")
    expected = tok.encode_batch(texts)
    monkeypatch.setattr(engines, "GIGATOKEN_CHECK_CHARS", 1)
    monkeypatch.setattr(engines, "GIGATOKEN_CACHE_MAX_BYTES", -1)
    fresh = Tokenizer.from_ranks(tok.ranks, tok.pattern, "cl100k")
    assert [ids for i in range(0, 300, 50) for ids in fresh.encode_batch(texts[i : i + 50])] == expected
    assert fresh.engine == "gigatoken" and fresh._engine.rebuilds == 6
