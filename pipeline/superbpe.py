"""SuperBPE (Liu et al. 2025, arXiv 2503.13423): a second stage of BPE merges across the spaces between words.

Stage 1 is ordinary byte-level BPE (rustbpe, a preset pre-split pattern) up to the transition vocabulary T. Stage 2
keeps merging, but on longer pieces cut by `stage2_pattern`, so common multi-word units (" of the", " in order to")
become single tokens, up to the full vocabulary. The result is still one regex plus tiktoken ranks, so the saved
`tokenizer.json` encodes exactly like our engine, whose pre-split pattern becomes the stage-2 one.

Stage-2 pieces (one regex that Oniguruma, fancy-regex and `regex` split identically; tests check it):
  - digits stay apart, grouped as in the stage-1 preset;
  - a span of words may cross spaces and in-sentence punctuation (", but"), but ends after `.!?;:` followed by a
    space or tab (the released SuperBPE tokenizers never continue after ": "; we also keep sentences apart, which
    bounds pieces to a clause and keeps long documents cheap to encode); newlines only end a span (".\n" stays a
    token); whitespace-only runs split as in the presets.
  - a stage-2 token holds at most MAX_WORDS words (runs of non-space bytes), as in the paper's released
    tokenizers ("mw4"): the cap lives in the trainer, not the regex, so superwords are not cut at arbitrary points.

The trainer counts adjacent pairs over the unique stage-2 pieces of the sample, weighted by frequency, starting
from each piece's tiktoken encoding with the stage-1 ranks, and after every merge re-encodes the affected pieces
with tiktoken's own rule (repeatedly merge the adjacent pair whose concatenation has the lowest rank). So the
segmentation it counts is at every step exactly what the final encoder produces; in particular no adjacent pair
ever concatenates to a token that already exists, so no candidate is a duplicate (counted in `skipped_existing`,
expected 0). Ties between equally frequent pairs go to the smaller (left id, right id): runs are reproducible.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tokshard.pipeline.tokenizer import bpe_merge

MAX_WORDS = 4
# Stage 2 runs in one Python process and holds every distinct stage-2 piece (nearly every clause is distinct):
# 16 MB of text took 53 CPU-s and 1.1 GB RSS. Above this much text it trains on an evenly spaced subset of the
# sample's documents, so time and memory stay bounded whatever --sample-bytes is (stage 1 still sees it all).
STAGE2_MAX_BYTES = 32 << 20
SENTENCE_END = ".!?;:"

# Digits as in each stage-1 preset, so numbers split the same way in both stages.
_DIGITS = {"gpt2": r" ?\p{N}+", "cl100k": r"\p{N}{1,3}", "cl100k-d2": r"\p{N}{1,2}", "o200k": r"\p{N}{1,3}"}
# A span: an optional leading space, then non-space non-digit characters and inner runs of horizontal space that
# are followed by such a character and do not follow a sentence end; then the newlines that end it. Possessive,
# and each step matches one disjoint class, so no engine backtracks into it.
_SPAN = r"[^\S\r\n]?(?:[^\s\p{N}]|(?<![" + SENTENCE_END + r"])[^\S\r\n]++(?=[^\s\p{N}]))++[\r\n]*"
_WHITESPACE = r"\s*[\r\n]|\s+(?!\S)|\s+"

STAGE2_PATTERNS: dict[str, str] = {name: f"{digits}|{_SPAN}|{_WHITESPACE}" for name, digits in _DIGITS.items()}
_WS = frozenset(b" \t\n\r\x0b\x0c")


def stage2_pattern(stage1_name: str) -> str:
    """The stage-2 regex for a stage-1 preset name."""
    if stage1_name not in STAGE2_PATTERNS:
        raise ValueError(f"SuperBPE needs a preset stage-1 pattern ({', '.join(sorted(STAGE2_PATTERNS))}), "
                         f"not {stage1_name!r}: its stage-2 pattern keeps the preset's digit groups")
    return STAGE2_PATTERNS[stage1_name]


def split_pieces(texts: Iterable[str], pattern: str) -> Counter[str]:
    """Unique pre-split pieces of `texts` with their counts, split by HF tokenizers (Oniguruma: the reference)."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(pattern), "isolated")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(piece for piece, _ in split.pre_tokenize_str(text))
    return counts


def _word_shape(token: bytes) -> tuple[int, bool, bool]:
    """(words, starts inside a word, ends inside a word); a word is a run of non-whitespace bytes."""
    return len(token.split()), token[0] not in _WS, token[-1] not in _WS


class _Stage2:
    """The merge loop's state: the vocabulary so far, the pieces as token ids, pair counts and where pairs occur."""

    def __init__(self, ranks: dict[bytes, int], max_words: int) -> None:
        self.token: list[bytes] = [b""] * len(ranks)
        for tok, r in ranks.items():
            self.token[r] = tok
        self.rank = dict(ranks)
        shapes = [_word_shape(t) for t in self.token]
        # Per token: words, and words minus one when it ends inside a word (a merge with a token that starts
        # inside a word joins those two words into one).
        self.n_words = [w for w, _, _ in shapes]
        self.starts_in = [s for _, s, _ in shapes]
        self.ends_in = [e for _, _, e in shapes]
        self.max_words = max_words
        self.pair_count: dict[tuple[int, int], int] = {}
        self.where: dict[tuple[int, int], set[int]] = {}
        self.words: list[list[int]] = []
        self.freq: list[int] = []

    def add_word(self, ids: list[int], freq: int) -> None:
        self.words.append(ids)
        self.freq.append(freq)
        self._count(len(self.words) - 1, ids, freq)

    def _count(self, w: int, ids: list[int], delta: int) -> None:
        """Add `delta` to the count of every adjacent pair of `ids` that the word cap allows."""
        n_words, starts_in, ends_in, cap = self.n_words, self.starts_in, self.ends_in, self.max_words
        counts, where = self.pair_count, self.where
        for pair in itertools.pairwise(ids):
            a, b = pair
            if n_words[a] + n_words[b] - (ends_in[a] and starts_in[b]) > cap:
                continue
            counts[pair] = counts.get(pair, 0) + delta
            if delta > 0:
                if pair in where:
                    where[pair].add(w)
                else:
                    where[pair] = {w}

    def encode(self, ids: list[int], new: int) -> list[int]:
        """tiktoken's rule continued from `ids` after token `new` (the highest rank) was added: merge the adjacent
        pair whose concatenation has the lowest rank, the leftmost of equals, until none is a token.

        Before `new` existed no adjacent concatenation was a token, so tiktoken first merges the `new` pairs from
        left to right; only where a merge makes a neighbour pair that is already a token (rare) does the general
        loop take over from that state."""
        token, rank = self.token, self.rank
        target = token[new]
        parts: list[int] = []
        i, n = 0, len(ids)
        while i < n:
            if i + 1 < n and token[ids[i]] + token[ids[i + 1]] == target:
                if (parts and token[parts[-1]] + target in rank) or (i + 2 < n and target + token[ids[i + 2]] in rank):
                    return self._encode_general([*parts, new, *ids[i + 2 :]])
                parts.append(new)
                i += 2
            else:
                parts.append(ids[i])
                i += 1
        return parts

    def _encode_general(self, parts: list[int]) -> list[int]:
        return bpe_merge(parts, self.token, self.rank)

    def merge(self, pair: tuple[int, int]) -> list[tuple[int, int]]:
        """Add the token pair[0]+pair[1] and re-encode every piece holding a pair with those bytes; return the
        pairs around the changes (their counts may have grown: they need fresh heap entries)."""
        data = self.token[pair[0]] + self.token[pair[1]]
        new = len(self.token)
        self.rank[data] = new
        self.token.append(data)
        w, s, e = _word_shape(data)
        self.n_words.append(w)
        self.starts_in.append(s)
        self.ends_in.append(e)
        # Other splits of the same bytes merge too (tiktoken looks at bytes, not at which pair made a token).
        splits = [(self.rank[data[:k]], self.rank[data[k:]]) for k in range(1, len(data))
                  if data[:k] in self.rank and data[k:] in self.rank]
        touched: set[int] = set()
        for p in splits:
            touched |= self.where.pop(p, set())
        grown: set[tuple[int, int]] = set()
        for word in touched:
            old = self.words[word]
            ids = self.encode(old, new)
            if len(ids) == len(old):  # a stale entry: this piece no longer holds the pair
                continue
            # Only the pairs around the changed middle differ: skip the common prefix and suffix.
            lo = 0
            while old[lo] == ids[lo]:
                lo += 1
            hi = 0
            while hi < len(ids) - lo - 1 and old[-1 - hi] == ids[-1 - hi]:
                hi += 1
            lo = max(lo - 1, 0)
            before, after = old[lo : len(old) - hi + 1], ids[lo : len(ids) - hi + 1]
            self._count(word, before, -self.freq[word])
            self._count(word, after, self.freq[word])
            grown.update(itertools.pairwise(after))
            self.words[word] = ids
        for p in splits:
            self.pair_count.pop(p, None)
        return sorted(grown)


def stage2_subset(texts: list[str], max_bytes: int = STAGE2_MAX_BYTES) -> list[str]:
    """Every k-th text, with k chosen so the subset holds about `max_bytes` of UTF-8 (all of them when they fit):
    evenly spaced, so a sample drawn file by file is still covered end to end. Deterministic."""
    sizes = [len(t.encode("utf-8", "surrogatepass")) for t in texts]
    total = sum(sizes)
    if total <= max_bytes:
        return texts
    step = -(-total // max_bytes)
    return texts[::step]


def train_stage2(texts: list[str], ranks: dict[bytes, int], pattern: str, n_tokens: int,
                 max_words: int = MAX_WORDS, max_bytes: int = STAGE2_MAX_BYTES
                 ) -> tuple[dict[bytes, int], dict[str, Any]]:
    """Continue the stage-1 `ranks` with stage-2 merges over `texts` (at most about `max_bytes` of them, see
    `stage2_subset`) pre-split by `pattern` until the vocabulary has `n_tokens` BPE tokens (or no pair is left: the
    caller checks the size). Returns (ranks, statistics)."""
    import tiktoken

    t0 = time.process_time()
    texts = stage2_subset(list(texts), max_bytes)
    pieces = split_pieces(texts, pattern)
    stage1 = tiktoken.Encoding(name="superbpe-stage1", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    state = _Stage2(ranks, max_words)
    for piece, freq in pieces.items():
        ids = stage1._encode_single_piece(piece.encode("utf-8", "surrogatepass"))
        if len(ids) > 1:
            state.add_word(ids, freq)
    heap = [(-c, p) for p, c in state.pair_count.items() if c > 0]
    heapq.heapify(heap)
    split_s = time.process_time() - t0
    skipped = 0
    while len(state.token) < n_tokens and heap:
        neg, pair = heapq.heappop(heap)
        count = state.pair_count.get(pair, 0)
        if count <= 0:
            continue
        if count != -neg:  # stale entry: the pair's count fell since it was pushed
            heapq.heappush(heap, (-count, pair))
            continue
        if state.token[pair[0]] + state.token[pair[1]] in state.rank:  # cannot happen (see module docstring)
            skipped += 1
            state.pair_count.pop(pair)
            continue
        for p in state.merge(pair):
            if state.pair_count.get(p, 0) > 0:
                heapq.heappush(heap, (-state.pair_count[p], p))
    out = {tok: r for r, tok in enumerate(state.token)}
    stats = {"stage2_merges": len(state.token) - len(ranks), "skipped_existing": skipped,
             "stage2_documents": len(texts),
             "stage2_bytes": sum(len(t.encode("utf-8", "surrogatepass")) for t in texts),
             "unique_pieces": len(pieces), "pieces_trained": len(state.words), "max_words": max_words,
             "split_seconds": round(split_s, 3), "seconds": round(time.process_time() - t0, 3)}
    return out, stats
