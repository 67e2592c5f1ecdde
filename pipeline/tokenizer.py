"""The tokenizer: a byte-level BPE vocabulary, its HF `tokenizer.json`, and the fast encoder over it.

`tokenizer.json` is the single source of truth: it is what we save, what any HF-compatible tool loads, and what
our encoder is built from (vocabulary ids are tiktoken ranks). Encoding runs in the fastest engine that is exact
for the tokenizer's pre-split pattern (`engines.py` in this package; measured in docs/benchmarks.md): gigatoken
for the presets it implements natively, fastokens (PCRE2 over tokenizer.json) for every other pattern, HF
tokenizers (the reference itself) where neither loads. Every engine hands back one flat id buffer plus offsets,
so no Python int list is built on the encode path. Special-token text inside a document is always plain text.

A tokenizer directory holds:
    tokenizer.json     HF tokenizers format (byte-level BPE, regex Split pre-tokenizer, `<|bos|>` template)
    tokshard.json      metadata: vocab size, pattern, special tokens, sha256 of tokenizer.json, training record
    token_bytes.npy    int32[vocab_size]: UTF-8 byte length of each id, 0 for special tokens
    tokenizer_config.json, special_tokens_map.json   for transformers' AutoTokenizer (pipeline/hf_folder.py)
"""

from __future__ import annotations

import collections
import functools
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

from tokshard.pipeline import atomic, engines, hf_folder, storage

# Regex pre-split presets. HF tokenizers (Oniguruma), fastokens (PCRE2) and tiktoken (fancy-regex) all accept these.
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
# GPT-4's own pattern: gigatoken encodes it natively, 2x or more faster per CPU second end to end than fastokens on
# `cl100k-d2`, at equal compression (3.864 vs 3.860 bytes/token) and equal tiny-trainer val BPB after 100 steps
# (2.417 vs 2.420); measured in docs/benchmarks.md, "Default pattern".
DEFAULT_PATTERN = "cl100k"
DEFAULT_VOCAB_SIZE = 32768

BOS = "<|bos|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, "<|pad|>", *(f"<|reserved_{i}|>" for i in range(6)))

TOKENIZER_JSON = "tokenizer.json"
METADATA_JSON = "tokshard.json"
TOKEN_BYTES_NPY = "token_bytes.npy"
# Every file of a tokenizer directory, in the order they are written (tokshard.json, which vouches for the rest, last).
TOKENIZER_FILES = (TOKENIZER_JSON, TOKEN_BYTES_NPY, *hf_folder.FILES, METADATA_JSON)
METADATA_FORMAT = "tokshard-tokenizer/1"

# Long documents are encoded in chunks so an engine's working memory (pieces, ids) does not grow with the
# document. A chunk ends where every preset pattern ends a piece, so encoding the chunks separately gives exactly
# the ids of the whole: after a letter followed by a space and a letter (the space starts the next word's
# piece), or after a newline that follows a non-space and precedes a non-space other than
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


@functools.cache
def _to_latin1_table() -> dict[int, int]:
    """str.translate table: each byte-level character -> the character whose code is its byte, and every other
    character below 256 -> U+FFFF, so that `.encode("latin-1")` fails on anything that is not byte-level."""
    table = {c: 0xFFFF for c in range(256)}
    table.update({ord(c): b for c, b in _unicode_to_byte().items()})
    return table


def _token_from_str(s: str) -> bytes:
    # translate + encode run in C: half the time of a per-character lookup (a 32k vocabulary loads ~12 ms faster).
    try:
        return s.translate(_to_latin1_table()).encode("latin-1")
    except UnicodeEncodeError:
        bad = next(c for c in s if c not in _unicode_to_byte())
        raise ValueError(f"token {s!r} is not a byte-level BPE token (character {bad!r} has no byte)") from None


def bpe_merge(ids: list[int], token: Sequence[bytes], rank: dict[bytes, int], below: int | None = None) -> list[int]:
    """tiktoken's BPE rule, the one definition every encoder here follows: repeatedly merge the adjacent pair whose
    concatenation is the lowest-ranked token (the leftmost of equals), until no adjacent pair is a token. `ids` are
    ranks, `token[id]` their bytes; with `below`, only tokens ranked below it may be formed."""
    parts = list(ids)
    limit = len(token) if below is None else below
    while len(parts) > 1:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            r = rank.get(token[parts[i]] + token[parts[i + 1]])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [best_rank]
    return parts


def _merge_pair(ranks: dict[bytes, int], id_to_token: Sequence[bytes], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The two tokens whose merge produced `token`: BPE over its bytes using only lower ranks must end in two."""
    parts = bpe_merge([ranks[token[i : i + 1]] for i in range(len(token))], id_to_token, ranks, below=rank)
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
    return id_to_token[parts[0]], id_to_token[parts[1]]


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
    id_to_token = [tok for tok, _ in ordered]
    merges = [[token_str(a), token_str(b)] for tok, r in ordered if len(tok) > 1
              for a, b in [_merge_pair(ranks, id_to_token, tok, r)]]
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


class UnencodableError(ValueError):
    """A text the engine cannot encode (a run of millions of one character class exceeds its regex engine's
    limits, as it exceeds HF tokenizers'); `index` is its position in the batch that was being encoded."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


@dataclass
class Tokenizer:
    """Encode/decode with a byte-level BPE vocabulary; build with `Tokenizer.load(dir)` or `from_ranks`."""

    ranks: dict[bytes, int]
    pattern: str
    special_tokens: dict[str, int]
    pattern_name: str = "custom"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vocab_size = len(self.ranks) + len(self.special_tokens)
        expected = set(range(len(self.ranks), self.vocab_size))
        if set(self.special_tokens.values()) != expected:
            raise ValueError("special token ids must follow the BPE ranks contiguously")
        if BOS not in self.special_tokens:
            raise ValueError(f"the vocabulary has no {BOS} token; tokshard needs it as the document separator")
        self.bos_id = self.special_tokens[BOS]
        self._id_to_bytes: list[bytes] = [b""] * self.vocab_size
        for tok, r in self.ranks.items():
            self._id_to_bytes[r] = tok
        for s, i in self.special_tokens.items():
            self._id_to_bytes[i] = s.encode()
        self.token_bytes = np.array([len(t) for t in self._id_to_bytes], dtype=np.int32)
        self.token_bytes[list(self.special_tokens.values())] = 0

    def __repr__(self) -> str:
        # The dataclass repr would print every rank (a 32k vocabulary is megabytes of text).
        return (f"Tokenizer(vocab_size={self.vocab_size:,}, pattern_name={self.pattern_name!r}, "
                f"sha256={self.sha256[:12] or None!r})")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    @property
    def sha256(self) -> str:
        return self.metadata.get("tokenizer_json_sha256", "")

    @property
    def preset(self) -> str | None:
        """The preset whose regex this tokenizer pre-splits with, or None for any other pattern."""
        return next((name for name, regex in PATTERNS.items() if regex == self.pattern), None)

    # -- encoding ---------------------------------------------------------------------------------------
    @functools.cached_property
    def _engine(self) -> engines.Engine:
        """Built on first use (a tokenizer that is only trained and saved never needs one)."""
        from tokshard.pipeline.superbpe import STAGE2_PATTERNS  # superbpe builds on this module

        verified = self.preset is not None or self.pattern in STAGE2_PATTERNS.values()
        return engines.choose_engine(self.preset, self.ranks, lambda: self._spec_json, verified_pattern=verified)

    def use_engine(self, name: str) -> None:
        """Encode with engine `name` from now on (benchmarks and tests compare engines); raises if it cannot."""
        self.__dict__["_engine"] = engines.choose_engine(self.preset, self.ranks, lambda: self._spec_json,
                                                         forced=name)

    @property
    def engine(self) -> str:
        """The name of the engine that encodes for this tokenizer (recorded in manifests and reports)."""
        return self._engine.name

    @functools.cached_property
    def _spec_json(self) -> str:
        """tokenizer.json's text: the file as loaded, or rebuilt from the ranks for a tokenizer not loaded."""
        specials = sorted(self.special_tokens, key=self.special_tokens.__getitem__)
        return json.dumps(build_tokenizer_json(self.ranks, self.pattern, specials), ensure_ascii=False)

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` as plain text (special-token strings included), without `<|bos|>`."""
        return self.encode_batch([text], bos=False)[0]

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self.encode_batch([text], bos=bos)[0]

    def encode_batch(self, texts: Sequence[str], bos: bool = True) -> list[list[int]]:
        """Ids of each text as Python lists (the service's JSON, tests). Bulk encoding uses `encode_to_array`."""
        flat, offsets = self.encode_to_array(texts, bos=bos)
        ids = flat.tolist()
        bounds = offsets.tolist()
        return [ids[a:b] for a, b in itertools.pairwise(bounds)]

    def encode_to_array(self, texts: Sequence[str], bos: bool = True, parallel: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Encode texts into one flat id array (`self.dtype`) plus int64 row offsets (len = rows + 1), with
        `<|bos|>` first in every row when `bos`. The engine's uint32 buffer is copied once, into this array.
        `parallel`: the engine may use its thread pool (engines.py); the ids are the same.

        Documents longer than LONG_DOC_CHARS go through `piece_aligned_chunks` (preset patterns only), so the
        engine's working memory is bounded by a chunk, whatever the document's size."""
        texts = texts if isinstance(texts, list) else list(texts)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        long_docs = np.flatnonzero(lengths > LONG_DOC_CHARS).tolist() if self.preset else []
        if not long_docs:
            return self._with_bos(*self._encode_flat(texts, parallel), bos)
        parts: list[np.ndarray] = []
        row_lengths: list[np.ndarray] = []
        start = 0
        for i in [*long_docs, len(texts)]:
            if i > start:  # the run of ordinary documents before this long one
                try:
                    flat, offsets = self._encode_flat(texts[start:i], parallel)
                except UnencodableError as e:
                    raise UnencodableError(start + e.index, e.reason) from None
                parts.append(flat)
                row_lengths.append(np.diff(offsets))
            if i < len(texts):
                doc = []
                for chunk in piece_aligned_chunks(texts[i]):
                    try:
                        doc.append(self._encode_flat([chunk])[0])
                    except UnencodableError as e:
                        raise UnencodableError(i, e.reason) from None
                parts.append(np.concatenate(doc))
                row_lengths.append(np.array([len(parts[-1])], dtype=np.int64))
            start = i + 1
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(row_lengths), out=offsets[1:])
        return self._with_bos(np.concatenate(parts), offsets, bos)

    def _encode_flat(self, texts: list[str], parallel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The engine's (uint32 ids, offsets); an engine error is pinned to the text that caused it."""
        try:
            return self._engine.encode_flat(texts, parallel)
        except Exception as first:
            for i, text in enumerate(texts):  # which text? (an error is rare: one text at a time is fine)
                try:
                    self._engine.encode_flat([text])
                except Exception as e:
                    raise UnencodableError(i, f"the {self.engine} engine cannot encode it ({str(e).strip()[:160]}); "
                                           "it likely holds a run of millions of one character class, which HF "
                                           "tokenizers cannot split either -- strip or drop that row") from None
            raise first

    def _with_bos(self, flat: np.ndarray, offsets: np.ndarray, bos: bool) -> tuple[np.ndarray, np.ndarray]:
        """`flat` cast to `self.dtype`, with `<|bos|>` before every row when `bos`: one vectorised copy."""
        if not bos:
            return flat.astype(self.dtype, copy=False), offsets
        n_rows = len(offsets) - 1
        out_offsets = offsets + np.arange(n_rows + 1, dtype=np.int64)
        out = np.empty(len(flat) + n_rows, dtype=self.dtype)
        is_text = np.ones(len(out), dtype=bool)
        is_text[out_offsets[:-1]] = False
        out[~is_text] = self.bos_id
        out[is_text] = flat
        return out, out_offsets

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
            "tokenizer_json_sha256": storage.sha256_of(d / TOKENIZER_JSON),
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
        digest = storage.sha256_of(path)
        if meta.get("tokenizer_json_sha256") not in (None, digest):
            raise ValueError(f"{path} does not match the sha256 recorded in {d / METADATA_JSON}: "
                             "the file was changed after training; re-train or restore it")
        text = path.read_text()
        ranks, pattern, specials = parse_tokenizer_json(json.loads(text))
        meta["tokenizer_json_sha256"] = digest
        tok = cls(ranks=ranks, pattern=pattern, special_tokens=specials,
                  pattern_name=meta.get("pattern_name", "custom"), metadata=meta)
        tok.__dict__["_spec_json"] = text  # the engines load this very file: no need to rebuild it
        if (d / TOKEN_BYTES_NPY).is_file():
            saved = np.load(d / TOKEN_BYTES_NPY)
            if not np.array_equal(saved, tok.token_bytes):
                raise ValueError(f"{d / TOKEN_BYTES_NPY} disagrees with {path}; delete it and re-save the tokenizer")
        return tok


def copy_tokenizer(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy a tokenizer directory (local or URL, pipeline/storage.py) file by file (atomically each), so `dest` is
    byte-identical to `src`."""
    for name in TOKENIZER_FILES:
        if storage.exists(storage.join(src, name)):
            storage.write_bytes(storage.join(dest, name), storage.read_bytes(storage.join(src, name)))


_LOADED: collections.OrderedDict[str, Tokenizer] = collections.OrderedDict()
_LOADED_MAX = 4


def load_cached(directory: str, sha256: str) -> Tokenizer:
    """One Tokenizer per process per tokenizer version, whatever directory holds it.

    Ray workers outlive runs, and every run copies its tokenizer into its own OUTDIR, so a cache keyed by
    directory would parse the same vocabulary again for each run (~0.3 s per worker, docs/benchmarks.md). The
    sha256 of tokenizer.json fixes everything encoding depends on (ranks, pattern, special tokens); the file in
    `directory` is still hashed on every call (~1 ms), so a changed directory is never served from the cache."""
    local = storage.local_dir(directory, TOKENIZER_FILES) if storage.is_url(directory) else Path(directory)
    if not (local / TOKENIZER_JSON).is_file():
        return Tokenizer.load(directory)  # raises the error that says what is missing
    on_disk = storage.sha256_of(local / TOKENIZER_JSON)
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
