"""Bits-per-byte: how well a model predicts text, comparable across tokenizers.

BPB = Σ nats of the target tokens / (ln 2 · Σ UTF-8 bytes of those target tokens), where a token's bytes come
from the tokenizer's `token_bytes` and special tokens (0 bytes, e.g. `<|bos|>`) contribute neither nats nor
bytes nor tokens. The trainer's validation BPB and the service's `/v1/bpb` both go through `_score_rows`, so
they are the same quantity.

Long sequences are scored in sliding windows of `context_len` tokens. The first window scores targets 1..C;
each later window advances by `stride` targets (default C // 2), ends on its last new target and reaches C tokens
back, so every later window is a full window and each target is scored exactly once with at least C - stride
tokens of left context (the last window is right-aligned to the end of the sequence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tokshard.trainer.model import position_ids_from_bos

LN2 = math.log(2.0)


@dataclass
class Score:
    nats: float  # Σ -ln p(target) over scored, non-special targets
    bytes: int  # Σ token_bytes of those targets
    tokens: int  # how many targets were scored

    @property
    def bpb(self) -> float | None:
        """Bits per byte; None when nothing with bytes was scored (JSON-safe, unlike nan)."""
        return self.nats / (LN2 * self.bytes) if self.bytes else None

    @property
    def loss(self) -> float | None:
        """Mean nats per scored token."""
        return self.nats / self.tokens if self.tokens else None

    def __add__(self, other: Score) -> Score:
        return Score(self.nats + other.nats, self.bytes + other.bytes, self.tokens + other.tokens)


def plan_windows(n: int, context_len: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of n tokens as (a, b, c): input tokens [a, b) predict positions a+1..b, of
    which positions c+1..b are scored. Position 0 is context only."""
    if n < 2:
        return []
    b = min(n - 1, context_len)
    windows = [(0, b, 0)]
    while b < n - 1:
        nb = min(b + stride, n - 1)
        windows.append((nb - context_len, nb, b))
        b = nb
    return windows


def _model_config(model: torch.nn.Module):
    return getattr(model, "config", None) or getattr(getattr(model, "_orig_mod", None), "config", None)


@torch.inference_mode()
def _score_rows(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor,
                token_bytes: torch.Tensor, bos_id: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (nats, bytes, tokens) of one padded batch; `scored` masks the targets that count. With `bos_id`,
    attention is masked per document (each `<|bos|>` starts one), as a model trained on packed rows expects."""
    position_ids = None if bos_id is None else position_ids_from_bos(inputs, bos_id)
    if inputs.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(inputs, position_ids)
    else:
        logits = model(inputs, position_ids)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    nbytes = token_bytes[targets]
    mask = scored & (nbytes > 0)
    return ((nll.double() * mask).sum(1), (nbytes * mask).sum(1), mask.sum(1))


def _check_vocab(model: torch.nn.Module, token_bytes: np.ndarray) -> None:
    cfg = _model_config(model)
    if cfg is not None and len(token_bytes) != cfg.vocab_size:
        raise ValueError(f"token_bytes has {len(token_bytes)} entries but the model's vocabulary is "
                         f"{cfg.vocab_size}: the tokenizer does not belong to this checkpoint")


def score_sequences(
    model: torch.nn.Module,
    sequences: Sequence[np.ndarray | list[int]],
    token_bytes: np.ndarray,
    context_len: int,
    device: str = "cpu",
    batch_size: int = 16,
    stride: int | None = None,
) -> list[Score]:
    """Score each sequence (`<|bos|>` first, used as context only): one Score per sequence, in order.

    Windows of all sequences are batched together (padded on the right, which causal attention cannot see).
    """
    cfg = _model_config(model)
    if context_len < 1 or (cfg is not None and context_len > cfg.seq_len):
        limit = cfg.seq_len if cfg is not None else "?"
        raise ValueError(f"context_len must be in [1, {limit}] (the model's context), got {context_len}")
    if stride is None:
        stride = max(1, context_len // 2)
    if not 1 <= stride <= context_len:
        raise ValueError(f"stride must be in [1, context_len={context_len}], got {stride}")
    _check_vocab(model, token_bytes)
    vocab = len(token_bytes)
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    rows: list[tuple[int, int, int, int]] = []  # (sequence, a, b, c)
    for i, s in enumerate(seqs):
        if len(s) and (int(s.min()) < 0 or int(s.max()) >= vocab):
            bad = int(s[(s < 0) | (s >= vocab)][0])
            raise ValueError(f"sequence {i} holds token id {bad}, outside the vocabulary of {vocab}")
        rows.extend((i, a, b, c) for a, b, c in plan_windows(len(s), context_len, stride))
    # Similar lengths together: less padding.
    rows.sort(key=lambda r: r[2] - r[1])
    tb = torch.as_tensor(np.asarray(token_bytes, dtype=np.int64), device=device)
    nats = np.zeros(len(seqs), dtype=np.float64)
    nbytes = np.zeros(len(seqs), dtype=np.int64)
    ntok = np.zeros(len(seqs), dtype=np.int64)
    for lo in range(0, len(rows), batch_size):
        batch = rows[lo : lo + batch_size]
        width = max(b - a for _, a, b, _ in batch)
        inp = np.zeros((len(batch), width), dtype=np.int64)
        tgt = np.zeros((len(batch), width), dtype=np.int64)
        scored = np.zeros((len(batch), width), dtype=bool)
        for j, (i, a, b, c) in enumerate(batch):
            inp[j, : b - a] = seqs[i][a:b]
            tgt[j, : b - a] = seqs[i][a + 1 : b + 1]
            scored[j, c - a : b - a] = True
        n, by, tk = _score_rows(model, *(torch.from_numpy(x).to(device) for x in (inp, tgt, scored)), tb)
        owners = np.array([r[0] for r in batch])
        np.add.at(nats, owners, n.cpu().numpy())
        np.add.at(nbytes, owners, by.cpu().numpy())
        np.add.at(ntok, owners, tk.cpu().numpy())
    return [Score(float(nats[i]), int(nbytes[i]), int(ntok[i])) for i in range(len(seqs))]


def score_windows(model: torch.nn.Module, windows: np.ndarray, token_bytes: np.ndarray, device: str = "cpu",
                  batch_size: int = 16, lengths: np.ndarray | None = None, bos_id: int | None = None) -> Score:
    """Total Score of fixed windows [N, L+1] (token i+1 is the target of token i, all targets scored), the
    trainer's validation set. `lengths` (optional) gives each row's real length when rows are right-padded;
    `bos_id` (optional) masks attention per document inside each window."""
    _check_vocab(model, token_bytes)
    tb = torch.as_tensor(np.asarray(token_bytes, dtype=np.int64), device=device)
    total = Score(0.0, 0, 0)
    width = windows.shape[1] - 1
    for lo in range(0, len(windows), batch_size):
        w = torch.from_numpy(np.ascontiguousarray(windows[lo : lo + batch_size], dtype=np.int64)).to(device)
        scored = torch.ones(w.shape[0], width, dtype=torch.bool, device=device)
        if lengths is not None:
            n = torch.as_tensor(lengths[lo : lo + batch_size], device=device)
            scored = torch.arange(width, device=device)[None, :] < (n[:, None] - 1)
        n_, b_, t_ = _score_rows(model, w[:, :-1], w[:, 1:], scored, tb, bos_id)
        total = total + Score(float(n_.sum()), int(b_.sum()), int(t_.sum()))
    return total
