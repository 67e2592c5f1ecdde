"""Optimisation: Muon for the 2-D hidden matrices, AdamW for the rest, and the warmup-stable-decay LR schedule.

Muon keeps SGD momentum on each weight matrix and replaces the (Nesterov) update by its nearest semi-orthogonal
matrix, approximated with a few Newton–Schulz iterations: every direction of the update moves the same amount,
so rare directions are not drowned by the dominant ones. It only makes sense for matrices that act as linear
maps inside the network; the embedding (a lookup table), the head (whose rows are per-token outputs) and the
1-D norm weights use AdamW.

`Muon` here is our own implementation (torch 2.13 also ships `torch.optim.Muon`, selectable with
`muon="torch"`): it batches the Newton–Schulz iteration over all matrices of one shape (one bmm chain per shape
instead of one per matrix, which matters on a GPU where 48 small matmul chains are launch-bound), and
orthogonalises in fp32 on the CPU (exact resumes, no slow CPU bf16) and in bf16 on CUDA. docs/benchmarks.md has
the measured comparison.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

# Quintic Newton–Schulz coefficients tuned for a steep slope at zero (from Keller Jordan's Muon write-up): five
# iterations push every singular value of a norm-1 matrix into roughly [0.7, 1.2], which is all Muon needs.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U·Vᵀ of g = U·S·Vᵀ, batched over leading dimensions; bf16 on CUDA, fp32 elsewhere."""
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the short side: X·Xᵀ is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # Frobenius norm >= spectral norm: singular values <= 1
    a, b, c = NS_COEFFS
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * (s @ s)) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalised update for 2-D parameters.

    Per step: buf = momentum·buf + grad; update = grad + momentum·buf (Nesterov) or buf;
    p -= lr·wd·p; p -= lr·sqrt(max(1, rows/cols))·orthogonalize(update). The shape factor keeps the update's
    RMS per element comparable between wide and tall matrices.
    """

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5) -> None:
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
                    "ns_steps": ns_steps}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            grads = [p.grad.float() for p in params]
            mom, lr = group["momentum"], group["lr"]
            # foreach: one kernel per op for all matrices, not one per matrix (launch-bound on a GPU otherwise)
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, grads)
            updates = torch._foreach_add(grads, bufs, alpha=mom) if group["nesterov"] else bufs
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            by_shape: dict[torch.Size, list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[p.shape].append(i)
            for shape, idx in by_shape.items():
                ortho = orthogonalize(torch.stack([updates[i] for i in idx]), group["ns_steps"])
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                torch._foreach_add_([params[i] for i in idx], list(ortho.to(params[idx[0]].dtype).unbind(0)),
                                    alpha=-lr * scale)


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split a GPT's parameters: hidden 2-D matrices (Muon), embedding, head, and 1-D parameters (AdamW)."""
    groups: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [], "head": [], "scalar": []}
    for name, p in model.named_parameters():
        if name.startswith("wte."):
            groups["embed"].append(p)
        elif name.startswith("lm_head."):
            groups["head"].append(p)
        elif p.ndim == 2:
            groups["matrix"].append(p)
        else:
            groups["scalar"].append(p)
    return groups


def build_optimizers(model: nn.Module, *, matrix_lr: float, embed_lr: float, head_lr: float, scalar_lr: float,
                     weight_decay: float = 0.0, muon: str = "tokshard") -> list[torch.optim.Optimizer]:
    """[Muon, AdamW]. Each param group remembers its base LR as `initial_lr`; `set_lr` scales it."""
    groups = param_groups(model)
    fused = next(model.parameters()).is_cuda
    adam_groups = [{"params": groups[k], "lr": lr, "initial_lr": lr}
                   for k, lr in (("embed", embed_lr), ("head", head_lr), ("scalar", scalar_lr)) if groups[k]]
    adam = torch.optim.AdamW(adam_groups, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, fused=fused)
    if not groups["matrix"]:
        return [adam]
    matrix_group = [{"params": groups["matrix"], "lr": matrix_lr, "initial_lr": matrix_lr}]
    if muon == "tokshard":
        mu: torch.optim.Optimizer = Muon(matrix_group, lr=matrix_lr, weight_decay=weight_decay)
    elif muon == "torch":
        mu = torch.optim.Muon(matrix_group, lr=matrix_lr, weight_decay=weight_decay, adjust_lr_fn="original")
    else:
        raise ValueError(f"unknown Muon implementation {muon!r}; use 'tokshard' or 'torch'")
    return [mu, adam]


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier


def lr_multiplier(step: int, total: int, warmup: int, cooldown_frac: float, final_frac: float = 0.0) -> float:
    """Warmup-stable-decay: linear warmup over `warmup` steps, constant, then linear decay to `final_frac`
    over the last `cooldown_frac` of the `total` steps. `step` counts from 0 (the step about to run)."""
    if step < warmup:
        return (step + 1) / warmup
    cooldown = round(cooldown_frac * total)
    start = total - cooldown
    if cooldown <= 0 or step < start:
        return 1.0
    progress = (step - start) / cooldown  # the last step still moves (1/cooldown of the LR), none is wasted
    return 1.0 - progress * (1.0 - final_frac)
