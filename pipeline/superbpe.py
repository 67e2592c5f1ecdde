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

Stage 2 sees the same sample as stage 1. The pieces are split among shards (`Stage2Shard`, Ray actors in the
training job, one per CPU): each splits and encodes its share of the texts and re-encodes its own pieces after
each merge; the driver sums their count changes and picks the next merge (`merge_loop`). Pieces do not interact,
so the result does not depend on the number of shards (tests check it), and time and memory divide by it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from tokshard.pipeline.progress import Steps
from tokshard.pipeline.tokenizer import bpe_merge

MAX_WORDS = 4
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
        # pair -> the pieces it was counted in (a list: ~4x smaller than small sets; repeats and pieces that no
        # longer hold the pair are skipped by `merge`)
        self.where: dict[tuple[int, int], list[int]] = {}
        self.words: list[list[int]] = []
        self.freq: list[int] = []
        self._ints = list(range(len(ranks)))

    def add_word(self, ids: list[int], freq: int) -> None:
        # one int object per stage-1 id, shared by every piece (tiktoken returns fresh ones: 28 bytes each)
        ids = list(map(self._ints.__getitem__, ids))
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
                    where[pair].append(w)
                else:
                    where[pair] = [w]

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

    def merge(self, pair: tuple[int, int]) -> None:
        """Add the token pair[0]+pair[1] and re-encode every piece holding a pair with those bytes; `pair_count`
        gets the changes."""
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
            touched.update(self.where.pop(p, ()))
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
            self.words[word] = ids


def stage2_subset(texts: list[str], max_bytes: int | None = None) -> list[str]:
    """Every k-th text, with k chosen so the subset holds about `max_bytes` of UTF-8 (all of them when they fit or
    `max_bytes` is None): evenly spaced, so a sample drawn file by file is still covered end to end. Deterministic."""
    if max_bytes is None:
        return texts
    sizes = [len(t.encode("utf-8", "surrogatepass")) for t in texts]
    total = sum(sizes)
    if total <= max_bytes:
        return texts
    step = -(-total // max_bytes)
    return texts[::step]


class Stage2Shard:
    """One share of the stage-2 pieces and their exact segmentations; runs in-process or as a Ray actor.

    The merge loop (`merge_loop`) holds the global pair counts and picks each merge; every shard re-encodes its own
    pieces and answers with the change of its pair counts. Pieces are independent of each other, so any split of
    the texts into shards gives the counts one process would have: the same merges in the same order, on as many
    cores (or nodes) as there are shards, with the pieces' memory spread over them."""

    def __init__(self, ranks: dict[bytes, int], pattern: str, max_words: int = MAX_WORDS) -> None:
        self.pattern = pattern
        self.state = _Stage2(ranks, max_words)
        self.pieces: Counter[str] = Counter()
        self.documents = 0
        self.bytes = 0

    def add_texts(self, texts: list[str]) -> None:
        """Split `texts` into stage-2 pieces and count them (encoded once all texts are in: `take_counts`)."""
        self.pieces.update(split_pieces(texts, self.pattern))
        self.documents += len(texts)
        self.bytes += sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)

    def add_refs(self, refs: list[Any], limits: list[int], index: int, shards: int) -> None:
        """`add_texts` on this shard's share of the sample: of the first limits[i] texts of each Ray object refs[i]
        (a sample slice's documents), every `shards`-th from `index`, so shards get equal shares of every slice."""
        import ray

        for ref, limit in zip(refs, limits, strict=True):
            if limit:
                self.add_texts(ray.get(ref)[:limit][index::shards])

    def _encode_pending(self) -> None:
        import tiktoken

        stage1 = tiktoken.Encoding(name="superbpe-stage1", pat_str=self.pattern, mergeable_ranks=self.state.rank,
                                   special_tokens={})
        for piece, freq in self.pieces.items():
            ids = stage1._encode_single_piece(piece.encode("utf-8", "surrogatepass"))
            if len(ids) > 1:
                self.state.add_word(ids, freq)
        self.unique_pieces = len(self.pieces)
        self.pieces = Counter()

    def take_counts(self) -> dict[tuple[int, int], int]:
        """The change of this shard's pair counts since the last call (the first call: all of them)."""
        if self.pieces:
            self._encode_pending()
        counts = self.state.pair_count
        self.state.pair_count = {}
        return {p: c for p, c in counts.items() if c}

    def merge(self, pair: tuple[int, int]) -> dict[tuple[int, int], int]:
        self.state.merge(pair)
        return self.take_counts()

    def cpu_seconds(self) -> float:
        """CPU time of this process: an actor's own work (on a shared machine, wall time says little)."""
        return time.process_time()

    def stats(self) -> dict[str, int]:
        return {"documents": self.documents, "bytes": self.bytes, "unique_pieces": getattr(self, "unique_pieces", 0),
                "pieces_trained": len(self.state.words)}


def merge_loop(ranks: dict[bytes, int], counts: dict[tuple[int, int], int], n_tokens: int,
               merge_all: Callable[[tuple[int, int]], list[dict[tuple[int, int], int]]],
               on_merge: Callable[[], None] | None = None) -> tuple[list[bytes], int]:
    """Merge the most frequent pair (ties: the smaller (left id, right id)) until `n_tokens` tokens or no pair is
    left; `merge_all(pair)` applies a merge in every shard and returns their count changes. Returns the tokens in
    rank order and how many candidates already were tokens (0: see the module docstring)."""
    token: list[bytes] = [b""] * len(ranks)
    for tok, r in ranks.items():
        token[r] = tok
    rank = dict(ranks)
    heap = [(-c, p) for p, c in counts.items() if c > 0]
    heapq.heapify(heap)
    skipped = 0
    while len(token) < n_tokens and heap:
        neg, pair = heapq.heappop(heap)
        count = counts.get(pair, 0)
        if count <= 0:
            continue
        if count != -neg:  # stale entry: the pair's count fell since it was pushed
            heapq.heappush(heap, (-count, pair))
            continue
        data = token[pair[0]] + token[pair[1]]
        if data in rank:  # cannot happen (see module docstring)
            skipped += 1
            counts.pop(pair)
            continue
        rank[data] = len(token)
        token.append(data)
        grown: set[tuple[int, int]] = set()
        for deltas in merge_all(pair):
            for p, d in deltas.items():
                counts[p] = counts.get(p, 0) + d
                if d > 0:
                    grown.add(p)
        # every split of the new token's bytes is gone from every piece (tiktoken merged them all)
        for k in range(1, len(data)):
            if data[:k] in rank and data[k:] in rank:
                counts.pop((rank[data[:k]], rank[data[k:]]), None)
        for p in sorted(grown):
            if counts.get(p, 0) > 0:
                heapq.heappush(heap, (-counts[p], p))
        if on_merge is not None:
            on_merge()
    return token, skipped


def _stats(shard_stats: list[dict[str, int]], n_stage1: int, tokens: list[bytes], skipped: int, max_words: int,
           t0: float, split_s: float, cpu: str) -> dict[str, Any]:
    total = {k: sum(s[k] for s in shard_stats) for k in shard_stats[0]}
    return {"stage2_merges": len(tokens) - n_stage1, "skipped_existing": skipped,
            "stage2_documents": total["documents"], "stage2_bytes": total["bytes"],
            "unique_pieces": total["unique_pieces"], "pieces_trained": total["pieces_trained"],
            "max_words": max_words, "shards": len(shard_stats), f"split_{cpu}seconds": round(split_s, 3),
            f"{cpu}seconds": round(time.perf_counter() - t0 if cpu == "wall_" else time.process_time() - t0, 3)}


def train_stage2(texts: list[str], ranks: dict[bytes, int], pattern: str, n_tokens: int,
                 max_words: int = MAX_WORDS, max_bytes: int | None = None, shards: int = 1
                 ) -> tuple[dict[bytes, int], dict[str, Any]]:
    """Continue the stage-1 `ranks` with stage-2 merges over `texts` (an evenly spaced subset of about `max_bytes`
    when given, see `stage2_subset`) pre-split by `pattern` until the vocabulary has `n_tokens` BPE tokens (or no
    pair is left: the caller checks the size), in this process. `shards` > 1 splits the pieces as the Ray version
    does (same result; for tests). Returns (ranks, statistics)."""
    t0 = time.process_time()
    texts = stage2_subset(list(texts), max_bytes)
    parts = [Stage2Shard(ranks, pattern, max_words) for _ in range(shards)]
    for i, shard in enumerate(parts):
        shard.add_texts(texts[i::shards])
    counts: dict[tuple[int, int], int] = {}
    for shard in parts:
        for p, c in shard.take_counts().items():
            counts[p] = counts.get(p, 0) + c
    split_s = time.process_time() - t0
    tokens, skipped = merge_loop(ranks, counts, n_tokens, lambda pair: [s.merge(pair) for s in parts])
    out = {tok: r for r, tok in enumerate(tokens)}
    return out, _stats([s.stats() for s in parts], len(ranks), tokens, skipped, max_words, t0, split_s, "")


def train_stage2_ray(refs: list[Any], limits: list[int], ranks: dict[bytes, int], pattern: str, n_tokens: int,
                     shards: int, max_words: int = MAX_WORDS, show_progress: bool | None = None
                     ) -> tuple[dict[bytes, int], dict[str, Any]]:
    """`train_stage2` over Ray actors: shard i splits and encodes every `shards`-th document from i of the first
    limits[j] of each ref j (the sample stage 1 trained on), the caller's process runs `merge_loop`. One round trip
    to every shard per merge. Progress (pipeline/progress.py) goes to stderr unless `show_progress` is False."""
    import ray

    t0, cpu0 = time.perf_counter(), time.process_time()
    shards = max(1, min(shards, sum(limits)))
    steps = Steps(n_tokens - len(ranks), "superbpe stage 2", "merge", show_progress)
    steps.note(f"splitting and counting the sample's pieces on {shards} actor(s)")
    actor = ray.remote(num_cpus=1, max_restarts=0)(Stage2Shard)
    parts = [actor.remote(ranks, pattern, max_words) for _ in range(shards)]
    ray.get([a.add_refs.remote(refs, limits, i, shards) for i, a in enumerate(parts)])
    counts: dict[tuple[int, int], int] = {}
    for part in ray.get([a.take_counts.remote() for a in parts]):
        for p, c in part.items():
            counts[p] = counts.get(p, 0) + c
    split_s = time.perf_counter() - t0
    steps.note(f"{len(counts):,} pairs counted in {split_s:,.1f} s; merging")
    try:
        tokens, skipped = merge_loop(ranks, counts, n_tokens,
                                     lambda pair: ray.get([a.merge.remote(pair) for a in parts]), steps.advance)
        shard_stats = ray.get([a.stats.remote() for a in parts])
        shard_cpu = ray.get([a.cpu_seconds.remote() for a in parts])
    finally:
        steps.close()
        for a in parts:
            ray.kill(a)
    out = {tok: r for r, tok in enumerate(tokens)}
    return out, {**_stats(shard_stats, len(ranks), tokens, skipped, max_words, t0, split_s, "wall_"),
                 "shard_cpu_seconds": [round(c, 1) for c in shard_cpu],
                 "driver_cpu_seconds": round(time.process_time() - cpu0, 1)}
