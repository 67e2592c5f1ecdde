"""The tokenizers `tokshard eval-tokenizer` compares, behind one interface: ours or any HF tokenizer.json.

A tokshard directory is encoded by our engine (`Tokenizer`); anything else that HF tokenizers can load (a
downloaded GPT-2 or Llama tokenizer.json) is encoded by HF tokenizers. The measurements in evaluate.py only see
an `EvalTokenizer`: which ids are the vocabulary proper, which are whitespace, each id's byte length, and the
tokens of a chunk of documents with their byte spans in the text. This module is the one place that knows how
each kind of tokenizer answers those questions.

Byte lengths of a tokenizer.json's entries (the report names the method per tokenizer):
`byte-level` (GPT-2's byte-to-character map), `metaspace` (SentencePiece: the replacement character is one space,
`<0xNN>` byte-fallback tokens are one byte), otherwise `offsets`: each id's byte span in the evaluation text, so
a vocabulary mean covers only the ids seen. A tokenizer.json's token spans are HF's character offsets converted to
bytes (a token holding part of a character gets the whole character's span, which gives the same overlaps).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import regex

from tokshard.pipeline import storage
from tokshard.pipeline.tokenizer import METADATA_JSON, TOKENIZER_JSON, Tokenizer, _unicode_to_byte

_BYTE_FALLBACK = regex.compile(r"<0x[0-9A-Fa-f]{2}>")
KIND_OURS = "tokshard"
KIND_HF = "tokenizer.json"


def char_byte_offsets(text: str) -> np.ndarray:
    """int64 array of len(text)+1: the UTF-8 byte offset of each character (and of the end)."""
    if text.isascii():
        return np.arange(len(text) + 1, dtype=np.int64)
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    widths = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    out = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(widths, out=out[1:])
    return out


@dataclass
class Encoded:
    """One chunk of documents encoded: flat ids, tokens per document, each token's global byte span."""

    ids: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


@dataclass
class EvalTokenizer:
    """One tokenizer under evaluation, behind one interface whatever its origin.

    `nonspecial` marks the ids of the vocabulary proper (special tokens excluded) over the whole id space,
    `blank` the tokens made only of whitespace; `token_bytes` is each id's byte length, or None when it is only
    known from offsets in the text.
    """

    name: str
    path: str
    kind: str  # KIND_OURS (our directory, our engine) or KIND_HF (HF tokenizers)
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

    def encode_spans(self, texts: list[str], doc_offsets: np.ndarray) -> Encoded:
        """Encode a chunk of documents without special tokens; `doc_offsets` are the chunk's global document
        offsets (len(texts)+1), so the spans are global byte positions."""
        if self.ours is not None:
            flat, offsets = self.ours.encode_to_array(texts, bos=False)
            ids = flat.astype(np.int64)
            # Byte-level BPE tiles the text, so the documents' tokens tile the chunk's bytes back to back.
            ends = doc_offsets[0] + np.cumsum(self.token_bytes[ids])
            return Encoded(ids, np.diff(offsets), ends - self.token_bytes[ids], ends)
        encodings = self.hf.encode_batch(texts, add_special_tokens=False)
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

    def encode_batch(self, texts: list[str]) -> None:
        """Encode `texts` the way a user of this tokenizer would (what throughput times); the ids are dropped."""
        if self.ours is not None:
            self.ours.encode_batch(texts, bos=False)
        else:
            self.hf.encode_batch(texts, add_special_tokens=False)

    def engine_names(self) -> tuple[str, str]:
        """(the engine spelled out for the report, a short name for the summary table)."""
        if self.ours is not None:
            threads = os.environ.get("RAYON_NUM_THREADS", "unset")
            return (f"tokshard Tokenizer.encode_batch ({self.ours.engine}, RAYON_NUM_THREADS={threads})",
                    self.ours.engine)
        return self.engine, "HF tokenizers"


def load_tokenizer(path: str | os.PathLike[str]) -> EvalTokenizer:
    """A tokshard tokenizer directory (it has tokshard.json), or any HF tokenizer.json (a file, or a directory
    holding one); local, or an fsspec URL read through storage's local cache (the report keeps the URL)."""
    if storage.is_url(path):
        return _load_url(str(path))
    p = Path(path)
    if p.is_dir():
        if (p / METADATA_JSON).is_file():
            return _load_ours(p)
        if not (p / TOKENIZER_JSON).is_file():
            raise FileNotFoundError(f"{p} is not a tokenizer: it holds no {TOKENIZER_JSON} (pass a tokshard "
                                    "tokenizer directory or any HF tokenizer.json file)")
        p = p / TOKENIZER_JSON
    elif not p.is_file():
        raise FileNotFoundError(f"tokenizer {p} does not exist")
    return _load_foreign(p)


def _load_url(url: str) -> EvalTokenizer:
    """The same three cases at a URL: an object is a tokenizer.json; a prefix is a tokshard directory when it
    holds tokshard.json, else an HF directory when it holds tokenizer.json."""
    url = url.rstrip("/")
    if storage.exists(url):
        last = url.rsplit("/", 1)[-1]
        name = url.rsplit("/", 2)[-2] if last == TOKENIZER_JSON else Path(last).stem
        tok = _load_foreign(storage.local_file(url))
    elif storage.exists(storage.join(url, METADATA_JSON)):
        tok, name = _ours(Tokenizer.load(url)), url.rsplit("/", 1)[-1]
    elif storage.exists(storage.join(url, TOKENIZER_JSON)):
        tok, name = _load_foreign(storage.local_file(storage.join(url, TOKENIZER_JSON))), url.rsplit("/", 1)[-1]
    else:
        raise FileNotFoundError(f"tokenizer {url} does not exist: no such object, and no {METADATA_JSON} or "
                                f"{TOKENIZER_JSON} under it (pass a tokshard tokenizer directory or any HF "
                                "tokenizer.json)")
    tok.name, tok.path = name, url  # named and reported by the URL, not the cache file
    return tok


def _name_for(path: Path) -> str:
    return path.parent.name if path.name == TOKENIZER_JSON else (path.stem if path.is_file() else path.name)


def _load_ours(path: Path) -> EvalTokenizer:
    tok = _ours(Tokenizer.load(path))
    tok.name, tok.path = _name_for(path), str(path)
    return tok


def _ours(tok: Tokenizer) -> EvalTokenizer:
    """Our tokenizer, loaded; the caller names it."""
    nonspecial = np.zeros(tok.vocab_size, dtype=bool)
    nonspecial[: len(tok.ranks)] = True
    blank = np.zeros(tok.vocab_size, dtype=bool)
    for token, rank in tok.ranks.items():
        blank[rank] = token.isspace()
    return EvalTokenizer("", "", KIND_OURS, tok.sha256, nonspecial, blank,
                         tok.token_bytes.astype(np.int64), "tokshard token_bytes", "", len(tok.special_tokens),
                         ours=tok)


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
    return EvalTokenizer(_name_for(path), str(path), KIND_HF, storage.sha256_of(path), nonspecial, blank, table,
                         method, engine, len(specials), hf=hf)


def _components(node: Any) -> list[dict[str, Any]]:
    """Every component (an object with a "type") anywhere in a tokenizer.json part; Sequences nest."""
    if isinstance(node, dict):
        own = [node] if isinstance(node.get("type"), str) else []
        return own + [c for value in node.values() for c in _components(value)]
    if isinstance(node, list):
        return [c for value in node for c in _components(value)]
    return []


@dataclass
class _EntryDecoder:
    """What the bytes of a tokenizer.json vocabulary entry are, by the tokenizer's pre-tokenizer/decoder kind."""

    byte_level: bool  # GPT-2's byte-to-character map
    marker: str | None  # SentencePiece's space replacement character, when the tokenizer has one
    byte_fallback: bool  # <0xNN> entries stand for one byte

    @classmethod
    def of(cls, spec: dict[str, Any]) -> _EntryDecoder:
        parts = [c for k in ("normalizer", "pre_tokenizer", "decoder") for c in _components(spec.get(k))]
        # SentencePiece style: a Metaspace step, or (Llama 2) a normalizer that replaces spaces by "\u2581"
        markers = [c.get("replacement", "\u2581") for c in parts if c["type"] == "Metaspace"]
        markers += ["\u2581" for c in parts
                    if c["type"] in ("Replace", "Prepend") and "\u2581" in json.dumps(c, ensure_ascii=False)]
        return cls(any(c["type"] == "ByteLevel" for c in parts), markers[0] if markers else None,
                   bool((spec.get("model") or {}).get("byte_fallback")))

    @property
    def method(self) -> str:
        return "byte-level" if self.byte_level else "metaspace" if self.marker else "offsets"

    def decode(self, entry: str, inverse: dict[str, int]) -> bytes | None:
        """The bytes a vocabulary entry stands for, or None when the method cannot tell."""
        if self.byte_level:
            return bytes(inverse[c] for c in entry) if all(c in inverse for c in entry) else None
        if self.marker:
            if self.byte_fallback and _BYTE_FALLBACK.fullmatch(entry):
                return bytes([int(entry[3:5], 16)])
            return entry.replace(self.marker, " ").encode("utf-8")
        return entry.encode("utf-8")


def foreign_vocab(spec: dict[str, Any], vocab: dict[str, int], added: dict[int, Any]
                  ) -> tuple[np.ndarray | None, np.ndarray, str]:
    """A tokenizer.json's vocabulary: each id's byte length (None when only offsets can tell), whether the
    token is whitespace only, and the method used for the lengths (see the module docstring)."""
    decoder = _EntryDecoder.of(spec)
    method = decoder.method
    inverse = _unicode_to_byte()
    added_text = {i: t.content for i, t in added.items()}
    size = max(vocab.values()) + 1
    lengths = np.zeros(size, dtype=np.int64)
    blank = np.zeros(size, dtype=bool)
    for s, i in vocab.items():
        # added tokens are matched as raw text, not byte-mapped
        b = added_text[i].encode("utf-8") if i in added_text else decoder.decode(s, inverse)
        if b is None:
            method = "offsets"
            b = s.encode("utf-8")
        lengths[i] = len(b)
        blank[i] = b.isspace()
    return (None if method == "offsets" else lengths), blank, method


def unique_names(toks: list[EvalTokenizer]) -> None:
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
