"""The model: a decoder-only GPT (RoPE, SwiGLU MLP, pre-norm RMSNorm, no biases, untied embedding and head,
optional QK-norm) and its configuration with named size presets.

`GPT.forward(idx, position_ids)` returns fp32 logits [B, T, vocab]; the loss is computed by the caller so the same
forward serves training, bits-per-byte scoring and sampling. `GPTConfig.seq_len` is the context length: the RoPE
tables are built for it and longer inputs are refused.

With `position_ids` (each token's position inside its document, 0 at a document's first token, as
`tokshard.data` yields them) attention is masked per document: a token attends only to earlier tokens of its own
document, and RoPE restarts at every document, so a packed row trains exactly like its documents one by one.
The mask is a block-diagonal boolean mask passed to `scaled_dot_product_attention`, which runs on CPU and CUDA
(on CUDA it selects the memory-efficient kernel; flash attention takes no mask).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokshard.trainer.defaults import PRESETS


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    seq_len: int = 1024
    mlp_hidden: int = 0  # 0: 8/3 * n_embd rounded up to a multiple of 64 (a SwiGLU as wide in FLOPs as a 4x MLP)
    qk_norm: bool = True
    rope_base: float = 10_000.0
    logit_cap: float = 15.0  # tanh soft cap on the logits, 0 = off; keeps early high-LR steps from blowing up

    def __post_init__(self) -> None:
        if self.vocab_size < 1 or self.n_layer < 0 or self.n_head < 1 or self.seq_len < 1:
            raise ValueError(f"invalid model size: {self}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must split into {self.n_head} heads of an even size (RoPE)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or _round_up(8 * self.n_embd / 3, 64)

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides: Any) -> GPTConfig:
        """A named size (`tiny`, `gpt2-small`) for `vocab_size`; keyword overrides (None = keep) win."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(vocab_size=vocab_size, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}: written by a newer tokshard?")
        return cls(**d)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # [T, head_dim/2]
    return angles.cos(), angles.sin()


def document_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool: query i may attend key j when j <= i and both lie in the same document (a document
    starts where the position is 0)."""
    doc = torch.cumsum(position_ids == 0, dim=1)
    t = position_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal).unsqueeze(1)


def position_ids_from_bos(idx: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Positions inside documents for rows of token ids where every `<|bos|>` starts a document (and so does a
    row's first token): how to mask windows cut from a flat token stream, such as the validation windows."""
    t = idx.shape[1]
    ar = torch.arange(t, device=idx.device).expand_as(idx)
    starts = torch.where(idx == bos_id, ar, torch.zeros_like(ar))
    return ar - torch.cummax(starts, dim=1).values


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's channels; x is [B, H, T, D]."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.qk_norm = cfg.n_head, cfg.head_dim, cfg.qk_norm
        # Separate projections, so Muon orthogonalises each of q, k, v, o as its own matrix.
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.k = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.v = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.o = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.up = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.n_embd, eps=1e-6)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.n_embd, eps=1e-6)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd, eps=1e-6)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        cos, sin = rope_tables(config.seq_len, config.head_dim, config.rope_base)
        # Not saved in checkpoints: rebuilt from the config, so a checkpoint holds weights only.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-variance embeddings and input projections; residual outputs start at zero, so every block
        begins as the identity and the head starts near uniform (initial loss ~ ln(vocab))."""
        nn.init.normal_(self.wte.weight, std=1.0)
        for block in self.blocks:
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.mlp.gate, block.mlp.up):
                nn.init.normal_(lin.weight, std=lin.in_features**-0.5)
            nn.init.zeros_(block.attn.o.weight)
            nn.init.zeros_(block.mlp.down.weight)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for m in self.modules():
            if isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)
        cos, sin = rope_tables(self.config.seq_len, self.config.head_dim, self.config.rope_base)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def forward(self, idx: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """idx [B, T] int token ids (T <= seq_len) -> fp32 logits [B, T, vocab_size]. `position_ids` [B, T]
        (optional): positions inside documents; attention is then masked per document (module doc)."""
        t = idx.shape[1]
        if t > self.config.seq_len:
            raise ValueError(f"input of {t} tokens is longer than the model's context of {self.config.seq_len}")
        mask = None
        if position_ids is None:
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        else:  # [B, 1, T, D/2]: broadcast over heads
            cos, sin = self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1)
            mask = document_mask(position_ids)
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        logits = self.lm_head(self.norm(x)).float()
        if self.config.logit_cap > 0:
            logits = self.config.logit_cap * torch.tanh(logits / self.config.logit_cap)
        return logits

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6 x the parameters used in matmuls (everything but
        the embedding lookup, the head included) + 12 x n_layer x n_embd x seq_len for attention scores and
        values (the PaLM appendix-B count; causal masking is not discounted)."""
        c = self.config
        return 6.0 * self.num_params(non_embedding=True) + 12.0 * c.n_layer * c.n_embd * c.seq_len


def count_params(config: GPTConfig) -> dict[str, int]:
    """Parameter counts without allocating weights (meta device): total, embedding, non-embedding."""
    with torch.device("meta"):
        m = GPT(config)
    total = m.num_params()
    emb = m.wte.weight.numel()
    return {"total": total, "embedding": emb, "non_embedding": total - emb,
            "flops_per_token": int(m.flops_per_token()), "head": m.lm_head.weight.numel(),
            "hidden_matrices": total - emb - m.lm_head.weight.numel() - sum(
                p.numel() for p in m.parameters() if p.ndim < 2)}


def _round_up(x: float, m: int) -> int:
    return int(math.ceil(x / m) * m)
