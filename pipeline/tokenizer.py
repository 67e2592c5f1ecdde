"""The tokenizer: a byte-level BPE vocabulary, its HF `tokenizer.json`, and the fast encoder over it.

`tokenizer.json` is the single source of truth: it is what we save, what any HF-compatible tool loads, and what
our encoder is built from (vocabulary ids are tiktoken ranks). Encoding runs in riptoken (a Rust tiktoken
reimplementation, ~2x tiktoken); the few documents that could hold a pre-split piece long enough for riptoken to
stop being exact are found by a cheap vectorised byte scan and encoded by tiktoken instead (see `exact_needed`);
custom patterns and SuperBPE's stage-2 pattern (pipeline/superbpe.py) always use tiktoken. Special-token text
inside a document is always encoded as plain text.

A tokenizer directory holds:
    tokenizer.json     HF tokenizers format (byte-level BPE, regex Split pre-tokenizer, `<|bos|>` template)
    tokshard.json      metadata: vocab size, pattern, special tokens, sha256 of tokenizer.json, training record
    token_bytes.npy    int32[vocab_size]: UTF-8 byte length of each id, 0 for special tokens
    tokenizer_config.json, special_tokens_map.json   for transformers' AutoTokenizer (pipeline/hf_folder.py)
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokshard.pipeline import atomic, hf_folder, storage

# Regex pre-split presets. HF tokenizers (Oniguruma), tiktoken and riptoken (fancy-regex) all accept these.
PATTERNS: dict[str, str] = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",  # noqa: E501
    "o200k": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}

# GPT-4's pattern with digits grouped by 1-2 instead of 1-3 (nanochat's finding at 32k vocabulary).
PATTERNS["cl100k-d2"] = PATTERNS["cl100k"].replace(r"\p{N}{1,3}", r"\p{N}{1,2}")
PATTERN_ALIASES = {"gpt4": "cl100k", "gpt4o": "o200k"}
DEFAULT_PATTERN = "cl100k-d2"
DEFAULT_VOCAB_SIZE = 32768

BOS = "<|bos|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, "<|pad|>", *(f"<|reserved_{i}|>" for i in range(6)))

TOKENIZER_JSON = "tokenizer.json"
METADATA_JSON = "tokshard.json"
TOKEN_BYTES_NPY = "token_bytes.npy"
# Every file of a tokenizer directory, in the order they are written (tokshard.json, which vouches for the rest, last).
TOKENIZER_FILES = (TOKENIZER_JSON, TOKEN_BYTES_NPY, *hf_folder.FILES, METADATA_JSON)
METADATA_FORMAT = "tokshard-tokenizer/1"

# riptoken gives ids identical to tiktoken/HF on pre-split pieces shorter than 500 UTF-8 bytes and may differ on
# longer ones (it switches merge algorithm and breaks ties between equal ranks differently; measured in
# docs/benchmarks.md). For the preset patterns a piece is one run of a single class -- letters, digits,
# punctuation/symbols (which may end in newlines), or whitespace -- plus at most one leading character (<= 4 bytes)
# and an English contraction suffix (<= 3 bytes). Bytes are classified into bits that over-approximate those
# classes, so a long piece always lies over a long run of bytes sharing one bit. Such a run of
# (GUARD_RUN_BLOCKS + 1) * GUARD_BLOCK - 1 bytes contains GUARD_RUN_BLOCKS whole aligned blocks that all carry the
# bit, which is what the guard looks for: every piece of >= GUARD_CATCHES_FROM bytes is flagged.
RIPTOKEN_EXACT_BELOW = 500
GUARD_BLOCK = 64
GUARD_RUN_BLOCKS = 6
_PIECE_EDGE_BYTES = 4 + 3
GUARD_CATCHES_FROM = (GUARD_RUN_BLOCKS + 1) * GUARD_BLOCK - 1 + _PIECE_EDGE_BYTES
assert GUARD_CATCHES_FROM < RIPTOKEN_EXACT_BELOW
_LETTER, _DIGIT, _PUNCT, _SPACE = 1, 2, 4, 8


def _guard_table() -> np.ndarray:
    """Byte -> class bits. A byte gets every bit of every class it may belong to, so classifying bytes never
    splits a real same-class run and the guard can only over-report: non-ASCII bytes may be any class
    (Unicode letters, digits, symbols, spaces); the ASCII separators \\x1c-\\x1f are whitespace to some regex
    engines; CR and LF may end a punctuation piece (o200k also lets "/" end one; it is punctuation anyway)."""
    table = np.full(256, _PUNCT, dtype=np.uint8)  # ASCII symbols and control characters
    table[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)] = _LETTER
    table[np.frombuffer(b"0123456789", np.uint8)] = _DIGIT
    table[np.frombuffer(b"\t\x0b\x0c ", np.uint8)] = _SPACE
    table[np.frombuffer(b"\r\n", np.uint8)] = _SPACE | _PUNCT
    table[0x1C:0x20] = _SPACE | _PUNCT
    table[0x80:] = _LETTER | _DIGIT | _PUNCT | _SPACE
    return table


_GUARD_TABLE = _guard_table()
# Small inputs (a service request) are screened first: every window the block scan flags lies inside a run of
# GUARD_RUN_BLOCKS * GUARD_BLOCK bytes that share a class bit, so where no such run exists -- one bytes.translate
# and one substring search per class tell -- the scan would flag nothing, and its fixed cost is skipped.
GUARD_SCREEN_MAX_BYTES = 4096
_GUARD_RUN = b"\x01" * (GUARD_RUN_BLOCKS * GUARD_BLOCK)
_GUARD_BIT_TABLES = tuple(bytes(int(c) & bit != 0 for c in _GUARD_TABLE) for bit in (_LETTER, _DIGIT, _PUNCT, _SPACE))
_GUARDED_PRESETS = frozenset({"gpt2", "cl100k", "cl100k-d2", "o200k"})

# Long documents are encoded in chunks so a worker's memory does not grow with the document: the ids of a chunk go
# to numpy before the next chunk is encoded. A chunk ends where every preset pattern ends a piece, so encoding the
# chunks separately gives exactly the ids of the whole: after a letter followed by a space and a letter (the space
# starts the next word's piece), or after a newline that follows a non-space and precedes a non-space other than
# "/" (o200k lets "/" continue a punctuation piece past newlines; gpt2 would join a space run and the newline).
LONG_DOC_CHARS = 1 << 20
CHUNK_CHARS = 1 << 18
_PIECE_END = re.compile(r"[A-Za-z](?= [A-Za-z])|(?<=\S)\n(?=[^\s/\u180e])")


def piece_aligned_chunks(text: str, chunk_chars: int | None = None) -> Iterator[str]:
    """Cut `text` into pieces of about `chunk_chars` characters at points where a preset pattern's pieces end.
    A stretch with no such point (one giant piece) stays whole: it cannot be cut without changing the ids."""
    chunk_chars = chunk_chars or CHUNK_CHARS
    start = 0
    while len(text) - start > chunk_chars:
        m = _PIECE_END.search(text, start + chunk_chars)
        if m is None:
            break
        yield text[start : m.end()]
        start = m.end()
    yield text[start:]


def resolve_pattern(name_or_regex: str) -> tuple[str, str]:
    """Return (name, regex) for a preset name, an alias, or a literal regex (named 'custom')."""
    name = PATTERN_ALIASES.get(name_or_regex, name_or_regex)
    if name in PATTERNS:
        return name, PATTERNS[name]
    if "\\" in name_or_regex or "|" in name_or_regex:
        return "custom", name_or_regex
    raise ValueError(
        f"unknown pattern {name_or_regex!r}: use one of {', '.join(sorted([*PATTERNS, *PATTERN_ALIASES]))} "
        "or a full regex"
    )


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, used by HF's ByteLevel model."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def token_str(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in token)


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in _byte_to_unicode().items()}


def _token_from_str(s: str) -> bytes:
    inverse = _unicode_to_byte()
    try:
        return bytes(inverse[c] for c in s)
    except KeyError as e:
        raise ValueError(f"token {s!r} is not a byte-level BPE token (character {e} has no byte)") from None


def _merge_pair(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The two tokens whose merge produced `token`: run tiktoken's BPE over its bytes using only lower ranks."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def build_tokenizer_json(ranks: dict[bytes, int], pattern: str, special_tokens: Sequence[str]) -> dict[str, Any]:
    """An HF `tokenizer.json` that encodes exactly like tiktoken over `ranks` with `pattern`.

    Merges are recovered from the ranks; `ignore_merges` makes a piece that is itself a token map to it
    directly, as tiktoken does. Special tokens take the ids after the BPE ranks.
    """
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    if [r for _, r in ordered] != list(range(len(ordered))):
        raise ValueError("ranks must be exactly 0..N-1")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError("all 256 single bytes must be in the vocabulary")
    merges = [
        [token_str(a), token_str(b)] for tok, r in ordered if len(tok) > 1 for a, b in [_merge_pair(ranks, tok, r)]
    ]
    n = len(ordered)
    added = [
        {"id": n + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for i, s in enumerate(special_tokens)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": BOS, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {BOS: {"id": BOS, "ids": [n + special_tokens.index(BOS)], "tokens": [BOS]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {token_str(tok): r for tok, r in ordered},
            "merges": merges,
        },
    }


def parse_tokenizer_json(spec: dict[str, Any]) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """Recover (ranks, pattern, special tokens) from a byte-level BPE tokenizer.json we can encode exactly."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer.json model is {model.get('type')!r}; tokshard encodes byte-level BPE only")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    splits = [s for s in steps if s.get("type") == "Split"]
    if len(splits) != 1 or "Regex" not in splits[0].get("pattern", {}):
        raise ValueError("tokenizer.json must pre-split with exactly one Split(Regex) step followed by ByteLevel")
    pattern = splits[0]["pattern"]["Regex"]
    ranks = {_token_from_str(s): i for s, i in model["vocab"].items()}
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    return ranks, pattern, specials


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def utf8_buffer(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of `texts` back to back (uint8) and their int64 offsets (len n+1)."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


class UnencodableError(ValueError):
    """A text that no exact engine can encode; `index` is its position in the batch that was being encoded."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def _utf8_rows(utf8: tuple[np.ndarray, np.ndarray], start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows start..stop of a (bytes, offsets) UTF-8 buffer, without copying the bytes."""
    data, offsets = utf8
    return data[offsets[start] : offsets[stop]], offsets[start : stop + 1] - offsets[start]


@dataclass
class Tokenizer:
    """Encode/decode with a byte-level BPE vocabulary; build with `Tokenizer.load(dir)` or `from_ranks`."""

    ranks: dict[bytes, int]
    pattern: str
    special_tokens: dict[str, int]
    pattern_name: str = "custom"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import riptoken
        import tiktoken

        self.vocab_size = len(self.ranks) + len(self.special_tokens)
        expected = set(range(len(self.ranks), self.vocab_size))
        if set(self.special_tokens.values()) != expected:
            raise ValueError("special token ids must follow the BPE ranks contiguously")
        if BOS not in self.special_tokens:
            raise ValueError(f"the vocabulary has no {BOS} token; tokshard needs it as the document separator")
        self.bos_id = self.special_tokens[BOS]
        # Both engines share the vocabulary (ids are tiktoken ranks). riptoken only where it is provably exact.
        self._exact = tiktoken.Encoding(
            name="tokshard", pat_str=self.pattern, mergeable_ranks=self.ranks, special_tokens=self.special_tokens
        )
        # Only the presets have a guard. Any other pattern is encoded by tiktoken, SuperBPE's stage-2 pattern
        # included: its pieces span words, so the class-run guard cannot bound them, and riptoken measured no
        # faster than tiktoken on them anyway (docs/benchmarks.md, "SuperBPE").
        preset = next((name for name, regex in PATTERNS.items() if regex == self.pattern), None)
        self._guard = _GUARD_TABLE if preset in _GUARDED_PRESETS else None
        self.engine = "riptoken" if self._guard is not None else "tiktoken"
        self._fast = None if self._guard is None else riptoken.CoreBPE(self.ranks, self.special_tokens, self.pattern)
        self._id_to_bytes: list[bytes] = [b""] * self.vocab_size
        for tok, r in self.ranks.items():
            self._id_to_bytes[r] = tok
        for s, i in self.special_tokens.items():
            self._id_to_bytes[i] = s.encode()
        self.token_bytes = np.array([len(t) for t in self._id_to_bytes], dtype=np.int32)
        self.token_bytes[list(self.special_tokens.values())] = 0

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    @property
    def sha256(self) -> str:
        return self.metadata.get("tokenizer_json_sha256", "")

    # -- encoding ---------------------------------------------------------------------------------------
    def exact_needed(self, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Which documents riptoken might encode differently: bool per document.

        `data` is the uint8 UTF-8 of all documents back to back, `offsets` their int64 boundaries (len n+1).
        Inputs of up to GUARD_SCREEN_MAX_BYTES without a long one-class run are answered without the block scan
        (`_guard_scan`); the answer is the scan's either way.
        """
        if self._guard is None:
            return np.ones(len(offsets) - 1, dtype=bool)
        if len(data) < GUARD_RUN_BLOCKS * GUARD_BLOCK or (
                len(data) <= GUARD_SCREEN_MAX_BYTES
                and not any(_GUARD_RUN in data.tobytes().translate(t) for t in _GUARD_BIT_TABLES)):
            return np.zeros(len(offsets) - 1, dtype=bool)
        return self._guard_scan(data, offsets)

    def _guard_scan(self, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The guard proper: a table lookup, a block-wise AND (eight bytes at a time, then the eight lanes) and an
        AND over each window of GUARD_RUN_BLOCKS blocks, nonzero where all its bytes share a class bit; no Python
        loop over bytes or documents."""
        n_docs = len(offsets) - 1
        n_blocks = len(data) // GUARD_BLOCK
        if n_blocks < GUARD_RUN_BLOCKS:
            return np.zeros(n_docs, dtype=bool)
        lanes = np.take(self._guard, data[: n_blocks * GUARD_BLOCK]).view(np.uint64).reshape(n_blocks, -1)
        blocks = np.bitwise_and.reduce(np.bitwise_and.reduce(lanes, axis=1).view(np.uint8).reshape(n_blocks, 8),
                                       axis=1)
        n_windows = n_blocks - GUARD_RUN_BLOCKS + 1
        window = blocks[:n_windows].copy()
        for k in range(1, GUARD_RUN_BLOCKS):
            window &= blocks[k : k + n_windows]
        hot = np.flatnonzero(window)  # first block of each window whose bytes all share a class bit
        if not len(hot):
            return np.zeros(n_docs, dtype=bool)
        first = np.searchsorted(offsets, hot * GUARD_BLOCK, side="right") - 1
        last = np.searchsorted(offsets, (hot + GUARD_RUN_BLOCKS) * GUARD_BLOCK - 1, side="right") - 1
        marks = np.zeros(n_docs + 1, dtype=np.int64)  # +1 at each window's first document, -1 after its last
        np.add.at(marks, first, 1)
        np.add.at(marks, last + 1, -1)
        return np.cumsum(marks[:-1]) > 0

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` as plain text (special-token strings included), without `<|bos|>`."""
        return self.encode_batch([text], bos=False)[0]

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self.encode_batch([text], bos=bos)[0]

    def encode_batch(self, texts: Sequence[str], bos: bool = True, utf8: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> list[list[int]]:
        """Encode many texts in one call; riptoken fans out over its thread pool with the GIL released
        (Ray tasks pin it to one thread). `utf8` = (bytes, offsets) of the texts when the caller has them
        (an Arrow string column does), to skip re-encoding them for the guard."""
        texts = list(texts)
        if self._fast is None:
            out = [self._encode_exact(t, i) for i, t in enumerate(texts)]
        else:
            exact = np.flatnonzero(self.exact_needed(*(utf8 if utf8 is not None else utf8_buffer(texts))))
            fast_texts = texts
            if len(exact):
                fast_texts = list(texts)
                for i in exact:
                    fast_texts[i] = ""  # encoded below by tiktoken; don't pay for it twice
            out = self._fast.encode_ordinary_batch(fast_texts)
            for i in exact:
                out[i] = self._encode_exact(texts[i], i)
        if bos:
            out = [[self.bos_id, *ids] for ids in out]
        return out

    def _encode_exact(self, text: str, index: int) -> list[int]:
        """tiktoken, or HF tokenizers (the reference itself, slower) where tiktoken's regex engine gives up: its
        backtracking overflows the stack on whitespace runs of some 10^5-10^6 characters and panics. Oniguruma
        (HF) gives up too on runs of tens of millions; then no exact engine can encode the text."""
        try:
            return self._exact.encode_ordinary(text)
        except BaseException as e:  # pyo3's PanicException derives from BaseException
            if type(e).__name__ != "PanicException":
                raise
        try:
            return self._reference().encode(text, add_special_tokens=False).ids
        except BaseException as e:
            if type(e).__name__ != "PanicException" and not isinstance(e, Exception):
                raise
            raise UnencodableError(index, f"no exact engine can encode it (tiktoken and HF tokenizers both failed: "
                                   f"{str(e).strip()[:120]}); it likely holds a run of millions of one character "
                                   "class -- strip or drop that row") from None

    @functools.cached_property
    def _reference_spec(self) -> str:
        specials = sorted(self.special_tokens, key=self.special_tokens.__getitem__)
        return json.dumps(build_tokenizer_json(self.ranks, self.pattern, specials))

    def _reference(self) -> Any:
        import tokenizers

        hf = tokenizers.Tokenizer.from_str(self._reference_spec)
        hf.encode_special_tokens = True
        return hf

    def encode_to_array(self, texts: Sequence[str], bos: bool = True,
                        utf8: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encode texts into one flat id array (`self.dtype`) plus int64 row offsets (len = rows + 1).

        Documents longer than LONG_DOC_CHARS go through `piece_aligned_chunks` (preset patterns only), so the
        Python lists alive at any time hold at most a chunk's ids, whatever the document's size."""
        texts = texts if isinstance(texts, list) else list(texts)
        long_docs = [i for i, t in enumerate(texts) if len(t) > LONG_DOC_CHARS] if self._guard is not None else []
        if not long_docs:
            return self._rows_to_array(self.encode_batch(texts, bos=False, utf8=utf8), bos)
        parts: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        start = 0
        for i in [*long_docs, len(texts)]:
            if i > start:  # the run of ordinary documents before this long one
                sub = None if utf8 is None else _utf8_rows(utf8, start, i)
                try:
                    rows = self.encode_batch(texts[start:i], bos=False, utf8=sub)
                except UnencodableError as e:
                    raise UnencodableError(start + e.index, e.reason) from None
                flat, offsets = self._rows_to_array(rows, bos)
                parts.append(flat)
                lengths.append(np.diff(offsets))
            if i < len(texts):
                parts.append(self._encode_long(texts[i], i, bos))
                lengths.append(np.array([len(parts[-1])], dtype=np.int64))
            start = i + 1
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return np.concatenate(parts), offsets

    def _encode_long(self, text: str, index: int, bos: bool) -> np.ndarray:
        doc = [np.array([self.bos_id] if bos else [], dtype=self.dtype)]
        for chunk in piece_aligned_chunks(text):
            try:
                doc.append(self._rows_to_array(self.encode_batch([chunk], bos=False), bos=False)[0])
            except UnencodableError as e:
                raise UnencodableError(index, e.reason) from None
        return np.concatenate(doc)

    def _rows_to_array(self, rows: list[list[int]], bos: bool) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)) + (1 if bos else 0)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # One pass from Python ints to numpy; with bos the stream is bos, row, bos, row, ...
        pieces = itertools.chain.from_iterable(zip(itertools.repeat((self.bos_id,)), rows)) if bos else rows
        flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype=self.dtype, count=int(offsets[-1]))
        return flat, offsets

    # -- decoding ---------------------------------------------------------------------------------------
    def id_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range for a vocabulary of {self.vocab_size}")
        return self._id_to_bytes[token_id]

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        specials = set(self.special_tokens.values()) if skip_special else set()
        return b"".join(self.id_bytes(int(i)) for i in ids if int(i) not in specials)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    # -- persistence ------------------------------------------------------------------------------------
    @classmethod
    def from_ranks(
        cls,
        ranks: dict[bytes, int],
        pattern: str,
        pattern_name: str = "custom",
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        metadata: dict[str, Any] | None = None,
    ) -> Tokenizer:
        n = len(ranks)
        specials = {s: n + i for i, s in enumerate(special_tokens)}
        return cls(ranks=ranks, pattern=pattern, special_tokens=specials, pattern_name=pattern_name,
                   metadata=dict(metadata or {}))

    def save(self, directory: str | os.PathLike[str], training: dict[str, Any] | None = None) -> Path:
        """Write tokenizer.json, token_bytes.npy, the transformers files and tokshard.json (in that order, each
        atomically). A URL (pipeline/storage.py) gets the same files uploaded in the same order; its URL is
        returned."""
        if storage.is_url(directory):
            with tempfile.TemporaryDirectory(prefix="tokshard-tok-") as tmp:
                self.save(tmp, training)
                storage.upload_dir(Path(tmp), directory, TOKENIZER_FILES)
            return directory  # type: ignore[return-value]
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        specials = sorted(self.special_tokens, key=self.special_tokens.__getitem__)
        spec = build_tokenizer_json(self.ranks, self.pattern, specials)
        atomic.write_bytes(d / TOKENIZER_JSON, json.dumps(spec, ensure_ascii=False).encode())
        with atomic.atomic_open(d / TOKEN_BYTES_NPY) as f:
            np.save(f, self.token_bytes)
        hf_folder.write_hf_files(d, self.special_tokens, BOS)
        self.metadata = {
            "format": METADATA_FORMAT,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "pattern_name": self.pattern_name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "bos_id": self.bos_id,
            "tokenizer_json_sha256": sha256_file(d / TOKENIZER_JSON),
            "token_bytes": TOKEN_BYTES_NPY,
            "training": training if training is not None else self.metadata.get("training"),
        }
        atomic.write_json(d / METADATA_JSON, self.metadata)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer directory, local or at a URL (read through storage's local cache)."""
        d = storage.local_dir(directory, TOKENIZER_FILES) if storage.is_url(directory) else Path(directory)
        path = d / TOKENIZER_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{d} is not a tokenizer directory: {TOKENIZER_JSON} is missing "
                                    "(make one with `tokshard train-tokenizer`)")
        meta: dict[str, Any] = {}
        if (d / METADATA_JSON).is_file():
            meta = json.loads((d / METADATA_JSON).read_text())
        digest = sha256_file(path)
        if meta.get("tokenizer_json_sha256") not in (None, digest):
            raise ValueError(f"{path} does not match the sha256 recorded in {d / METADATA_JSON}: "
                             "the file was changed after training; re-train or restore it")
        ranks, pattern, specials = parse_tokenizer_json(json.loads(path.read_text()))
        meta["tokenizer_json_sha256"] = digest
        tok = cls(ranks=ranks, pattern=pattern, special_tokens=specials,
                  pattern_name=meta.get("pattern_name", "custom"), metadata=meta)
        if (d / TOKEN_BYTES_NPY).is_file():
            saved = np.load(d / TOKEN_BYTES_NPY)
            if not np.array_equal(saved, tok.token_bytes):
                raise ValueError(f"{d / TOKEN_BYTES_NPY} disagrees with {path}; delete it and re-save the tokenizer")
        return tok


_LOADED: collections.OrderedDict[str, Tokenizer] = collections.OrderedDict()
_LOADED_MAX = 4


def load_cached(directory: str, sha256: str) -> Tokenizer:
    """One Tokenizer per process per tokenizer version, whatever directory holds it.

    Ray workers outlive runs, and every run copies its tokenizer into its own OUTDIR, so a cache keyed by
    directory would parse the same vocabulary again for each run (~0.3 s per worker, docs/benchmarks.md). The
    sha256 of tokenizer.json fixes everything encoding depends on (ranks, pattern, special tokens); the file in
    `directory` is still hashed on every call (~1 ms), so a changed directory is never served from the cache."""
    local = storage.local_dir(directory, TOKENIZER_FILES) if storage.is_url(directory) else Path(directory)
    on_disk = sha256_file(local / TOKENIZER_JSON)
    if sha256 and on_disk != sha256:
        raise ValueError(f"tokenizer at {directory} has sha256 {on_disk}, expected {sha256}")
    tok = _LOADED.get(on_disk)
    if tok is None:
        tok = Tokenizer.load(local)
        _LOADED[on_disk] = tok
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(on_disk)
    return tok
