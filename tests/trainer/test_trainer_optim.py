"""Muon's orthogonalisation and update, the parameter split between Muon and AdamW, and the WSD schedule."""

from __future__ import annotations

import itertools

import pytest
import torch

from tokshard.trainer.model import GPT, GPTConfig
from tokshard.trainer.optim import Muon, build_optimizers, lr_multiplier, orthogonalize, param_groups


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_newton_schulz_makes_singular_values_near_one(shape):
    torch.manual_seed(0)
    k = min(shape)
    u0, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v0, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u0 @ torch.diag(torch.logspace(-1.5, 1, k)) @ v0.T  # singular values spread over 2.5 decades
    o = orthogonalize(g)
    s = torch.linalg.svdvals(o)
    assert o.shape == g.shape and s.min() > 0.5 and s.max() < 1.3
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    cos = (o * (u @ vt)).sum() / (o.norm() * (u @ vt).norm())
    assert cos > 0.95  # close to the exact polar factor U·Vᵀ


def test_batched_orthogonalisation_equals_one_by_one():
    torch.manual_seed(1)
    gs = torch.randn(3, 16, 40)
    batched = orthogonalize(gs)
    for g, b in zip(gs, batched, strict=True):
        torch.testing.assert_close(orthogonalize(g), b, rtol=1e-5, atol=1e-5)


def test_muon_step_agrees_with_torch_optim_muon():
    torch.manual_seed(2)
    w0 = torch.randn(24, 40)
    grads = [torch.randn(24, 40) for _ in range(3)]
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_a = Muon([ours], lr=0.05, momentum=0.9, weight_decay=0.1)
    opt_b = torch.optim.Muon([ref], lr=0.05, momentum=0.9, weight_decay=0.1, adjust_lr_fn="original")
    for g in grads:
        ours.grad, ref.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    da, db = (ours - w0).detach(), (ref - w0).detach()
    # torch's runs Newton–Schulz in bf16 even on the CPU, ours in fp32: equal up to bf16 rounding
    assert float((da * db).sum() / (da.norm() * db.norm())) > 0.995
    assert float(da.norm() / db.norm()) == pytest.approx(1.0, abs=0.02)


def test_muon_refuses_non_matrices():
    with pytest.raises(ValueError, match="2-D matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(5))])


def test_parameters_split_between_muon_and_adamw():
    model = GPT(GPTConfig.preset("tiny", 300, n_layer=3))
    groups = param_groups(model)
    assert groups["embed"] == [model.wte.weight] and groups["head"] == [model.lm_head.weight]
    assert len(groups["matrix"]) == 3 * 7 and all(p.ndim == 2 for p in groups["matrix"])
    assert all(p.ndim == 1 for p in groups["scalar"]) and len(groups["scalar"]) == 3 * 2 + 1
    every = [id(p) for g in groups.values() for p in g]
    assert sorted(every) == sorted(id(p) for p in model.parameters())
    muon, adam = build_optimizers(model, matrix_lr=0.02, embed_lr=0.1, head_lr=0.01, scalar_lr=0.01)
    assert isinstance(muon, Muon) and isinstance(adam, torch.optim.AdamW)
    assert [g["lr"] for g in adam.param_groups] == [0.1, 0.01, 0.01]
    with pytest.raises(ValueError, match="unknown Muon"):
        build_optimizers(model, matrix_lr=0.02, embed_lr=0.1, head_lr=0.01, scalar_lr=0.01, muon="sgd")


def test_warmup_stable_decay_schedule():
    lr = [lr_multiplier(s, total=100, warmup=10, cooldown_frac=0.4) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == 1.0
    assert all(x == 1.0 for x in lr[10:61])
    assert lr[60] == 1.0 and lr[61] == pytest.approx(1 - 1 / 40) and lr[99] == pytest.approx(1 / 40)
    assert all(a > b for a, b in itertools.pairwise(lr[60:]))
    assert lr_multiplier(99, 100, 0, 0.0) == 1.0
    assert lr_multiplier(99, 100, 0, 0.5, final_frac=0.1) == pytest.approx(0.1 + 0.9 / 50)
