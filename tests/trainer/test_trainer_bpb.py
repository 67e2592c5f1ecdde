"""Bits-per-byte scoring: a hand computation, sliding windows, special tokens, batching, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokshard.trainer.bpb import Score, plan_windows, score_sequences, score_windows
from tokshard.trainer.model import GPT, GPTConfig

# ids 0..4 are text tokens of 1, 2, 1, 3, 1 bytes; id 5 plays <|bos|> (0 bytes, special)
TOKEN_BYTES = np.array([1, 2, 1, 3, 1, 0], dtype=np.int32)
BOS = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bigram_model(vocab: int = 6, seq_len: int = 64, seed: int = 0) -> GPT:
    """No blocks: logits at t depend on token t only, so any context gives the same scores."""
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=vocab, n_layer=0, n_head=1, n_embd=4, seq_len=seq_len, logit_cap=0.0))
    with torch.no_grad():
        m.lm_head.weight.normal_(0, 1.0)
        m.norm.weight.uniform_(0.5, 1.5)
    return m.eval()


def small_model(vocab: int = 6, seq_len: int = 64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, n_embd=16, seq_len=seq_len))
    with torch.no_grad():  # non-zero residual outputs and head, so context really matters
        for p in m.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.5)
    return m.eval()


def test_bpb_matches_a_hand_computation():
    m = bigram_model()
    e = m.wte.weight.detach().double().numpy()
    g = m.norm.weight.detach().double().numpy()
    w = m.lm_head.weight.detach().double().numpy()
    seq = [BOS, 0, 3, BOS, 2, 1]
    nats = 0.0
    for prev, tgt in itertools.pairwise(seq):
        if TOKEN_BYTES[tgt] == 0:
            continue
        x = e[prev] / math.sqrt(np.mean(e[prev] ** 2) + 1e-6) * g
        z = w @ x
        nats -= z[tgt] - (z.max() + math.log(np.exp(z - z.max()).sum()))
    (score,) = score_sequences(m, [seq], TOKEN_BYTES, context_len=8)
    assert score.tokens == 4 and score.bytes == 1 + 3 + 1 + 2
    assert score.nats == pytest.approx(nats, rel=1e-5)
    assert score.bpb == pytest.approx(nats / (math.log(2) * 7), rel=1e-5)


def test_long_sequences_in_windows_equal_a_context_that_fits():
    m = bigram_model()
    rng = np.random.default_rng(1)
    seqs = [np.concatenate([[BOS], rng.integers(0, 6, size=n)]) for n in (5, 40, 97)]
    fits = score_sequences(m, seqs, TOKEN_BYTES, context_len=64)
    small = score_sequences(m, seqs, TOKEN_BYTES, context_len=7)
    odd = score_sequences(m, seqs, TOKEN_BYTES, context_len=10, stride=3)
    for a, b, c in zip(fits, small, odd, strict=True):
        assert a.tokens == b.tokens == c.tokens and a.bytes == b.bytes == c.bytes
        assert a.nats == pytest.approx(b.nats, rel=1e-6) and a.nats == pytest.approx(c.nats, rel=1e-6)
    # the 98-token sequence needs windows even at 64: still every non-special target exactly once
    assert fits[2].tokens == int((TOKEN_BYTES[seqs[2][1:]] > 0).sum())


def test_windows_cover_every_target_once_with_full_later_windows():
    for n in range(0, 60):
        for ctx in (1, 2, 5, 16):
            for stride in {1, max(1, ctx // 2), ctx}:
                seen = []
                windows = plan_windows(n, ctx, stride)
                for k, (a, b, c) in enumerate(windows):
                    assert 0 <= a <= c < b and b - a <= ctx
                    if k:
                        assert b - a == ctx and c - a >= ctx - stride  # full window, enough left context
                    seen.extend(range(c + 1, b + 1))
                assert seen == list(range(1, n)), (n, ctx, stride)


def test_real_model_windows_equal_a_direct_per_position_sum():
    m = small_model(seq_len=128)
    rng = np.random.default_rng(2)
    seq = np.concatenate([[BOS], rng.integers(0, 5, size=45), [BOS], rng.integers(0, 5, size=20)])
    ctx, stride = 16, 5
    expected = 0.0
    with torch.no_grad():
        for a, b, c in plan_windows(len(seq), ctx, stride):
            logp = F.log_softmax(m(torch.tensor(seq[a:b])[None])[0].double(), -1)
            for p in range(c + 1, b + 1):
                if TOKEN_BYTES[seq[p]]:
                    expected -= float(logp[p - a - 1, seq[p]])
    (score,) = score_sequences(m, [seq], TOKEN_BYTES, context_len=ctx, stride=stride)
    assert score.nats == pytest.approx(expected, rel=1e-5)
    assert score.tokens == int((TOKEN_BYTES[seq[1:]] > 0).sum())
    # with a context that fits, one plain forward pass over the whole sequence
    with torch.no_grad():
        logp = F.log_softmax(m(torch.tensor(seq[:-1])[None])[0].double(), -1)
    direct = -sum(float(logp[p - 1, seq[p]]) for p in range(1, len(seq)) if TOKEN_BYTES[seq[p]])
    (full,) = score_sequences(m, [seq], TOKEN_BYTES, context_len=128)
    assert full.nats == pytest.approx(direct, rel=1e-5)
    assert full.nats != pytest.approx(score.nats, rel=1e-4), "a real model should care about the lost context"


def test_special_tokens_and_short_sequences_score_nothing():
    m = small_model()
    scores = score_sequences(m, [[], [BOS], [BOS, BOS, BOS], [BOS, 1]], TOKEN_BYTES, context_len=8)
    assert [(s.tokens, s.bytes, s.nats) for s in scores[:3]] == [(0, 0, 0.0)] * 3
    assert scores[0].bpb is None and scores[0].loss is None
    assert scores[3].tokens == 1 and scores[3].bytes == 2 and scores[3].bpb > 0


def test_batch_size_does_not_change_scores():
    m = small_model()
    rng = np.random.default_rng(3)
    seqs = [np.concatenate([[BOS], rng.integers(0, 6, size=int(n))]) for n in rng.integers(0, 50, size=9)]
    one = score_sequences(m, seqs, TOKEN_BYTES, context_len=12, batch_size=1)
    many = score_sequences(m, seqs, TOKEN_BYTES, context_len=12, batch_size=7)
    for a, b in zip(one, many, strict=True):
        assert (a.tokens, a.bytes) == (b.tokens, b.bytes) and a.nats == pytest.approx(b.nats, rel=1e-5, abs=1e-9)


def test_score_windows_is_the_same_definition():
    m = small_model()
    rng = np.random.default_rng(4)
    windows = np.concatenate([np.full((6, 1), BOS), rng.integers(0, 6, size=(6, 16))], axis=1)
    total = score_windows(m, windows, TOKEN_BYTES, batch_size=4)
    per_seq = score_sequences(m, list(windows), TOKEN_BYTES, context_len=16)
    assert total.tokens == sum(s.tokens for s in per_seq) and total.bytes == sum(s.bytes for s in per_seq)
    assert total.nats == pytest.approx(sum(s.nats for s in per_seq), rel=1e-6)
    # right-padded rows with their real lengths score only the real targets
    lengths = np.array([17, 9, 2, 17, 1, 5])
    padded = score_windows(m, windows, TOKEN_BYTES, lengths=lengths)
    cut = score_sequences(m, [w[:n] for w, n in zip(windows, lengths, strict=True)], TOKEN_BYTES, context_len=16)
    assert padded.tokens == sum(s.tokens for s in cut)
    assert padded.nats == pytest.approx(sum(s.nats for s in cut), rel=1e-6)


def test_score_addition_and_bpb():
    s = Score(2.0, 3, 2) + Score(1.0, 1, 1)
    assert (s.nats, s.bytes, s.tokens) == (3.0, 4, 3)
    assert s.bpb == pytest.approx(3.0 / (math.log(2) * 4))


def test_bad_inputs_are_clear_errors():
    m = small_model(seq_len=16)
    with pytest.raises(ValueError, match="context_len"):
        score_sequences(m, [[BOS, 1]], TOKEN_BYTES, context_len=17)
    with pytest.raises(ValueError, match="token id 9"):
        score_sequences(m, [[BOS, 1], [BOS, 9]], TOKEN_BYTES, context_len=8)
    with pytest.raises(ValueError, match="does not belong"):
        score_sequences(m, [[BOS, 1]], TOKEN_BYTES[:5], context_len=8)
