"""The CPU side of the service: texts -> ids (with token strings and byte-offset pieces) and ids -> text.

Everything here is plain synchronous Python over `pipeline.Tokenizer`, so the routes can run it on the event loop
(small requests) or in a thread pool (large ones) without caring which. A batch is encoded with one call to the
tokenizer's engine (pipeline/engines.py), which hands back one flat id buffer; the response's lists are cut from
it. Per-id tables
(bytes, text, HF token string) are built once at start-up, so a response costs list lookups, not decoding.

Input problems raise `ServiceError` naming the offending item: `prompt[3]` for a text, `tokens[1][7]` for an id.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokshard.pipeline.tokenizer import Tokenizer, token_str  # bytes -> HF byte-level token string ("Ġthe")
from tokshard.service.config import Limits
from tokshard.service.errors import ServiceError


def item_param(name: str, index: int, batched: bool) -> str:
    return f"{name}[{index}]" if batched else name


@dataclass
class DecodedText:
    text: str
    lossless: bool  # False when the ids' bytes were not valid UTF-8 and U+FFFD replaced some of them
    nbytes: int  # bytes the ids decoded to


class Engine:
    """A loaded tokenizer plus the tables the endpoints read; one per process, shared by all requests."""

    def __init__(self, tokenizer: Tokenizer, limits: Limits) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        tokenizer.encode_batch(["warm-up"], bos=False)  # build the encoding engine now, not on the first request
        self.vocab_size = tokenizer.vocab_size
        self.bos_id = tokenizer.bos_id
        self.special_ids = frozenset(tokenizer.special_tokens.values())
        raw = [tokenizer.id_bytes(i) for i in range(self.vocab_size)]
        # What each id contributes to a decoded text (special tokens decode to their own text unless skipped).
        self.id_bytes: list[bytes] = raw
        self.id_bytes_skip: list[bytes] = [b"" if i in self.special_ids else b for i, b in enumerate(raw)]
        # Byte length of each id within an input text: specials are never part of one (their text is plain text).
        self.input_len: list[int] = [int(n) for n in tokenizer.token_bytes]
        self.input_bytes: list[list[int]] = [[] if i in self.special_ids else list(b) for i, b in enumerate(raw)]
        self.piece_text: list[str | None] = [_utf8_or_none(b) for b in raw]
        # vLLM's `token_strs` are HF's token strings: the byte-level alphabet (GPT-2's map), e.g. "Ġthe".
        self.token_strs: list[str] = [s if i in self.special_ids else token_str(b)
                                      for i, (b, s) in enumerate(zip(raw, self.piece_text, strict=True))]

    # -- tokenize ---------------------------------------------------------------------------------------
    def utf8(self, texts: Sequence[str], name: str, batched: bool) -> list[bytes]:
        """The UTF-8 of each text, refusing lone surrogates (JSON can carry them, UTF-8 cannot) and long texts."""
        out = []
        for i, text in enumerate(texts):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ServiceError(422, f"{item_param(name, i, batched)} holds a lone surrogate "
                                   f"{text[e.start]!r} at character {e.start}; send valid Unicode text",
                                   "invalid_text", item_param(name, i, batched)) from None
            if len(data) > self.limits.max_text_bytes:
                raise ServiceError(413, f"{item_param(name, i, batched)} is {len(data):,} bytes of UTF-8; the limit "
                                   f"is {self.limits.max_text_bytes:,} per text: split it", "text_too_large",
                                   item_param(name, i, batched))
            out.append(data)
        return out

    def encode_checked(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of every text, `<|bos|>` first, in one engine call; the texts have passed `utf8` (the limits).

        Each row is a numpy view of the engine's one flat array, never a list of Python ints: on a 1 MB batch
        turning 264k ids into ints and lists cost twice the encode itself, and the response serialiser (orjson)
        writes numpy arrays directly. A caller that wants no `<|bos|>` takes `row[1:]`, another view."""
        flat, offsets = self.tokenizer.encode_to_array(texts, bos=True)
        return [flat[a:b] for a, b in itertools.pairwise(offsets.tolist())]

    def encode(self, texts: Sequence[str], name: str = "prompt", batched: bool = True
               ) -> tuple[list[np.ndarray], list[bytes]]:
        """Check, then encode: ids of every text (`<|bos|>` first) and their UTF-8."""
        data = self.utf8(texts, name, batched)
        return self.encode_checked(texts), data

    def pieces(self, ids: list[int]) -> list[dict[str, Any]]:
        """One entry per id with its UTF-8 byte span in the input; bos spans no bytes (start == end)."""
        out = []
        pos = 0
        for t in ids:
            end = pos + self.input_len[t]
            out.append({"id": t, "text": self.piece_text[t], "bytes": self.input_bytes[t],
                        "special": t in self.special_ids, "start": pos, "end": end})
            pos = end
        return out

    def results(self, rows: list[np.ndarray], *, bos: bool, token_strs: bool, pieces: bool, max_model_len: int
                ) -> list[dict[str, Any]]:
        """The response object of each text from its ids (`encode_checked`'s rows; `<|bos|>` dropped unless
        `bos`). `tokens` stays a numpy view (routes serialise it with orjson)."""
        out = []
        for row in rows:
            ids = row if bos else row[1:]
            item: dict[str, Any] = {"count": len(ids), "max_model_len": max_model_len, "tokens": ids}
            if token_strs or pieces:
                as_ints = ids.tolist()
                if token_strs:
                    item["token_strs"] = [self.token_strs[t] for t in as_ints]
                if pieces:
                    item["pieces"] = self.pieces(as_ints)
            out.append(item)
        return out

    def tokenize(self, texts: Sequence[str], *, bos: bool, token_strs: bool, pieces: bool, max_model_len: int,
                 batched: bool, name: str = "prompt") -> tuple[list[dict[str, Any]], int]:
        """One result per text, and the UTF-8 bytes of all of them."""
        rows, data = self.encode(texts, name, batched)
        return (self.results(rows, bos=bos, token_strs=token_strs, pieces=pieces, max_model_len=max_model_len),
                sum(map(len, data)))

    # -- detokenize -------------------------------------------------------------------------------------
    def check_ids(self, seqs: Sequence[Sequence[int]], batched: bool) -> None:
        for i, seq in enumerate(seqs):
            where = f"tokens[{i}]" if batched else "tokens"
            if len(seq) > self.limits.max_tokens:
                raise ServiceError(413, f"{where} holds {len(seq):,} ids; the limit is {self.limits.max_tokens:,} "
                                   "per sequence: split it", "sequence_too_long", where)
            if not seq:
                continue
            try:
                arr = np.fromiter(seq, dtype=np.int64, count=len(seq))
                bad = np.flatnonzero((arr < 0) | (arr >= self.vocab_size))
                j = int(bad[0]) if len(bad) else -1
            except OverflowError:  # beyond int64: certainly not an id, find it the slow way
                j = next(k for k, t in enumerate(seq) if not -(1 << 63) <= t < 1 << 63)
            if j >= 0:
                raise ServiceError(422, f"{where}[{j}] = {seq[j]} is not a token id: this vocabulary has ids "
                                   f"0..{self.vocab_size - 1}", "token_id_out_of_range", f"{where}[{j}]")

    def decode(self, ids: Sequence[int], skip_special: bool) -> DecodedText:
        table = self.id_bytes_skip if skip_special else self.id_bytes
        data = b"".join([table[t] for t in ids])
        try:
            return DecodedText(data.decode("utf-8"), True, len(data))
        except UnicodeDecodeError:
            return DecodedText(data.decode("utf-8", errors="replace"), False, len(data))

    def detokenize(self, seqs: Sequence[Sequence[int]], *, skip_special: bool, batched: bool) -> list[DecodedText]:
        self.check_ids(seqs, batched)
        return [self.decode(seq, skip_special) for seq in seqs]


def _utf8_or_none(b: bytes) -> str | None:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None
