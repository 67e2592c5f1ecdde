"""Our encoder must give exactly tokenizer.json's ids (HF tokenizers is the reference) and round-trip any text."""

from __future__ import annotations

import functools
import itertools
import json
import operator

import numpy as np
import pyarrow.parquet as pq
import pytest
import regex
import rustbpe
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SHARED_CORPUS, hf_reference, sample_texts
from tokshard.pipeline.tokenizer import (
    _GUARD_TABLE,
    BOS,
    GUARD_BLOCK,
    GUARD_CATCHES_FROM,
    GUARD_RUN_BLOCKS,
    GUARD_SCREEN_MAX_BYTES,
    PATTERNS,
    RIPTOKEN_EXACT_BELOW,
    SPECIAL_TOKENS,
    Tokenizer,
    build_tokenizer_json,
    load_cached,
    piece_aligned_chunks,
    resolve_pattern,
    utf8_buffer,
)


def train(texts: list[str], vocab: int, pattern_name: str) -> Tokenizer:
    _, regex = resolve_pattern(pattern_name)
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size=vocab - len(SPECIAL_TOKENS), pattern=regex)
    return Tokenizer.from_ranks(dict(bpe.get_mergeable_ranks()), regex, pattern_name)


@pytest.fixture(scope="module", params=sorted(PATTERNS))
def pattern_tokenizer(request, tmp_path_factory):
    tok = train(sample_texts(1500), 3000, request.param)
    d = tmp_path_factory.mktemp(f"tok-{request.param}")
    tok.save(d)
    return Tokenizer.load(d), hf_reference(d)


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
@given(char=st.one_of(st.sampled_from([" ", "-", "a", "=", "0", "\n", "é", "中", "😀", "ab", "\r\n", " a"]),
                      st.characters(blacklist_categories=["Cs"])),
       n=st.sampled_from([GUARD_CATCHES_FROM - 8, GUARD_CATCHES_FROM, 200, 499, 500, 501, 701, 1000, 3000]))
def test_long_runs_of_one_character(pattern_tokenizer, char, n):
    tok, hf = pattern_tokenizer
    text = f"x {char * n} y"
    ids = tok.encode(text)
    assert ids == hf.encode(text).ids
    assert tok.decode(ids[1:]) == text
    assert tok.encode_batch([text, "ok"])[0] == ids


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.one_of(mixed_text, st.builds(lambda c, n: c * n, edge_chars, st.integers(1, 400))),
                      max_size=8))
def test_guard_flags_every_document_with_a_long_piece(pattern_tokenizer, parts):
    """Soundness of the riptoken guard: any pre-split piece of >= GUARD_CATCHES_FROM bytes is flagged."""
    tok, _ = pattern_tokenizer
    text = "".join(parts)
    if tok.engine != "riptoken":
        return
    longest = max((len(p.encode()) for p in regex.findall(tok.pattern, text)), default=0)
    flagged = bool(tok.exact_needed(*utf8_buffer([text]))[0])
    if longest >= GUARD_CATCHES_FROM:
        assert flagged, f"a {longest}-byte piece was not flagged"
    assert GUARD_CATCHES_FROM < RIPTOKEN_EXACT_BELOW


@pytest.mark.parametrize("run", ["a", "0", "-", " ", "\n", "é", "中", "😀", "\u3000", "-\n"])
def test_guard_catches_long_pieces_at_every_alignment(pattern_tokenizer, run):
    """Every alignment of a just-long-enough piece inside a batch is flagged, and only that document."""
    tok, _ = pattern_tokenizer
    if tok.engine != "riptoken":
        return
    reps = -(-GUARD_CATCHES_FROM // len(run.encode()))
    docs = []
    for shift in range(70):  # a block and then some: every position of the run relative to the guard's blocks
        docs += ["word. " * 3 + "x" * shift + "; " + run * reps + " ok", "Short, ordinary text."]
    flagged = tok.exact_needed(*utf8_buffer(docs))
    for doc, hit in zip(docs[::2], flagged[::2], strict=True):
        longest = max(len(p.encode()) for p in regex.findall(tok.pattern, doc))
        assert hit or longest < GUARD_CATCHES_FROM, f"a {longest}-byte piece was not flagged"
    assert not flagged[1::2].any(), "a short neighbour of a long run was flagged"


def test_riptoken_divergence_is_still_where_we_measured_it(pattern_tokenizer):
    """Canary for the guard's premise: riptoken is exact below 500-byte pieces and not always above."""
    tok, _ = pattern_tokenizer
    if tok.engine != "riptoken":
        return
    for n in (RIPTOKEN_EXACT_BELOW - 100, RIPTOKEN_EXACT_BELOW - 1):
        for c in " -a=\n":
            assert tok._fast.encode_ordinary(c * n) == tok._exact.encode_ordinary(c * n)


def test_engine_choice(pattern_tokenizer):
    tok, _ = pattern_tokenizer
    assert tok.engine == "riptoken"  # every preset has a sound guard
    custom = Tokenizer.from_ranks(tok.ranks, r"\s+|\S+")
    assert custom.engine == "tiktoken" and custom.exact_needed(*utf8_buffer(["a", "b"])).all()


def test_special_token_text_is_plain_text(small_tokenizer):
    ids = small_tokenizer.encode("a <|bos|> b <|pad|>", bos=False)
    assert small_tokenizer.bos_id not in ids
    assert small_tokenizer.special_tokens["<|pad|>"] not in ids
    assert small_tokenizer.decode(ids) == "a <|bos|> b <|pad|>"


def test_directory_contents_and_token_bytes(small_tokenizer_dir, small_tokenizer):
    meta = json.loads((small_tokenizer_dir / "tokshard.json").read_text())
    assert meta["vocab_size"] == small_tokenizer.vocab_size == 2048
    assert meta["special_tokens"][BOS] == small_tokenizer.bos_id
    assert meta["pattern_name"] == "cl100k-d2"
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
    flat, offsets = small_tokenizer.encode_to_array(batch, utf8=utf8_buffer(batch))
    assert [flat[a:b].tolist() for a, b in itertools.pairwise(offsets)] == expected


def test_whitespace_run_that_overflows_tiktoken_falls_back_to_the_reference(small_tokenizer, small_tokenizer_dir):
    """tiktoken's regex engine panics on a run of a million spaces; the HF reference takes over, exactly."""
    text = "start" + " " * 1_000_000 + "end"
    assert small_tokenizer.encode_ordinary(text) == hf_reference(small_tokenizer_dir).encode(text).ids[1:]


def _guard_as_specified(data: bytes, offsets: list[int]) -> list[bool]:
    """The guard's definition, one byte at a time: a document is flagged iff it overlaps a window of
    GUARD_RUN_BLOCKS consecutive GUARD_BLOCK-byte blocks (aligned to the start of `data`) whose bytes all share a
    class bit of the guard table."""
    classes = [int(_GUARD_TABLE[b]) for b in data]
    flagged = [False] * (len(offsets) - 1)
    for w in range(len(data) // GUARD_BLOCK - GUARD_RUN_BLOCKS + 1):
        lo, hi = w * GUARD_BLOCK, (w + GUARD_RUN_BLOCKS) * GUARD_BLOCK
        if functools.reduce(operator.and_, classes[lo:hi]):
            for d in range(len(flagged)):
                flagged[d] |= offsets[d] < hi and offsets[d + 1] > lo
    return flagged


# One character of each guard class (and the bytes that carry several), repeated to a byte length near the
# guard's thresholds: 6 blocks = 384 bytes, 447 (the longest run that can miss 6 aligned blocks), 454
# (GUARD_CATCHES_FROM); a multi-byte character may be cut, which leaves invalid UTF-8: the guard sees bytes.
_run_chars = st.sampled_from([b"a", b"Z", b"7", b"-", b"=", b" ", b"\t", b"\n", b"\r\n", b"\x1c", b"\x00", b"\xff",
                              *(c.encode() for c in "é中😀\u3000"), b" \n", b"-\n", b"a1", b"a-"])
_runs = st.builds(lambda unit, n: (unit * (n // len(unit) + 1))[:n], _run_chars,
                  st.one_of(st.integers(370, 470), st.integers(1, 1300)))
_prose = st.integers(0, 2 * GUARD_SCREEN_MAX_BYTES).map(lambda n: (b"Plain words, 12 numbers; and more. " * n)[:n])
_doc_parts = st.one_of(_runs, _prose, st.binary(max_size=130), unicode_text.map(str.encode),
                       mixed_text.map(str.encode))
_guard_docs = st.lists(st.lists(_doc_parts, max_size=4).map(b"".join), min_size=1, max_size=6)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(docs=_guard_docs)
def test_guard_screen_and_scan_agree_with_the_definition(docs):
    """The small-input screen of `exact_needed` and the block scan flag exactly the documents the definition
    flags, for arbitrary bytes and runs of one class around every threshold, on both sides of
    GUARD_SCREEN_MAX_BYTES."""
    tok = Tokenizer.from_ranks({bytes([b]): b for b in range(256)}, PATTERNS["cl100k-d2"], "cl100k-d2")
    data = np.frombuffer(b"".join(docs), dtype=np.uint8)
    offsets = np.concatenate(([0], np.cumsum([len(d) for d in docs]))).astype(np.int64)
    expected = _guard_as_specified(data.tobytes(), offsets.tolist())
    assert tok.exact_needed(data, offsets).tolist() == expected
    assert tok._guard_scan(data, offsets).tolist() == expected


def test_guard_screen_answers_small_inputs_and_defers_to_the_scan():
    tok = Tokenizer.from_ranks({bytes([b]): b for b in range(256)}, PATTERNS["cl100k-d2"], "cl100k-d2")
    prose = ("An ordinary sentence, with words and 12 numbers. " * 80).encode()[:GUARD_SCREEN_MAX_BYTES]
    run = b"x " * 50 + b"-" * (GUARD_RUN_BLOCKS * GUARD_BLOCK + GUARD_BLOCK) + b" y"
    for docs, flags in [([prose], [False]), ([prose[:1000], run, b"ok"], [False, True, False]),
                        ([prose, prose, run], [False, False, True])]:  # the last is above the screen's size
        data, offsets = utf8_buffer([d.decode() for d in docs])
        assert tok.exact_needed(data, offsets).tolist() == flags


def test_load_cached_shares_one_tokenizer_across_directories_and_checks_the_file(small_tokenizer_dir, tmp_path):
    """Each run copies its tokenizer into its OUTDIR; a warm worker must not parse it again per run, and must
    never serve a directory whose tokenizer.json differs from the sha256 it was asked for."""
    from tokshard.pipeline.jobs import copy_tokenizer

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
