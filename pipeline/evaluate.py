"""Tokenizer evaluation (`tokshard eval-tokenizer`): compare tokenizers on the same text, and sweep vocabulary sizes.

A tokenizer is chosen by how well it compresses the text it will see and how evenly it treats the languages and
domains in that text. This module reads an evaluation text from any SRC (only the columns it needs), encodes it
with every tokenizer given -- a tokshard directory (encoded by our engine) or any HF `tokenizer.json` (a
downloaded GPT-2 or Llama one beside ours) -- and writes REPORTDIR/report.json plus PNG plots.

Definitions (also written into every report, under "definitions"):
- bytes/token: UTF-8 bytes of the text / tokens. No special tokens are added (ours: `encode_ordinary`; a
  tokenizer.json: `add_special_tokens=False`), and special-token text inside a document is encoded as text.
- words: maximal runs of Unicode letters, marks and digits, `[\\p{L}\\p{M}\\p{N}]+`. Scripts written without
  spaces (Chinese, Japanese, Thai) give whole phrases as one "word", so their tokens/word is not comparable with
  that of spaced scripts; compare tokenizers within a group instead.
- tokens/word: the mean over words of the number of tokens whose byte span overlaps the word's byte span (a
  token covering " hello" counts for "hello"; one token spanning two words counts for both; tokens made only
  of whitespace never count, see `count`). The >=3-token fraction is the share of words that overlap 3 or more
  tokens. Spans: ours by the cumulative byte lengths of the
  ids (`token_bytes`, exact); a tokenizer.json by HF's character offsets converted to bytes (a token holding part
  of a character gets the whole character's span, which gives the same overlaps).
- vocabulary used: distinct non-special ids in the encoded text / non-special vocabulary size.
- mean token length (bytes): over the vocabulary (unweighted, non-special entries), and over the tokens of the
  text. The second equals bytes/token whenever the tokens tile the text (every byte-level BPE); it is larger
  when the tokenizer adds bytes (SentencePiece's prefix space). Byte lengths of a tokenizer.json's entries:
  `byte-level` (GPT-2's byte-to-character map), `metaspace` (SentencePiece: the replacement char is one space,
  `<0xNN>` byte-fallback tokens are one byte), otherwise `offsets`: each id's byte span in the evaluation text,
  so the vocabulary mean covers only the ids seen. The report names the method per tokenizer.
- throughput: MB (1e6 bytes) of the evaluation text's first THROUGHPUT_MAX_BYTES encoded per wall-clock second,
  and per CPU second of this process (the honest number on a busy machine), best of `repeats`. Ours: our engine
  (`Tokenizer.encode_batch`; `tokshard eval-tokenizer` pins riptoken to one thread); a tokenizer.json: HF
  tokenizers' `encode_batch` with TOKENIZERS_PARALLELISM=false. Each entry names its engine.
- premium (parallel text, `--parallel-key` + `--reference`): rows with the same key in different groups hold the
  same content. For group g: tokens of g / tokens of the reference, summed over the keys both groups have (rows
  sharing a key within a group are added up). The same ratio of UTF-8 bytes is reported once per group
  (`bytes_ratio`: what the script itself costs before tokenization).

Design decisions:
- The sweep trains once, at its largest size, with `jobs.train_tokenizer`, and takes every smaller size as the
  first merges of that one. BPE training is greedy and deterministic (rustbpe merges the most frequent pair, ties
  broken by the pair), so training at N on the same sample stops at exactly that prefix: tests/test_evaluate.py
  checks a prefix against a direct training. One training instead of four, and an unreachable size fails first.
- REPORTDIR holds one report. Running again with the same settings (tokenizer sha256s, text, options) refreshes
  it; different settings are refused with the differences spelled out unless `force`, like encode's OUT.
  report.json is written last, atomically, after the plots, so a report on disk has its plots.
- The evaluation text is held in memory (bounded by `max_bytes`); tokens are processed in chunks of documents.
"""

from __future__ import annotations

import io
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
import pyarrow.compute as pc
import regex

from tokshard.pipeline import atomic, jobs, sources
from tokshard.pipeline.tokenizer import (
    DEFAULT_PATTERN,
    METADATA_JSON,
    SPECIAL_TOKENS,
    TOKENIZER_JSON,
    Tokenizer,
    _unicode_to_byte,
    resolve_pattern,
    sha256_file,
)

FORMAT = "tokshard-tokenizer-eval/1"
REPORT_JSON = "report.json"
PLOTS = ("bytes_per_token.png", "premium.png", "sweep.png")
SWEEP_DIR = "tokenizers"
DEFAULT_MAX_BYTES = 32_000_000  # enough text for stable ratios; the whole text is held in memory
DEFAULT_REPEATS = 3
THROUGHPUT_MAX_BYTES = 16_000_000  # throughput is timed on the first documents up to this many bytes
CHUNK_BYTES = 4 << 20  # documents are encoded and measured this much text at a time
MAX_GROUPS = 64
NULL_GROUP = "(null)"
NO_MATCH_GROUP = "(no match)"
WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")
_BYTE_FALLBACK = regex.compile(r"<0x[0-9A-Fa-f]{2}>")

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


def char_byte_offsets(text: str) -> np.ndarray:
    """int64 array of len(text)+1: the UTF-8 byte offset of each character (and of the end)."""
    if text.isascii():
        return np.arange(len(text) + 1, dtype=np.int64)
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    widths = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    out = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(widths, out=out[1:])
    return out


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


def read_eval_text(source: str | None, text_column: str = sources.DEFAULT_TEXT_COLUMN, group_by: str | None = None,
                   group_regex: str | None = None, parallel_key: str | None = None, limit_docs: int | None = None,
                   max_bytes: int | None = DEFAULT_MAX_BYTES) -> EvalText:
    """The first documents of `source` (file order) up to `limit_docs` documents / about `max_bytes` bytes,
    reading only the text, group and key columns, one row group at a time."""
    files = sources.resolve_files(source)
    pattern = None
    if group_regex is not None:
        if group_by is None:
            raise ValueError("--group-regex needs --group-by: it extracts the group from that column's value")
        try:
            pattern = regex.compile(group_regex)
        except regex.error as e:
            raise ValueError(f"--group-regex {group_regex!r} is not a valid regex: {e}") from None
    wanted = {text_column: "--text-column", group_by: "--group-by", parallel_key: "--parallel-key"}
    columns = list(dict.fromkeys(c for c in wanted if c is not None))
    texts: list[str] = []
    groups: list[str] = []
    keys: list[str | None] = []
    lengths: list[np.ndarray] = []
    total, used_files = 0, []

    def full() -> bool:
        return (limit_docs is not None and len(texts) >= limit_docs) or (max_bytes is not None and total >= max_bytes)

    for path in files:
        if full():
            break
        pf = sources.open_parquet(path)
        names = pf.schema_arrow.names
        sources.check_text_column(path, pf.schema_arrow, text_column)
        for column in columns:
            if column not in names:
                raise sources.SourceError(f"{path}: no column {column!r} (columns: {', '.join(names)}); "
                                          f"check {wanted[column]}")
        used_files.append(path)
        row = 0
        for rg in range(pf.metadata.num_row_groups):
            if full():
                break
            try:
                table = pf.read_row_group(rg, columns=columns)
            except (OSError, pa.ArrowInvalid) as e:
                raise sources.SourceError(f"{path}: row group {rg} cannot be read ({e})") from e
            column = table.column(text_column)
            if column.null_count:
                bad = column.to_pylist().index(None)
                raise sources.SourceError(f"{path}: row {row + bad} has a null {text_column!r}; drop or fill it")
            nbytes = pc.binary_length(column).to_numpy().astype(np.int64)
            take = len(nbytes)
            if limit_docs is not None:
                take = min(take, limit_docs - len(texts))
            if max_bytes is not None:  # documents until the total reaches max_bytes (the last one crosses it)
                cum = total + np.cumsum(nbytes[:take])
                take = min(take, int(np.searchsorted(cum, max_bytes, side="left")) + 1)
            try:
                texts += column.slice(0, take).to_pylist()
            except UnicodeDecodeError:
                raise sources.SourceError(sources.invalid_utf8_message(path, column, row, text_column)) from None
            if group_by is not None:
                groups += [_group_of(v, pattern) for v in table.column(group_by).slice(0, take).to_pylist()]
            if parallel_key is not None:
                keys += [None if v is None else str(v) for v in table.column(parallel_key).slice(0, take).to_pylist()]
            lengths.append(nbytes[:take])
            total += int(nbytes[:take].sum())
            row += table.num_rows
    if not texts:
        raise sources.SourceError(f"source {source or 'bundled-sample'!r} gave no documents to evaluate on")
    if group_by is not None and len(set(groups)) > MAX_GROUPS:
        raise ValueError(f"--group-by {group_by!r} has {len(set(groups)):,} distinct values in the evaluation text; "
                         f"at most {MAX_GROUPS} groups are compared (coarsen them with --group-regex)")
    doc_offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=doc_offsets[1:])
    word_starts, word_ends, word_offsets = _word_spans(texts, doc_offsets)
    return EvalText(texts, doc_offsets, groups if group_by is not None else None,
                    keys if parallel_key is not None else None, used_files, word_starts, word_ends, word_offsets)


# -- tokenizers: ours or any tokenizer.json -----------------------------------------------------------------
@dataclass
class EvalTokenizer:
    """One tokenizer under evaluation, behind one interface whatever its origin.

    `nonspecial` marks the ids of the vocabulary proper (special tokens excluded) over the whole id space,
    `blank` the tokens made only of whitespace; `token_bytes` is each id's byte length, or None when it is only
    known from offsets in the text.
    """

    name: str
    path: str
    kind: str  # "tokshard" (our directory, our engine) or "tokenizer.json" (HF tokenizers)
    sha256: str
    nonspecial: np.ndarray
    blank: np.ndarray
    token_bytes: np.ndarray | None
    token_bytes_method: str
    engine: str
    special_tokens: int
    ours: Tokenizer | None = None
    hf: Any = None

    @property
    def vocab_size(self) -> int:
        return int(self.nonspecial.sum())


def _components(node: Any) -> list[dict[str, Any]]:
    """Every component (an object with a "type") anywhere in a tokenizer.json part; Sequences nest."""
    if isinstance(node, dict):
        own = [node] if isinstance(node.get("type"), str) else []
        return own + [c for value in node.values() for c in _components(value)]
    if isinstance(node, list):
        return [c for value in node for c in _components(value)]
    return []


def foreign_vocab(spec: dict[str, Any], vocab: dict[str, int], added: dict[int, Any]
                  ) -> tuple[np.ndarray | None, np.ndarray, str]:
    """A tokenizer.json's vocabulary: each id's byte length (None when only offsets can tell), whether the
    token is whitespace only, and the method used for the lengths (see the module docstring)."""
    model = spec.get("model") or {}
    parts = [c for k in ("normalizer", "pre_tokenizer", "decoder") for c in _components(spec.get(k))]
    types = {c["type"] for c in parts}
    size = max(vocab.values()) + 1
    added_text = {i: t.content for i, t in added.items()}
    # SentencePiece style: a Metaspace step, or (Llama 2) a normalizer that replaces spaces by "\u2581"
    markers = [c.get("replacement", "\u2581") for c in parts if c["type"] == "Metaspace"]
    markers += ["\u2581" for c in parts if c["type"] in ("Replace", "Prepend") and "\u2581" in json.dumps(c,
                ensure_ascii=False)]
    inverse = _unicode_to_byte()
    fallback = bool(model.get("byte_fallback"))

    def decoded(s: str) -> bytes | None:
        """The bytes a vocabulary entry stands for, or None when the method cannot tell."""
        if "ByteLevel" in types:
            return bytes(inverse[c] for c in s) if all(c in inverse for c in s) else None
        if markers:
            if fallback and _BYTE_FALLBACK.fullmatch(s):
                return bytes([int(s[3:5], 16)])
            return s.replace(markers[0], " ").encode("utf-8")
        return s.encode("utf-8")

    method = "byte-level" if "ByteLevel" in types else "metaspace" if markers else "offsets"
    lengths = np.zeros(size, dtype=np.int64)
    blank = np.zeros(size, dtype=bool)
    for s, i in vocab.items():
        # added tokens are matched as raw text, not byte-mapped
        b = added_text[i].encode("utf-8") if i in added_text else decoded(s)
        if b is None:
            method = "offsets"
            b = s.encode("utf-8")
        lengths[i] = len(b)
        blank[i] = b.isspace()
    return (None if method == "offsets" else lengths), blank, method


def _name_for(path: Path) -> str:
    return path.parent.name if path.name == TOKENIZER_JSON else (path.stem if path.is_file() else path.name)


def load_tokenizer(path: str | os.PathLike[str]) -> EvalTokenizer:
    """A tokshard tokenizer directory (it has tokshard.json), or any HF tokenizer.json (a file, or a directory
    holding one)."""
    p = Path(path)
    if p.is_dir():
        if (p / METADATA_JSON).is_file():
            tok = Tokenizer.load(p)
            nonspecial = np.zeros(tok.vocab_size, dtype=bool)
            nonspecial[: len(tok.ranks)] = True
            blank = np.zeros(tok.vocab_size, dtype=bool)
            for token, rank in tok.ranks.items():
                blank[rank] = token.isspace()
            return EvalTokenizer(_name_for(p), str(p), "tokshard", tok.sha256, nonspecial, blank,
                                 tok.token_bytes.astype(np.int64), "tokshard token_bytes", "",
                                 len(tok.special_tokens), ours=tok)
        if not (p / TOKENIZER_JSON).is_file():
            raise FileNotFoundError(f"{p} is not a tokenizer: it holds no {TOKENIZER_JSON} (pass a tokshard "
                                    "tokenizer directory or any HF tokenizer.json file)")
        p = p / TOKENIZER_JSON
    elif not p.is_file():
        raise FileNotFoundError(f"tokenizer {p} does not exist")
    return _load_foreign(p)


def _load_foreign(path: Path) -> EvalTokenizer:
    import tokenizers

    raw = path.read_bytes()
    try:
        spec = json.loads(raw)
        if not isinstance(spec, dict) or "model" not in spec:
            raise ValueError("no 'model' object")
        hf = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # JSON, UTF-8 and HF's own errors: one message for the user
        raise ValueError(f"{path} is not a tokenizer.json that HF tokenizers can load ({type(e).__name__}: "
                         f"{str(e)[:200]}); pass a tokshard tokenizer directory or an HF tokenizer.json") from None
    hf.no_truncation()  # a tokenizer.json may carry a model's max length: we want every token of the text
    hf.no_padding()
    hf.encode_special_tokens = True  # special-token text inside documents is text, as in our engine
    vocab = hf.get_vocab(with_added_tokens=True)
    if not vocab:
        raise ValueError(f"{path}: the tokenizer has an empty vocabulary")
    added = hf.get_added_tokens_decoder()
    table, blank, method = foreign_vocab(spec, vocab, added)
    nonspecial = np.zeros(max(vocab.values()) + 1, dtype=bool)
    nonspecial[list(vocab.values())] = True
    specials = [i for i, t in added.items() if t.special and i < len(nonspecial)]
    nonspecial[specials] = False  # ids that are in no vocabulary (cl100k has gaps) stay False too
    engine = f"HF tokenizers {tokenizers.__version__} encode_batch, TOKENIZERS_PARALLELISM=false"
    return EvalTokenizer(_name_for(path), str(path), "tokenizer.json", sha256_file(path), nonspecial, blank, table,
                         method, engine, len(specials), hf=hf)


def _unique_names(toks: list[EvalTokenizer]) -> None:
    """Names label plots and tables, so they must differ: a clash is settled by the parent directory, the kind
    (the same vocabulary as our directory and as a tokenizer.json), then a number."""
    def parent(t: EvalTokenizer) -> str:
        p = Path(t.path)
        return (p.parent.parent if p.name == TOKENIZER_JSON else p.parent).name

    for describe in (lambda t: f"{parent(t)}/{t.name}", lambda t: f"{t.name} ({t.kind})"):
        names = [t.name for t in toks]
        clashing = [t for t in toks if names.count(t.name) > 1]
        for t in clashing:
            t.name = describe(t)
    taken: set[str] = set()
    for t in toks:
        base, k = t.name, 2
        while t.name in taken:
            t.name, k = f"{base}#{k}", k + 1
        taken.add(t.name)


# -- encoding ----------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """One chunk of documents encoded: flat ids, tokens per document, each token's global byte span."""

    ids: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def _encode_chunk(tok: EvalTokenizer, texts: list[str], doc_offsets: np.ndarray) -> Encoded:
    """`doc_offsets` are the chunk's global document offsets (len(texts)+1)."""
    if tok.ours is not None:
        flat, offsets = tok.ours.encode_to_array(texts, bos=False)
        ids = flat.astype(np.int64)
        # Byte-level BPE tiles the text, so the documents' tokens tile the chunk's bytes back to back.
        ends = doc_offsets[0] + np.cumsum(tok.token_bytes[ids])
        return Encoded(ids, np.diff(offsets), ends - tok.token_bytes[ids], ends)
    encodings = tok.hf.encode_batch(texts, add_special_tokens=False)
    ids, starts, ends = [], [], []
    for text, enc, base in zip(texts, encodings, doc_offsets[:-1], strict=True):
        ids.append(np.asarray(enc.ids, dtype=np.int64))
        spans = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        spans = char_byte_offsets(text)[np.clip(spans, 0, len(text))] + base
        starts.append(spans[:, 0])
        ends.append(spans[:, 1])
    counts = np.array([len(i) for i in ids], dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    return Encoded(np.concatenate([empty, *ids]), counts, np.concatenate([empty, *starts]),
                   np.concatenate([empty, *ends]))


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


def count(tok: EvalTokenizer, text: EvalText, group_index: np.ndarray, n_groups: int) -> Counts:
    n = len(text.texts)
    tokens, tbytes = np.zeros(n, np.int64), np.zeros(n, np.int64)
    word_tokens, words_3plus = np.zeros(n, np.int64), np.zeros(n, np.int64)
    space = len(tok.nonspecial)
    seen = np.zeros((n_groups, space), dtype=bool)
    measured = np.zeros(space, dtype=np.int64) if tok.token_bytes is None else None
    blank = tok.blank
    word_doc = np.repeat(np.arange(n), np.diff(text.word_offsets))
    for a, b in _chunks(text.doc_offsets):
        enc = _encode_chunk(tok, text.texts[a:b], text.doc_offsets[a : b + 1])
        if len(enc.ids) and enc.ids.max() >= space:  # an id outside the vocabulary we know: grow the tables
            grow = int(enc.ids.max()) + 1 - space
            seen = np.pad(seen, ((0, 0), (0, grow)))
            blank = np.pad(blank, (0, grow))
            if measured is not None:
                measured = np.pad(measured, (0, grow))
            space += grow
        token_doc = np.repeat(np.arange(a, b), enc.counts)
        tokens[a:b] = enc.counts
        spans = enc.ends - enc.starts
        lengths = spans if tok.token_bytes is None else tok.token_bytes[enc.ids]
        tbytes[a:b] = np.bincount(token_doc - a, weights=lengths, minlength=b - a).astype(np.int64)
        seen[group_index[token_doc], enc.ids] = True
        if measured is not None:
            measured[enc.ids] = spans
        # Tokens overlapping word [ws, we): start < we and end > ws. Counting the two conditions over sorted
        # starts and sorted ends separately is exact for any spans with start <= end. Empty spans and
        # whitespace-only tokens carry nothing of a word: HF aligns SentencePiece's prefix space with the
        # first character of the text, which would otherwise count it for the first word.
        real = (spans > 0) & ~blank[enc.ids]
        starts, ends = np.sort(enc.starts[real]), np.sort(enc.ends[real])
        w = slice(text.word_offsets[a], text.word_offsets[b])
        per_word = (np.searchsorted(starts, text.word_ends[w], side="left")
                    - np.searchsorted(ends, text.word_starts[w], side="right"))
        docs = word_doc[w] - a
        word_tokens[a:b] = np.bincount(docs, weights=per_word, minlength=b - a).astype(np.int64)
        words_3plus[a:b] = np.bincount(docs, weights=per_word >= 3, minlength=b - a).astype(np.int64)
    return Counts(tokens, tbytes, word_tokens, words_3plus, seen, measured)


def throughput(tok: EvalTokenizer, text: EvalText, repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """Encode the first documents up to THROUGHPUT_MAX_BYTES `repeats` times on one thread; the best run."""
    n = max(1, int(np.searchsorted(text.doc_offsets, THROUGHPUT_MAX_BYTES, side="right")) - 1)
    subset, nbytes = text.texts[:n], int(text.doc_offsets[n])
    if tok.ours is not None:
        def run() -> None:
            tok.ours.encode_batch(subset, bos=False)
        threads = os.environ.get("RAYON_NUM_THREADS", "unset")
        engine, short = f"tokshard Tokenizer.encode_batch ({tok.ours.engine}, RAYON_NUM_THREADS={threads})", \
            tok.ours.engine
    else:
        def run() -> None:
            tok.hf.encode_batch(subset, add_special_tokens=False)
        engine, short = tok.engine, "HF tokenizers"
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # HF reads it on every batch call
    try:
        walls, cpus = [], []
        for _ in range(max(1, repeats)):
            w0, c0 = time.perf_counter(), time.process_time()
            run()
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


def evaluate(toks: list[EvalTokenizer], text: EvalText, reference: str | None = None,
             repeats: int = DEFAULT_REPEATS, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every tokenizer's numbers on `text`: overall, per group, premiums; the report's "tokenizers" part."""
    group_names = sorted(set(text.groups)) if text.groups is not None else []
    number = {name: i for i, name in enumerate(group_names)}
    group_index = np.array([number[g] for g in text.groups] if text.groups is not None else [0] * len(text.texts),
                           dtype=np.int64)
    ref = None
    if text.keys is not None:
        if reference is None or reference not in group_names:
            what = "--parallel-key needs --reference GROUP" if reference is None else \
                f"--reference {reference!r} is not a group of the evaluation text"
            raise ValueError(f"{what} (groups: {', '.join(group_names)})")
        ref = group_names.index(reference)
    results = []
    for tok in toks:
        if log:
            log(f"evaluating {tok.name} ({tok.kind}, {tok.vocab_size:,} tokens)")
        c = count(tok, text, group_index, max(1, len(group_names)))
        all_docs = np.ones(len(text.texts), dtype=bool)
        vocab_mean, vocab_covered = _vocab_mean(tok, c)
        entry: dict[str, Any] = {
            "name": tok.name, "path": tok.path, "kind": tok.kind, "sha256": tok.sha256,
            "vocab_size": tok.vocab_size, "vocab_size_total": tok.vocab_size + tok.special_tokens,
            "token_bytes_method": tok.token_bytes_method,
            "mean_token_bytes_vocab": vocab_mean, "mean_token_bytes_vocab_entries": vocab_covered,
            "overall": scope_metrics(c, tok, text, all_docs, c.seen.any(axis=0)),
        }
        if group_names:
            entry["groups"] = {name: scope_metrics(c, tok, text, group_index == i, c.seen[i])
                               for i, name in enumerate(group_names)}
        if ref is not None:
            entry["premium"] = {name: {"premium": p["value"], "keys": p["keys"], "tokens": p["group_total"],
                                       "reference_tokens": p["reference_total"]}
                                for name, p in premiums(c.tokens.astype(float), group_index, group_names,
                                                        text.keys, ref).items()}
        entry["throughput"] = throughput(tok, text, repeats)
        entry["engine"] = entry["throughput"]["engine"]
        results.append(entry)
    out: dict[str, Any] = {"tokenizers": results}
    if group_names:
        out["groups"] = {name: {"documents": int((group_index == i).sum()),
                                "text_bytes": int(text.doc_bytes[group_index == i].sum()),
                                "words": int(np.diff(text.word_offsets)[group_index == i].sum())}
                         for i, name in enumerate(group_names)}
    if ref is not None:
        ratios = premiums(text.doc_bytes.astype(float), group_index, group_names, text.keys, ref)
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
    parent = Tokenizer.load(top_dir)
    ordered = sorted(parent.ranks.items(), key=lambda kv: kv[1])
    for size in sizes:
        if size == largest:
            continue
        d = sweep_dir(out, size)
        if (d / METADATA_JSON).is_file():
            meta = json.loads((d / METADATA_JSON).read_text())
            if (meta.get("training") or {}).get("prefix_of_sha256") == parent.sha256 and meta.get("vocab_size") == size:
                continue  # derived from this very parent before
        prefix = dict(ordered[: size - len(SPECIAL_TOKENS)])
        tok = Tokenizer.from_ranks(prefix, parent.pattern, parent.pattern_name)
        training = {**(parent.metadata.get("training") or {}), "prefix_of": top_dir.name,
                    "prefix_of_sha256": parent.sha256}
        tok.save(d, training=training)
    return {"sizes": sizes, "trained": top_dir.name, "reused": trained.reused,
            "train_source": train_source or "bundled-sample", "sample_documents": trained.sample_documents,
            "sample_bytes": trained.sample_bytes, "sample_bytes_limit": sample_bytes, "pattern": parent.pattern_name,
            "seed": seed, "text_column": text_column, "id_column": id_column, "seconds": round(time.time() - t0, 2)}


# -- report, plots -----------------------------------------------------------------------------------------
def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _bars_width(categories: int, series: int) -> float:
    return min(18.0, max(6.0, 0.3 * categories * series + 2.5))


def _grouped_bars(ax: Any, categories: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
        if len(categories) * len(series) <= 40:  # beyond that the labels overlap
            ax.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, categories, rotation=30 if len(categories) > 4 else 0, ha="right" if len(categories) > 4
                  else "center")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def plot_report(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes per plot name: bytes/token (per group when grouped), premiums when parallel, the sweep."""
    toks = report["tokenizers"]
    plots: dict[str, bytes] = {}
    groups = list(report.get("groups", {}))
    categories = ["all", *groups]
    fig, (ax,) = _figure(_bars_width(len(categories), len(toks)), 5)
    _grouped_bars(ax, categories, {t["name"]: [t["overall"]["bytes_per_token"],
                                                *(t["groups"][g]["bytes_per_token"] for g in groups)]
                                   for t in toks}, "UTF-8 bytes / token (higher = better compression)")
    ax.set_title("bytes per token" + (f" by {report['source']['group_by']}" if groups else ""))
    plots["bytes_per_token.png"] = _png(fig)
    if "parallel" in report:
        ref = report["parallel"]["reference"]
        others = [g for g in groups if g != ref]
        fig, (ax,) = _figure(_bars_width(len(others), len(toks)), 5)
        _grouped_bars(ax, others, {t["name"]: [t["premium"][g]["premium"] for g in others] for t in toks},
                      f"tokens relative to {ref} (same content)")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(f"token premium vs {ref} over parallel keys")
        plots["premium.png"] = _png(fig)
    if "sweep" in report:
        plots["sweep.png"] = _plot_sweep(report)
    return plots


def _plot_sweep(report: dict[str, Any]) -> bytes:
    sweep = report["sweep"]
    by_name = {t["name"]: t for t in report["tokenizers"]}
    points = [by_name[p["name"]] for p in sweep["points"]]
    others = [t for t in report["tokenizers"] if t["name"] not in {p["name"] for p in sweep["points"]}]
    fig, axes = _figure(11, 4.5, ncols=2)
    for ax, metric, label in ((axes[0], "bytes_per_token", "UTF-8 bytes / token"),
                              (axes[1], "tokens_per_word", "tokens / word")):
        x = [t["vocab_size_total"] for t in points]
        ax.plot(x, [t["overall"][metric] for t in points], marker="o", color="C0", label="sweep (all text)")
        groups = list(report.get("groups", {}))
        if 1 < len(groups) <= 8:
            for g in groups:
                ax.plot(x, [t["groups"][g][metric] for t in points], lw=0.8, ls="--", marker=".", label=g)
        for i, t in enumerate(others):  # colours after the sweep's own
            ax.scatter([t["vocab_size_total"]], [t["overall"][metric]], marker="s", zorder=3, color=f"C{i + 1}")
            ax.annotate(t["name"], (t["vocab_size_total"], t["overall"][metric]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("vocabulary size (ids, incl. special tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"compression vs vocabulary size (trained on {Path(str(sweep['train_source'])).name})")
    axes[1].set_title("tokens per word vs vocabulary size")
    return _png(fig)


def check_out_dir(out: Path, settings: dict[str, Any], force: bool) -> None:
    """Refuse to replace a report made with other settings unless `force` (see the module docstring)."""
    path = out / REPORT_JSON
    if force or not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("settings", {})
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{path} exists and is not a tokshard evaluation report; choose another --out or pass "
                         "--force to replace it") from None
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        raise ValueError(f"{path} holds a report made with other settings ({', '.join(diff)} differ); choose "
                         "another --out or pass --force to replace it")


def write_report(out: Path, report: dict[str, Any]) -> None:
    """The plots, then report.json, each atomically; plots of an earlier report that this one lacks go."""
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(out)
    plots = plot_report(report)
    for name, data in plots.items():
        atomic.write_bytes(out / name, data)
    for name in PLOTS:
        if name not in plots:
            (out / name).unlink(missing_ok=True)
    report["plots"] = sorted(plots)
    atomic.write_json(out / REPORT_JSON, report)


def run(tokenizer_paths: Sequence[str], out: str | os.PathLike[str], *, source: str | None = None,
        text_column: str = sources.DEFAULT_TEXT_COLUMN, id_column: str = sources.DEFAULT_ID_COLUMN,
        group_by: str | None = None, group_regex: str | None = None, parallel_key: str | None = None,
        reference: str | None = None, limit_docs: int | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES,
        repeats: int = DEFAULT_REPEATS, sweep: str | None = None, train_source: str | None = None,
        sample_bytes: int = jobs.DEFAULT_SAMPLE_BYTES, pattern: str = DEFAULT_PATTERN, seed: int = 0,
        address: str | None = None, workers: int | None = None, force: bool = False,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`tokshard eval-tokenizer`: evaluate the tokenizers (and a sweep's), write REPORTDIR; returns the report."""
    out = Path(out)
    if not tokenizer_paths and not sweep:
        raise ValueError("give at least one tokenizer (a tokshard directory or a tokenizer.json) or --sweep SIZES")
    if parallel_key is not None and group_by is None:
        raise ValueError("--parallel-key needs --group-by: the premium compares groups (e.g. languages)")
    if reference is not None and parallel_key is None:
        raise ValueError("--reference needs --parallel-key: premiums are computed over parallel text only")
    toks = [load_tokenizer(p) for p in tokenizer_paths]
    sizes = parse_sizes(sweep) if sweep else []
    train_source = train_source if train_source is not None else source
    sweep_settings = None
    if sizes:
        sweep_settings = {"sizes": sizes, "train_source": train_source or "bundled-sample", "sample_bytes":
                          sample_bytes, "pattern": resolve_pattern(pattern)[1], "seed": seed}
    files = sources.resolve_files(source)
    settings = {"tokenizers": [t.sha256 for t in toks], "source": source or "bundled-sample", "files": files,
                "text_column": text_column, "group_by": group_by, "group_regex": group_regex,
                "parallel_key": parallel_key, "reference": reference, "limit_docs": limit_docs,
                "max_bytes": max_bytes, "sweep": sweep_settings}
    check_out_dir(out, settings, force)
    text = read_eval_text(source, text_column, group_by, group_regex, parallel_key, limit_docs, max_bytes)
    if reference is not None and reference not in set(text.groups or []):
        raise ValueError(f"--reference {reference!r} is not a group of the evaluation text "
                         f"(groups: {', '.join(sorted(set(text.groups or [])))})")
    sweep_info = None
    if sizes:
        sweep_info = train_sweep(sizes, out, train_source, sample_bytes=sample_bytes, pattern=pattern, seed=seed,
                                 text_column=text_column, id_column=id_column, address=address, workers=workers,
                                 log=log)
        sweep_toks = [load_tokenizer(sweep_dir(out, s)) for s in sizes]
        toks += sweep_toks
    _unique_names(toks)
    report: dict[str, Any] = {
        "format": FORMAT,
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
        by_path = {t["path"]: t for t in report["tokenizers"]}
        sweep_info["in_sample"] = (sweep_info["train_source"] == report["source"]["source"])
        sweep_info["points"] = [
            {"vocab_size": s, "name": by_path[str(sweep_dir(out, s))]["name"],
             "bytes_per_token": by_path[str(sweep_dir(out, s))]["overall"]["bytes_per_token"],
             "tokens_per_word": by_path[str(sweep_dir(out, s))]["overall"]["tokens_per_word"]}
            for s in sizes]
        report["sweep"] = sweep_info
    write_report(out, report)
    return report


def summary_lines(report: dict[str, Any], out: str | os.PathLike[str]) -> list[str]:
    src = report["source"]
    lines = [f"evaluated {len(report['tokenizers'])} tokenizer(s) on {src['documents']:,} documents "
             f"({src['text_bytes'] / 1e6:,.1f} MB, {src['words']:,} words) of {src['source']}",
             f"{'tokenizer':24s} {'vocab':>8s} {'bytes/tok':>9s} {'tok/word':>8s} {'>=3 tok':>7s} "
             f"{'vocab used':>10s} {'tok B vocab/text':>16s} {'MB/cpu-s':>8s}  engine"]
    for t in report["tokenizers"]:
        o = t["overall"]
        vocab_mean = "-" if t["mean_token_bytes_vocab"] is None else f"{t['mean_token_bytes_vocab']:.2f}"
        lines.append(f"{t['name'][:24]:24s} {t['vocab_size']:>8,} {_fmt(o['bytes_per_token'], 3):>9s} "
                     f"{_fmt(o['tokens_per_word'], 3):>8s} {_pct(o['words_3plus_fraction']):>7s} "
                     f"{_pct(o['vocab_used_fraction']):>10s} "
                     f"{vocab_mean + ' / ' + _fmt(o['mean_token_bytes_text'], 2):>16s} "
                     f"{t['throughput']['mb_per_cpu_s']:>8.2f}  {t['throughput']['engine_short']}")
    groups = list(report.get("groups", {}))
    names = [t["name"] for t in report["tokenizers"]]
    width = max(10, *(min(len(n), 16) for n in names))
    gw = min(32, max([22, *map(len, groups)]))  # group column
    if groups:  # one row per group (there may be many), one column per tokenizer
        header = " ".join(f"{n[:16]:>{width}s}" for n in names)
        lines.append(f"bytes/token by {src['group_by']}:".ljust(gw + 2) + header)
        for g in groups:
            lines.append(f"  {g[:gw]:{gw}s}" + " ".join(f"{_fmt(t['groups'][g]['bytes_per_token'], 3):>{width}s}"
                                                      for t in report["tokenizers"]))
    if "parallel" in report:
        ref = report["parallel"]["reference"]
        header = " ".join(f"{n[:16]:>{width}s}" for n in names)
        lines.append(f"premium vs {ref}:".ljust(gw + 2) + header + "  keys  bytes_ratio")
        for g in groups:
            p = report["parallel"]["groups"][g]
            lines.append(f"  {g[:gw]:{gw}s}" + " ".join(f"{_fmt(t['premium'][g]['premium'], 3):>{width}s}"
                                                      for t in report["tokenizers"])
                         + f"  {p['keys']:>4,}  {_fmt(p['bytes_ratio'], 3):>11s}")
    if "sweep" in report:
        s = report["sweep"]
        lines.append(f"sweep: trained {s['trained']} on {s['sample_documents']:,} documents "
                     f"({s['sample_bytes'] / 1e6:,.1f} MB) of {s['train_source']}"
                     + (" (reused)" if s["reused"] else f" in {s['seconds']:.1f} s")
                     + (" -- the evaluation text itself" if s["in_sample"] else ""))
        lines += [f"  {p['vocab_size']:>7,}: {_fmt(p['bytes_per_token'], 3)} bytes/token, "
                  f"{_fmt(p['tokens_per_word'], 3)} tokens/word" for p in s["points"]]
    lines.append(f"-> {Path(out) / REPORT_JSON} (+ {', '.join(report['plots'])})")
    return lines


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
