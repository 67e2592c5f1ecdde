"""Encoding engines: the Rust libraries that turn texts into ids, each exact for the patterns it is chosen for.

`Tokenizer` (tokenizer.py) owns the vocabulary; this module owns the engines that encode with it. Each engine
hands back ONE flat uint32 id buffer plus int64 offsets (n+1) for a batch: no Python int per token is ever made,
so the caller copies ids straight into a shard buffer. Every engine runs on the calling thread (parallelism is
Ray's), unless asked for `parallel` (a run in one process: `jobs.runs_in_process`).

Which engine, fastest first (measured on this corpus, docs/benchmarks.md "Encoder engines"):

  gigatoken  hand-written pre-splitters for the preset patterns `cl100k`, `gpt2` and `o200k` (no regex engine);
             exact against HF tokenizers on real text, 1M-character runs and fuzzed strings for those three.
             It refuses any other regex, `cl100k-d2` included.
  fastokens  PCRE2 (JIT) over the tokenizer.json itself: any pattern PCRE2 compiles, so `cl100k-d2`, SuperBPE's
             stage-2 patterns and custom regexes.
  tokenizers HF tokenizers on the same tokenizer.json: the reference every test compares with, so exact by
             definition; slower, and only used where neither engine above loads the pattern.

`TOKSHARD_ENGINE=NAME` forces one engine (benchmarks and tests compare them); an engine that cannot encode the
pattern then fails loudly instead of falling back.
"""

from __future__ import annotations

import binascii
import contextlib
import ctypes
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

ENGINE_ENV = "TOKSHARD_ENGINE"
# Our preset names -> gigatoken's pre-splitter scheme with the same pieces (checked by tests/pipeline/test_engines).
GIGATOKEN_SCHEMES = {"cl100k": "gpt4", "gpt2": "gpt2", "o200k": "o200k"}
ENGINE_NAMES = ("gigatoken", "fastokens", "tokenizers")
# gigatoken caches the ids of every distinct piece it has seen and never evicts: measured +90 MB over the 132 MB
# English corpus (then flat), but +152 MB more for 59 M characters of 27 other languages. A worker encodes many
# slices, so the cache is bounded here: every GIGATOKEN_CHECK_CHARS characters the process's resident memory is
# compared with what it was when the engine was built, and past GIGATOKEN_CACHE_MAX_BYTES of growth the engine is
# built again (an empty cache; the same ids). English text never reaches it.
GIGATOKEN_CHECK_CHARS = 16 << 20
GIGATOKEN_CACHE_MAX_BYTES = 512 << 20
# Up to this many texts gigatoken encodes one text per call: its batch call has a fixed cost of ~130 us (it builds
# an awkward Array), 40x a 1 KB text's encoding (measured in docs/benchmarks.md, "Encoder engines").
GIGATOKEN_SMALL_BATCH = 16


class Engine(Protocol):
    name: str

    def encode_flat(self, texts: Sequence[str], parallel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 ids of every text back to back, int64 offsets of len(texts) + 1 starting at 0). With
        `parallel`, the engine may spread the batch over its Rust thread pool (RAYON_NUM_THREADS threads)."""
        ...


def _rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere, which disables the cache bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _return_free_memory() -> None:
    """Hand freed heap back to the OS (glibc's malloc_trim), so resident memory measures the live cache."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the bound is then looser, still a bound
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, dtype=np.uint32), np.zeros(1, dtype=np.int64)


class GigatokenEngine:
    """gigatoken's BPE with a built-in pre-splitter; built from the ranks (a .tiktoken file it reads once)."""

    name = "gigatoken"

    def __init__(self, ranks: dict[bytes, int], scheme: str) -> None:
        self._ranks, self._scheme = ranks, scheme
        self._bpe = self._build()
        self.rebuilds = 0

    def _build(self) -> object:
        from gigatoken.gigatoken_rs import BPETokenizer

        self._baseline_rss, self._chars_since_check = _rss_bytes(), 0
        # gigatoken reads ranks from a .tiktoken file only: write one (base64 token, rank per line), load, delete.
        with tempfile.NamedTemporaryFile("wb", suffix=".tiktoken", delete=False) as f:
            f.write(b"".join(binascii.b2a_base64(token, newline=False) + b" %d\n" % rank
                             for token, rank in sorted(self._ranks.items(), key=lambda kv: kv[1])))
        try:
            # No special tokens: special-token text inside a document is plain text in tokshard.
            return BPETokenizer.from_tiktoken(f.name, self._scheme, {})
        finally:
            os.unlink(f.name)

    def _bound_cache(self, texts: Sequence[str]) -> None:
        self._chars_since_check += sum(map(len, texts))
        if self._chars_since_check < GIGATOKEN_CHECK_CHARS:
            return
        self._chars_since_check = 0
        if _rss_bytes() - self._baseline_rss > GIGATOKEN_CACHE_MAX_BYTES:
            self._bpe = None  # free the old cache before the new engine allocates
            _return_free_memory()
            self._bpe = self._build()
            self.rebuilds += 1

    def encode_flat(self, texts: Sequence[str], parallel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return _empty()
        self._bound_cache(texts)
        if len(texts) <= GIGATOKEN_SMALL_BATCH:  # a batch call builds an awkward Array: ~130 us, for service calls
            rows = [self._bpe.encode(t) for t in texts]
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum([len(r) for r in rows], out=offsets[1:])
            return np.concatenate(rows).astype(np.uint32, copy=False), offsets
        layout = self._bpe.encode_batch(list(texts), parallel=parallel).layout  # an awkward ListOffsetArray
        offsets = np.asarray(layout.offsets, dtype=np.int64)
        ids = np.asarray(layout.content.data, dtype=np.uint32)[offsets[0] : offsets[-1]]
        return ids, offsets - offsets[0]


class FastokensEngine:
    """fastokens on the tokenizer.json (PCRE2 pre-split, HF's BPE semantics)."""

    name = "fastokens"

    def __init__(self, spec_json: str) -> None:
        import fastokens

        self._tok = fastokens.Tokenizer.from_json_str(spec_json)

    def encode_flat(self, texts: Sequence[str], parallel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        # fastokens always uses its rayon pool; its size is RAYON_NUM_THREADS (1 in Ray tasks).
        if not texts:
            return _empty()
        ids, offsets = self._tok.encode_batch_flat(list(texts), add_special_tokens=False, split_special_tokens=True)
        return np.frombuffer(ids, dtype=np.uint32), np.frombuffer(offsets, dtype=np.uint64).astype(np.int64)


class TokenizersEngine:
    """HF tokenizers itself: the reference. Only for patterns the fast engines cannot load."""

    name = "tokenizers"

    def __init__(self, spec_json: str) -> None:
        import tokenizers

        self._hf = tokenizers.Tokenizer.from_str(spec_json)
        self._hf.encode_special_tokens = True

    def encode_flat(self, texts: Sequence[str], parallel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return _empty()
        rows = [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        return np.fromiter((i for r in rows for i in r), dtype=np.uint32, count=int(offsets[-1])), offsets


# Text for the load-time check of a pattern nobody has verified (a custom regex): PCRE2 and Oniguruma read a few
# constructs differently (`\h` is horizontal space in one and a hex digit in the other, for instance), so fastokens
# must give the reference's ids on a little of everything before it is trusted with such a pattern.
PROBE_TEXTS = (
    "Hello, World! It's 2024-06-01; we'll see 3.14159 and 1,234,567 items... ok?\n",
    "  indented\tcode(x): return x**2  # comment\r\n\n\n   \n trailing   ",
    "Ünïcödé façade naïve ſ İ ǅ ʰ e\u0301 \u00a0nbsp\u3000ideographic \u2028sep \x0b\x0c\x1c\x1f\x00",
    "中文 テキスト 한국어 العربية हिन्दी ไทย Ελληνικά русский 😀👩‍👩‍👧 <|bos|> deadbeef DEADBEEF 0xFF",
    "'S 'LL 'Ve 're's --- *** ... ??? !!! ### $$$ ___ /// \\\\ ||| ~~~ ``` 12345678901234567890",
)


def choose_engine(preset: str | None, ranks: dict[bytes, int], spec_json: Callable[[], str],
                  forced: str | None = None, verified_pattern: bool = True) -> Engine:
    """The fastest exact engine for a tokenizer whose pattern is `preset` (None: not a preset).

    `spec_json` gives the tokenizer.json text (called only when an engine needs it). `forced` (default: the
    TOKSHARD_ENGINE variable) names one engine and disables the fallback. With `verified_pattern` False (a
    custom regex), fastokens is used only if it matches the reference on PROBE_TEXTS."""
    forced = forced or os.environ.get(ENGINE_ENV) or None
    if forced is not None and forced not in ENGINE_NAMES:
        raise ValueError(f"{ENGINE_ENV}={forced!r}: unknown engine; use one of {', '.join(ENGINE_NAMES)}")
    if forced in (None, "gigatoken"):
        if preset in GIGATOKEN_SCHEMES:
            return GigatokenEngine(ranks, GIGATOKEN_SCHEMES[preset])
        if forced:
            raise ValueError(f"{ENGINE_ENV}=gigatoken: gigatoken has no exact pre-splitter for this pattern "
                             f"({preset or 'not a preset'}); it handles {', '.join(GIGATOKEN_SCHEMES)}")
    if forced in (None, "fastokens"):
        try:
            fast = FastokensEngine(spec_json())
        except Exception:  # a regex PCRE2 does not compile: the reference still can
            if forced:
                raise
        else:
            if forced or verified_pattern:
                return fast
            reference = TokenizersEngine(spec_json())
            ours, theirs = fast.encode_flat(PROBE_TEXTS), reference.encode_flat(PROBE_TEXTS)
            if all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)):
                return fast
            return reference
    return TokenizersEngine(spec_json())
