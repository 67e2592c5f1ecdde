"""Tokenizer evaluation (`tokshard eval-tokenizer`): compare tokenizers on the same text, and sweep vocabulary sizes.

A tokenizer is chosen by how well it compresses the text it will see and how evenly it treats the languages and
domains in that text. This module reads an evaluation text from any SRC (only the columns it needs), encodes it
with every tokenizer given -- a tokshard directory (encoded by our engine) or any HF `tokenizer.json` (a
downloaded GPT-2 or Llama one beside ours; tokenizer_adapters.py) -- and measures; `run` then has eval_report.py
write REPORTDIR/report.json plus PNG plots.

Definitions (also written into every report, under "definitions"):
- bytes/token: UTF-8 bytes of the text / tokens. No special tokens are added (ours: `encode_ordinary`; a
  tokenizer.json: `add_special_tokens=False`), and special-token text inside a document is encoded as text.
- words: maximal runs of Unicode letters, marks and digits, `[\\p{L}\\p{M}\\p{N}]+`. Scripts written without
  spaces (Chinese, Japanese, Thai) give whole phrases as one "word", so their tokens/word is not comparable with
  that of spaced scripts; compare tokenizers within a group instead.
- tokens/word: the mean over words of the number of tokens whose byte span overlaps the word's byte span (a
  token covering " hello" counts for "hello"; one token spanning two words counts for both; tokens made only
  of whitespace never count, see `_word_overlaps`). The >=3-token fraction is the share of words that overlap 3 or more
  tokens. Spans: ours by the cumulative byte lengths of the ids (`token_bytes`, exact); a tokenizer.json's
  as tokenizer_adapters.py describes.
- vocabulary used: distinct non-special ids in the encoded text / non-special vocabulary size.
- mean token length (bytes): over the vocabulary (unweighted, non-special entries), and over the tokens of the
  text. The second equals bytes/token whenever the tokens tile the text (every byte-level BPE); it is larger
  when the tokenizer adds bytes (SentencePiece's prefix space). How a tokenizer.json's entry lengths are
  known is in tokenizer_adapters.py; the report names the method per tokenizer.
- throughput: MB (1e6 bytes) of the evaluation text's first THROUGHPUT_MAX_BYTES encoded per wall-clock second,
  and per CPU second of this process (the honest number on a busy machine), best of `repeats`. Ours: our engine
  (`Tokenizer.encode_batch`; `tokshard eval-tokenizer` pins the engine's Rust pool to one thread); a tokenizer.json: HF
  tokenizers' `encode_batch` with TOKENIZERS_PARALLELISM=false. Each entry names its engine.
- premium (parallel text, `--parallel-key` + `--reference`): rows with the same key in different groups hold the
  same content. For group g: tokens of g / tokens of the reference, summed over the keys both groups have (rows
  sharing a key within a group are added up). The same ratio of UTF-8 bytes is reported once per group
  (`bytes_ratio`: what the script itself costs before tokenization).

Design decisions:
- The sweep trains once, at its largest size, with `jobs.train_tokenizer`, and takes every smaller size as the
  first merges of that one. BPE training is greedy and deterministic (rustbpe merges the most frequent pair, ties
  broken by the pair), so training at N on the same sample stops at exactly that prefix: the tests check a
  prefix against a direct training. One training instead of four, and an unreachable size fails first.
- REPORTDIR holds one report; the settings compared before it is replaced (tokenizer sha256s, text, options)
  are built here, the report, plots and summary are eval_report.py's.
- The evaluation text is held in memory (bounded by `max_bytes`); tokens are processed in chunks of documents.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import regex

from tokshard.pipeline import eval_report, jobs, premium, sources
from tokshard.pipeline.tokenizer import DEFAULT_PATTERN, METADATA_JSON, SPECIAL_TOKENS, Tokenizer, resolve_pattern
from tokshard.pipeline.tokenizer_adapters import (
    Encoded,
    EvalTokenizer,
    char_byte_offsets,
    load_tokenizer,
    unique_names,
)

SWEEP_DIR = "tokenizers"
DEFAULT_MAX_BYTES = 32_000_000  # enough text for stable ratios; the whole text is held in memory
DEFAULT_REPEATS = 3
THROUGHPUT_MAX_BYTES = 16_000_000  # throughput is timed on the first documents up to this many bytes
CHUNK_BYTES = 4 << 20  # documents are encoded and measured this much text at a time
MAX_GROUPS = 64
NULL_GROUP = "(null)"
NO_MATCH_GROUP = "(no match)"
WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")

DEFINITIONS = {
    "bytes_per_token": "UTF-8 bytes of the text / tokens; no special tokens added (ours: encode_ordinary; "
                       "tokenizer.json: add_special_tokens=False); special-token text is encoded as text",
    "words": "maximal runs of Unicode letters, marks and digits ([\\p{L}\\p{M}\\p{N}]+); scripts written without "
             "spaces (Chinese, Japanese, Thai) give whole phrases as one word",
    "tokens_per_word": "mean over words of the number of tokens whose byte span overlaps the word's byte span "
                       "(whitespace-only tokens excluded)",
    "words_3plus_fraction": "share of words overlapped by 3 or more tokens",
    "vocab_used_fraction": "distinct non-special ids in the encoded text / non-special vocabulary size",
    "mean_token_bytes_vocab": "mean byte length of the non-special vocabulary entries, unweighted "
                              "(token_bytes_method 'offsets': of the entries seen in the text only)",
    "mean_token_bytes_text": "mean byte length of the tokens of the encoded text (= bytes_per_token when the "
                             "tokens tile the text, as in every byte-level BPE)",
    "throughput": "MB (1e6 bytes) encoded per wall second and per CPU second of this process, best of the "
                  "repeats, single-threaded, over the first documents up to throughput.bytes",
    "premium": "tokens of group g / tokens of the reference group over the parallel keys both have; bytes_ratio "
               "is the same ratio of UTF-8 bytes",
    "vocab_size": "non-special vocabulary entries; vocab_size_total adds the special tokens",
}


# -- the evaluation text ------------------------------------------------------------------------------------
@dataclass
class EvalText:
    """The documents to evaluate on, their group and parallel key (or None), and their words' byte spans.

    Byte coordinates are global: document i occupies bytes [doc_offsets[i], doc_offsets[i+1]) of the text
    concatenated, so the tokens and words of many documents are compared in one vectorised pass.
    """

    texts: list[str]
    doc_offsets: np.ndarray  # int64, len n+1
    groups: list[str] | None
    keys: list[str | None] | None
    files: list[str]
    word_starts: np.ndarray  # int64 global byte spans of every word, in text order
    word_ends: np.ndarray
    word_offsets: np.ndarray  # int64, len n+1: the words of document i are word_offsets[i]:word_offsets[i+1]

    @property
    def text_bytes(self) -> int:
        return int(self.doc_offsets[-1])

    @property
    def doc_bytes(self) -> np.ndarray:
        return np.diff(self.doc_offsets)


def _word_spans(texts: Sequence[str], doc_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    counts = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        spans = np.array([m.span() for m in WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)
        if not text.isascii():
            spans = char_byte_offsets(text)[spans]
        spans += doc_offsets[i]
        starts.append(spans[:, 0])
        ends.append(spans[:, 1])
        counts[i] = len(spans)
    word_offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=word_offsets[1:])
    empty = np.zeros(0, dtype=np.int64)
    return np.concatenate([empty, *starts]), np.concatenate([empty, *ends]), word_offsets


def _group_of(value: Any, pattern: regex.Pattern | None) -> str:
    if value is None:
        return NULL_GROUP
    text = str(value)
    if pattern is None:
        return text
    m = pattern.search(text)
    if m is None:
        return NO_MATCH_GROUP
    return m.group(1) if m.groups() else m.group(0)


@dataclass
class _Columns:
    """What read_eval_text reads: the text, and optionally the group and parallel-key columns."""

    text: str
    group_by: str | None
    group_pattern: regex.Pattern | None
    parallel_key: str | None

    @property
    def flags(self) -> dict[str, str]:
        """Each column read, with the option that named it (for the error when a file lacks it)."""
        wanted = {self.text: "--text-column", self.group_by: "--group-by", self.parallel_key: "--parallel-key"}
        return {c: flag for c, flag in wanted.items() if c is not None}


@dataclass
class _Collected:
    """The documents read so far, and the limits that stop the reading."""

    limit_docs: int | None
    max_bytes: int | None
    texts: list[str]
    groups: list[str]
    keys: list[str | None]
    lengths: list[np.ndarray]
    total: int = 0

    def full(self) -> bool:
        return ((self.limit_docs is not None and len(self.texts) >= self.limit_docs)
                or (self.max_bytes is not None and self.total >= self.max_bytes))

    def how_many(self, nbytes: np.ndarray) -> int:
        """How many of these documents (their byte lengths) still fit the limits."""
        take = len(nbytes)
        if self.limit_docs is not None:
            take = min(take, self.limit_docs - len(self.texts))
        if self.max_bytes is not None:  # documents until the total reaches max_bytes (the last one crosses it)
            cum = self.total + np.cumsum(nbytes[:take])
            take = min(take, int(np.searchsorted(cum, self.max_bytes, side="left")) + 1)
        return take


def _group_pattern(group_by: str | None, group_regex: str | None) -> regex.Pattern | None:
    if group_regex is None:
        return None
    if group_by is None:
        raise ValueError("--group-regex needs --group-by: it extracts the group from that column's value")
    try:
        return regex.compile(group_regex)
    except regex.error as e:
        raise ValueError(f"--group-regex {group_regex!r} is not a valid regex: {e}") from None


def _read_file(path: str, cols: _Columns, got: _Collected) -> None:
    """Add the documents of one parquet file, one row group at a time, until `got` is full."""
    pf = sources.open_parquet(path)
    names = pf.schema_arrow.names
    sources.check_text_column(path, pf.schema_arrow, cols.text)
    flags = cols.flags
    for column, flag in flags.items():
        if column not in names:
            raise sources.SourceError(f"{path}: no column {column!r} (columns: {', '.join(names)}); check {flag}")
    row = 0
    for rg in range(pf.metadata.num_row_groups):
        if got.full():
            break
        try:
            table = pf.read_row_group(rg, columns=list(flags))
        except (OSError, pa.ArrowInvalid) as e:
            raise sources.SourceError(f"{path}: row group {rg} cannot be read ({e})") from e
        _add_row_group(path, table, row, cols, got)
        row += table.num_rows


def _add_row_group(path: str, table: pa.Table, row: int, cols: _Columns, got: _Collected) -> None:
    """Add the first documents of one row group (starting at file row `row`) that fit the limits."""
    column = table.column(cols.text)
    if column.null_count:
        bad = column.to_pylist().index(None)
        raise sources.SourceError(f"{path}: row {row + bad} has a null {cols.text!r}; drop or fill it")
    import pyarrow.compute as pc  # here, not at the top: ~35 ms to import, and `tokshard encode` never needs it
    nbytes = pc.binary_length(column).to_numpy().astype(np.int64)
    take = got.how_many(nbytes)
    try:
        got.texts += column.slice(0, take).to_pylist()
    except UnicodeDecodeError:
        raise sources.SourceError(sources.invalid_utf8_message(path, column, row, cols.text)) from None
    if cols.group_by is not None:
        got.groups += [_group_of(v, cols.group_pattern)
                       for v in table.column(cols.group_by).slice(0, take).to_pylist()]
    if cols.parallel_key is not None:
        got.keys += [None if v is None else str(v) for v in table.column(cols.parallel_key).slice(0, take).to_pylist()]
    got.lengths.append(nbytes[:take])
    got.total += int(nbytes[:take].sum())


def read_eval_text(source: str | None, text_column: str = sources.DEFAULT_TEXT_COLUMN, group_by: str | None = None,
                   group_regex: str | None = None, parallel_key: str | None = None, limit_docs: int | None = None,
                   max_bytes: int | None = DEFAULT_MAX_BYTES) -> EvalText:
    """The first documents of `source` (file order) up to `limit_docs` documents / about `max_bytes` bytes,
    reading only the text, group and key columns, one row group at a time."""
    files = sources.resolve_files(source)
    cols = _Columns(text_column, group_by, _group_pattern(group_by, group_regex), parallel_key)
    got = _Collected(limit_docs, max_bytes, [], [], [], [])
    used_files = []
    for path in files:
        if got.full():
            break
        _read_file(path, cols, got)
        used_files.append(path)
    if not got.texts:
        raise sources.SourceError(f"source {source or 'bundled-sample'!r} gave no documents to evaluate on")
    if group_by is not None and len(set(got.groups)) > MAX_GROUPS:
        raise ValueError(f"--group-by {group_by!r} has {len(set(got.groups)):,} distinct values in the evaluation "
                         f"text; at most {MAX_GROUPS} groups are compared (coarsen them with --group-regex)")
    doc_offsets = np.zeros(len(got.texts) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(got.lengths), out=doc_offsets[1:])
    word_starts, word_ends, word_offsets = _word_spans(got.texts, doc_offsets)
    return EvalText(got.texts, doc_offsets, got.groups if group_by is not None else None,
                    got.keys if parallel_key is not None else None, used_files, word_starts, word_ends, word_offsets)


# -- counting ----------------------------------------------------------------------------------------------
def _chunks(doc_offsets: np.ndarray) -> list[tuple[int, int]]:
    bounds = [0]
    n = len(doc_offsets) - 1
    while bounds[-1] < n:
        stop = int(np.searchsorted(doc_offsets, doc_offsets[bounds[-1]] + CHUNK_BYTES, side="right")) - 1
        bounds.append(min(n, max(stop, bounds[-1] + 1)))
    return list(itertools.pairwise(bounds))


@dataclass
class Counts:
    """Per-document sums for one tokenizer, and the ids seen per group (row 0 when there are no groups)."""

    tokens: np.ndarray
    token_bytes: np.ndarray
    word_tokens: np.ndarray
    words_3plus: np.ndarray
    seen: np.ndarray  # bool[groups, id space]
    measured_bytes: np.ndarray | None  # per id byte length from offsets (token_bytes_method "offsets")

    def grow(self, space: int, blank: np.ndarray) -> np.ndarray:
        """Widen the per-id tables to `space` ids (a tokenizer.json can emit ids outside the vocabulary it
        lists); returns `blank` widened the same way."""
        grow = space - self.seen.shape[1]
        self.seen = np.pad(self.seen, ((0, 0), (0, grow)))
        if self.measured_bytes is not None:
            self.measured_bytes = np.pad(self.measured_bytes, (0, grow))
        return np.pad(blank, (0, grow))


def _word_overlaps(enc: Encoded, blank: np.ndarray, word_starts: np.ndarray, word_ends: np.ndarray) -> np.ndarray:
    """For each word [ws, we): how many tokens overlap it, i.e. start < we and end > ws.

    Counting the two conditions over sorted starts and sorted ends separately is exact for any spans with
    start <= end. Empty spans and whitespace-only tokens carry nothing of a word: HF aligns SentencePiece's
    prefix space with the first character of the text, which would otherwise count it for the first word.
    """
    real = (enc.ends > enc.starts) & ~blank[enc.ids]
    starts, ends = np.sort(enc.starts[real]), np.sort(enc.ends[real])
    return np.searchsorted(starts, word_ends, side="left") - np.searchsorted(ends, word_starts, side="right")


def count(tok: EvalTokenizer, text: EvalText, group_index: np.ndarray, n_groups: int) -> Counts:
    """Encode `text` chunk by chunk and sum, per document, tokens, token bytes and word overlaps."""
    n = len(text.texts)
    c = Counts(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
               np.zeros((n_groups, len(tok.nonspecial)), dtype=bool),
               np.zeros(len(tok.nonspecial), dtype=np.int64) if tok.token_bytes is None else None)
    blank = tok.blank
    word_doc = np.repeat(np.arange(n), np.diff(text.word_offsets))
    for a, b in _chunks(text.doc_offsets):
        enc = tok.encode_spans(text.texts[a:b], text.doc_offsets[a : b + 1])
        if len(enc.ids) and enc.ids.max() >= c.seen.shape[1]:  # an id outside the vocabulary we know
            blank = c.grow(int(enc.ids.max()) + 1, blank)
        token_doc = np.repeat(np.arange(a, b), enc.counts)
        c.tokens[a:b] = enc.counts
        spans = enc.ends - enc.starts
        lengths = spans if tok.token_bytes is None else tok.token_bytes[enc.ids]
        c.token_bytes[a:b] = np.bincount(token_doc - a, weights=lengths, minlength=b - a).astype(np.int64)
        c.seen[group_index[token_doc], enc.ids] = True
        if c.measured_bytes is not None:
            c.measured_bytes[enc.ids] = spans
        w = slice(text.word_offsets[a], text.word_offsets[b])
        per_word = _word_overlaps(enc, blank, text.word_starts[w], text.word_ends[w])
        docs = word_doc[w] - a
        c.word_tokens[a:b] = np.bincount(docs, weights=per_word, minlength=b - a).astype(np.int64)
        c.words_3plus[a:b] = np.bincount(docs, weights=per_word >= 3, minlength=b - a).astype(np.int64)
    return c


def throughput(tok: EvalTokenizer, text: EvalText, repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """Encode the first documents up to THROUGHPUT_MAX_BYTES `repeats` times on one thread; the best run."""
    n = max(1, int(np.searchsorted(text.doc_offsets, THROUGHPUT_MAX_BYTES, side="right")) - 1)
    subset, nbytes = text.texts[:n], int(text.doc_offsets[n])
    engine, short = tok.engine_names()
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # HF reads it on every batch call
    try:
        walls, cpus = [], []
        for _ in range(max(1, repeats)):
            w0, c0 = time.perf_counter(), time.process_time()
            tok.encode_batch(subset)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    return {"engine": engine, "engine_short": short, "documents": n, "bytes": nbytes, "repeats": len(walls),
            "mb_per_s": round(nbytes / 1e6 / max(min(walls), 1e-9), 3),
            "mb_per_cpu_s": round(nbytes / 1e6 / max(min(cpus), 1e-9), 3),
            "best_seconds": round(min(walls), 4)}


# -- metrics -----------------------------------------------------------------------------------------------
def _ratio(a: float, b: float, digits: int = 6) -> float | None:
    return round(a / b, digits) if b else None


def scope_metrics(c: Counts, tok: EvalTokenizer, text: EvalText, docs: np.ndarray, seen: np.ndarray
                  ) -> dict[str, Any]:
    """The numbers for one set of documents (a bool mask) whose ids seen are `seen`."""
    nonspecial = np.pad(tok.nonspecial, (0, len(seen) - len(tok.nonspecial)))
    words = int(np.diff(text.word_offsets)[docs].sum())
    tokens = int(c.tokens[docs].sum())
    nbytes = int(text.doc_bytes[docs].sum())
    used = int((seen & nonspecial).sum())
    return {"documents": int(docs.sum()), "text_bytes": nbytes, "tokens": tokens, "words": words,
            "bytes_per_token": _ratio(nbytes, tokens), "tokens_per_word": _ratio(int(c.word_tokens[docs].sum()), words),
            "words_3plus_fraction": _ratio(int(c.words_3plus[docs].sum()), words),
            "vocab_used": used, "vocab_used_fraction": _ratio(used, tok.vocab_size),
            "mean_token_bytes_text": _ratio(int(c.token_bytes[docs].sum()), tokens)}


def _vocab_mean(tok: EvalTokenizer, c: Counts) -> tuple[float | None, int]:
    """Mean byte length over the non-special vocabulary, and how many entries it covers."""
    if tok.token_bytes is not None:
        lengths = tok.token_bytes[: len(tok.nonspecial)][tok.nonspecial]
    else:
        known = c.seen.any(axis=0)[: len(tok.nonspecial)] & tok.nonspecial
        lengths = c.measured_bytes[: len(tok.nonspecial)][known]
    return (round(float(lengths.mean()), 6) if len(lengths) else None), len(lengths)


def premiums(values: np.ndarray, group_index: np.ndarray, group_names: list[str], keys: list[str | None],
             reference: int) -> dict[str, dict[str, Any]]:
    """Per group: sum of `values` over the parallel keys it shares with the reference / the reference's sum."""
    has_key = np.array([k is not None for k in keys])
    uniq, key_index = np.unique(np.array([k or "" for k in keys], dtype=object)[has_key], return_inverse=True)
    g = group_index[has_key]
    total = np.zeros((len(group_names), len(uniq)))
    present = np.zeros((len(group_names), len(uniq)), dtype=bool)
    np.add.at(total, (g, key_index), values[has_key])
    present[g, key_index] = True
    out = {}
    for i, name in enumerate(group_names):
        both = present[i] & present[reference]
        num, den = float(total[i, both].sum()), float(total[reference, both].sum())
        out[name] = {"keys": int(both.sum()), "value": _ratio(num, den), "group_total": int(num),
                     "reference_total": int(den)}
    return out


@dataclass
class _Grouping:
    """The groups of the evaluation text (sorted names), each document's group, and the reference group's index
    when premiums are computed."""

    names: list[str]
    index: np.ndarray  # int64 per document; all 0 when there are no groups
    reference: int | None

    @classmethod
    def of(cls, text: EvalText, reference: str | None) -> _Grouping:
        names = sorted(set(text.groups)) if text.groups is not None else []
        number = {name: i for i, name in enumerate(names)}
        index = np.array([number[g] for g in text.groups] if text.groups is not None else [0] * len(text.texts),
                         dtype=np.int64)
        ref = None
        if text.keys is not None:
            if reference is None or reference not in names:
                what = "--parallel-key needs --reference GROUP" if reference is None else \
                    f"--reference {reference!r} is not a group of the evaluation text"
                raise ValueError(f"{what} (groups: {', '.join(names)})")
            ref = names.index(reference)
        return cls(names, index, ref)

    def premiums(self, values: np.ndarray, keys: list[str | None] | None) -> dict[str, dict[str, Any]]:
        assert keys is not None and self.reference is not None
        return premiums(values, self.index, self.names, keys, self.reference)


def _tokenizer_entry(tok: EvalTokenizer, text: EvalText, grouping: _Grouping, repeats: int) -> dict[str, Any]:
    """One tokenizer's part of the report: what it is, its numbers overall, per group, premiums, throughput."""
    c = count(tok, text, grouping.index, max(1, len(grouping.names)))
    all_docs = np.ones(len(text.texts), dtype=bool)
    vocab_mean, vocab_covered = _vocab_mean(tok, c)
    entry: dict[str, Any] = {
        "name": tok.name, "path": tok.path, "kind": tok.kind, "sha256": tok.sha256,
        "vocab_size": tok.vocab_size, "vocab_size_total": tok.vocab_size + tok.special_tokens,
        "token_bytes_method": tok.token_bytes_method,
        "mean_token_bytes_vocab": vocab_mean, "mean_token_bytes_vocab_entries": vocab_covered,
        "overall": scope_metrics(c, tok, text, all_docs, c.seen.any(axis=0)),
    }
    if grouping.names:
        entry["groups"] = {name: scope_metrics(c, tok, text, grouping.index == i, c.seen[i])
                           for i, name in enumerate(grouping.names)}
    if grouping.reference is not None:
        entry["premium"] = {name: {"premium": p["value"], "keys": p["keys"], "tokens": p["group_total"],
                                   "reference_tokens": p["reference_total"]}
                            for name, p in grouping.premiums(c.tokens.astype(float), text.keys).items()}
    entry["throughput"] = throughput(tok, text, repeats)
    entry["engine"] = entry["throughput"]["engine"]
    return entry


def evaluate(toks: list[EvalTokenizer], text: EvalText, reference: str | None = None,
             repeats: int = DEFAULT_REPEATS, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every tokenizer's numbers on `text`: overall, per group, premiums; the report's "tokenizers" part."""
    grouping = _Grouping.of(text, reference)
    results = []
    for tok in toks:
        if log:
            log(f"evaluating {tok.name} ({tok.kind}, {tok.vocab_size:,} tokens)")
        results.append(_tokenizer_entry(tok, text, grouping, repeats))
    out: dict[str, Any] = {"tokenizers": results}
    if grouping.names:
        out["groups"] = {name: {"documents": int((grouping.index == i).sum()),
                                "text_bytes": int(text.doc_bytes[grouping.index == i].sum()),
                                "words": int(np.diff(text.word_offsets)[grouping.index == i].sum())}
                         for i, name in enumerate(grouping.names)}
    if grouping.reference is not None:
        ratios = grouping.premiums(text.doc_bytes.astype(float), text.keys)
        out["parallel"] = {"reference": reference,
                           "groups": {n: {"keys": r["keys"], "bytes_ratio": r["value"]} for n, r in ratios.items()}}
    return out


# -- vocabulary-size sweep ---------------------------------------------------------------------------------
def parse_sizes(spec: str) -> list[int]:
    """"8k,16k,32k,64k" or "512,1024" -> sorted distinct sizes (k = 1024)."""
    sizes = set()
    for part in (p.strip().lower() for p in spec.split(",") if p.strip()):
        try:
            sizes.add(int(part[:-1]) * 1024 if part.endswith("k") else int(part))
        except ValueError:
            raise ValueError(f"--sweep: {part!r} is not a vocabulary size (use e.g. 8k,16k,32k or 512,1024)") from None
    if not sizes:
        raise ValueError("--sweep: no sizes given (e.g. --sweep 8k,16k,32k,64k)")
    smallest = 256 + len(SPECIAL_TOKENS) + 1
    if min(sizes) < smallest:
        raise ValueError(f"--sweep size {min(sizes):,} is below the smallest vocabulary, {smallest} (256 byte "
                         f"tokens + {len(SPECIAL_TOKENS)} special tokens + 1 merge)")
    return sorted(sizes)


def sweep_dir(out: Path, size: int) -> Path:
    return out / SWEEP_DIR / f"vocab-{size}"


def train_sweep(sizes: list[int], out: Path, train_source: str | None, *, sample_bytes: int, pattern: str,
                seed: int, text_column: str, id_column: str, address: str | None = None,
                workers: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the largest size on the sample (or reuse it), derive the smaller ones as its first merges."""
    largest = max(sizes)
    top_dir = sweep_dir(out, largest)
    settings = {"sample_bytes": sample_bytes, "pattern": pattern, "seed": seed, "text_column": text_column,
                "id_column": id_column}
    t0 = time.time()
    trained = jobs.reusable_tokenizer(top_dir, train_source, vocab_size=largest, **settings)
    if log:
        log(f"sweep: {'reusing' if trained else 'training'} {top_dir.name} on {train_source or 'the bundled sample'}"
            + (", trained earlier with these settings" if trained else "; smaller sizes are its first merges"))
    if trained is None:
        try:
            trained = jobs.train_tokenizer(train_source, top_dir, vocab_size=largest, address=address,
                                           workers=workers, **settings)
        except ValueError as e:
            # train_tokenizer's advice names --vocab-size; here the size comes from --sweep
            advice = str(e).replace("lower --vocab-size", "drop that --sweep size")
            raise ValueError(f"--sweep size {largest:,} cannot be trained: {advice}") from None
    parent = _derive_prefixes(sizes, out, top_dir)
    return {"sizes": sizes, "trained": top_dir.name, "reused": trained.reused,
            "train_source": train_source or "bundled-sample", "sample_documents": trained.sample_documents,
            "sample_bytes": trained.sample_bytes, "sample_bytes_limit": sample_bytes, "pattern": parent.pattern_name,
            "seed": seed, "text_column": text_column, "id_column": id_column, "seconds": round(time.time() - t0, 2)}


def _derive_prefixes(sizes: list[int], out: Path, top_dir: Path) -> Tokenizer:
    """Save every smaller size as the first merges of the tokenizer in `top_dir` (kept when derived from this
    very tokenizer before); returns that tokenizer."""
    parent = Tokenizer.load(top_dir)
    ordered = sorted(parent.ranks.items(), key=lambda kv: kv[1])
    for size in sizes:
        d = sweep_dir(out, size)
        if d == top_dir:
            continue
        if (d / METADATA_JSON).is_file():
            meta = json.loads((d / METADATA_JSON).read_text())
            if (meta.get("training") or {}).get("prefix_of_sha256") == parent.sha256 and meta.get("vocab_size") == size:
                continue  # derived from this very parent before
        prefix = dict(ordered[: size - len(SPECIAL_TOKENS)])
        tok = Tokenizer.from_ranks(prefix, parent.pattern, parent.pattern_name)
        training = {**(parent.metadata.get("training") or {}), "prefix_of": top_dir.name,
                    "prefix_of_sha256": parent.sha256}
        tok.save(d, training=training)
    return parent


def _check_options(tokenizer_paths: Sequence[str], sweep: str | None, group_by: str | None,
                   parallel_key: str | None, reference: str | None) -> None:
    if not tokenizer_paths and not sweep:
        raise ValueError("give at least one tokenizer (a tokshard directory or a tokenizer.json) or --sweep SIZES")
    if parallel_key is not None and group_by is None:
        raise ValueError("--parallel-key needs --group-by: the premium compares groups (e.g. languages)")
    if reference is not None and parallel_key is None:
        raise ValueError("--reference needs --parallel-key: premiums are computed over parallel text only")


def _sweep_points(report: dict[str, Any], out: Path, sizes: list[int]) -> list[dict[str, Any]]:
    """The sweep's tokenizers' headline numbers, smallest size first (for the sweep plot and summary)."""
    by_path = {t["path"]: t for t in report["tokenizers"]}
    points = []
    for s in sizes:
        t = by_path[str(sweep_dir(out, s))]
        points.append({"vocab_size": s, "name": t["name"], "bytes_per_token": t["overall"]["bytes_per_token"],
                       "tokens_per_word": t["overall"]["tokens_per_word"]})
    return points


def run(tokenizer_paths: Sequence[str], out: str | os.PathLike[str], *, source: str | None = None,
        text_column: str = sources.DEFAULT_TEXT_COLUMN, id_column: str = sources.DEFAULT_ID_COLUMN,
        group_by: str | None = None, group_regex: str | None = None, parallel_key: str | None = None,
        reference: str | None = None, limit_docs: int | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES,
        repeats: int = DEFAULT_REPEATS, sweep: str | None = None, train_source: str | None = None,
        sample_bytes: int = jobs.DEFAULT_SAMPLE_BYTES, pattern: str = DEFAULT_PATTERN, seed: int = 0,
        address: str | None = None, workers: int | None = None, force: bool = False,
        sweep_alpha: str | None = None, balance_by: str | None = None, balance_weights: str | None = None,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`tokshard eval-tokenizer`: evaluate the tokenizers (and a sweep's), write REPORTDIR; returns the report.
    With `sweep_alpha` the one `sweep` size is trained once per alpha, balanced by `balance_by` (premium.py)."""
    out = Path(out)
    train_source = train_source if train_source is not None else source
    alpha_settings = None if sweep_alpha is None else premium.sweep_settings(
        sweep_alpha, sweep, balance_by, balance_weights, train_source, sample_bytes, pattern, seed, parse_sizes)
    _check_options(tokenizer_paths, sweep, group_by, parallel_key, reference)
    toks = [load_tokenizer(p) for p in tokenizer_paths]
    sizes = parse_sizes(sweep) if sweep and alpha_settings is None else []
    sweep_settings = None
    if sizes:
        sweep_settings = {"sizes": sizes, "train_source": train_source or "bundled-sample", "sample_bytes":
                          sample_bytes, "pattern": resolve_pattern(pattern)[1], "seed": seed}
    settings = {"tokenizers": [t.sha256 for t in toks], "source": source or "bundled-sample",
                "files": sources.resolve_files(source), "text_column": text_column, "group_by": group_by,
                "group_regex": group_regex, "parallel_key": parallel_key, "reference": reference,
                "limit_docs": limit_docs, "max_bytes": max_bytes, "sweep": sweep_settings,
                **({"sweep_alpha": alpha_settings} if alpha_settings else {})}
    eval_report.check_out_dir(out, settings, force)
    text = read_eval_text(source, text_column, group_by, group_regex, parallel_key, limit_docs, max_bytes)
    if reference is not None and reference not in set(text.groups or []):
        raise ValueError(f"--reference {reference!r} is not a group of the evaluation text "
                         f"(groups: {', '.join(sorted(set(text.groups or [])))})")
    sweep_info = None
    if sizes:
        sweep_info = train_sweep(sizes, out, train_source, sample_bytes=sample_bytes, pattern=pattern, seed=seed,
                                 text_column=text_column, id_column=id_column, address=address, workers=workers,
                                 log=log)
        toks += [load_tokenizer(sweep_dir(out, s)) for s in sizes]
    alpha_sweep = None
    if alpha_settings is not None:
        alpha_sweep = premium.train_alpha_sweep(alpha_settings, out, text_column=text_column, id_column=id_column,
                                                address=address, workers=workers, log=log)
        toks += [load_tokenizer(d) for d in alpha_sweep["dirs"]]
    unique_names(toks)
    report: dict[str, Any] = {
        "format": eval_report.FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings,
        "source": {"source": source or "bundled-sample", "files": text.files, "text_column": text_column,
                   "group_by": group_by, "group_regex": group_regex, "parallel_key": parallel_key,
                   "documents": len(text.texts), "text_bytes": text.text_bytes, "words": len(text.word_starts),
                   "limit_docs": limit_docs, "max_bytes": max_bytes},
        "definitions": DEFINITIONS,
        **evaluate(toks, text, reference, repeats, log),
    }
    if sweep_info is not None:
        sweep_info["in_sample"] = (sweep_info["train_source"] == report["source"]["source"])
        sweep_info["points"] = _sweep_points(report, out, sizes)
        report["sweep"] = sweep_info
    premium.add_to_report(report, out, alpha_sweep)
    eval_report.write_report(out, report)
    return report
