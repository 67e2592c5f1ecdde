"""The GPT and its checkpoints: shapes, causality, presets, export/load round trips and their errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokshard.trainer import checkpoint
from tokshard.trainer.model import GPT, GPTConfig, count_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(vocab: int = 97, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab, **kw))


def test_forward_shape_and_initial_loss_near_uniform():
    m = tiny()
    idx = torch.randint(0, 97, (3, 20))
    logits = m(idx)
    assert logits.shape == (3, 20, 97) and logits.dtype == torch.float32
    loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 97, (60,)))
    assert abs(loss.item() - math.log(97)) < 0.05


def test_model_is_causal():
    m = tiny()
    with torch.no_grad():
        for p in m.parameters():  # non-zero residual branches so attention matters
            if p.ndim == 2:
                p.normal_(0, 0.3)
    idx = torch.randint(0, 97, (1, 30))
    changed = idx.clone()
    changed[0, 12] = (changed[0, 12] + 1) % 97
    a, b = m(idx), m(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_input_longer_than_context_is_refused():
    m = tiny(seq_len=16)
    with pytest.raises(ValueError, match="longer than the model's context of 16"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_presets_and_sizes():
    c = GPTConfig.preset("gpt2-small", 32768)
    assert (c.n_layer, c.n_head, c.n_embd, c.seq_len, c.hidden) == (12, 12, 768, 1024, 2048)
    counts = count_params(c)
    # GPT-2 small's 85M transformer matrices; untied embedding and head of 32768 x 768 each
    assert counts["hidden_matrices"] == 12 * (4 * 768 * 768 + 3 * 768 * 2048) == 84_934_656
    assert counts["embedding"] == counts["head"] == 32768 * 768
    assert GPTConfig.preset("tiny", 100, n_layer=3, n_embd=None).n_layer == 3
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("huge", 100)
    with pytest.raises(ValueError, match="even size"):
        GPTConfig(vocab_size=10, n_head=3, n_embd=9)
    assert GPTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown model config"):
        GPTConfig.from_dict({**c.to_dict(), "future_field": 1})


def test_export_and_load_inference_round_trip(tmp_path):
    m = tiny()
    with torch.no_grad():
        m.lm_head.weight.normal_(0, 0.1)
    path = checkpoint.export_inference(tmp_path / "model.pt", m, m.config, tokenizer_sha256="ab" * 32, step=7,
                                       name="unit")
    assert path == tmp_path / "model.pt" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    loaded = checkpoint.load_inference(path)
    assert (loaded.config, loaded.tokenizer_sha256, loaded.step, loaded.name) == (m.config, "ab" * 32, 7, "unit")
    assert not loaded.model.training
    idx = torch.randint(0, 97, (2, 10))
    assert torch.equal(loaded.model(idx), m(idx))
    # a bf16 export loads as fp32 weights equal to the rounded ones
    checkpoint.export_inference(tmp_path / "bf16.pt", m, m.config, tokenizer_sha256="x", step=1, name="b",
                                dtype=torch.bfloat16)
    half = checkpoint.load_inference(tmp_path / "bf16.pt")
    assert half.model.lm_head.weight.dtype == torch.float32
    assert torch.equal(half.model.lm_head.weight, m.lm_head.weight.bfloat16().float())
    assert (tmp_path / "bf16.pt").stat().st_size < 0.6 * path.stat().st_size


def test_training_checkpoint_is_accepted_for_inference(tmp_path):
    m = tiny()
    opt = torch.optim.AdamW(m.parameters())
    m(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    p = checkpoint.save_training(tmp_path / "checkpoint.pt", model=m, optimizers=[opt], config=m.config,
                                 train_config={"steps": 3}, step=3, data_position=12, tokenizer_sha256="t",
                                 name="run")
    loaded = checkpoint.load_inference(p)
    assert loaded.step == 3 and torch.equal(loaded.model.wte.weight, m.wte.weight)
    state = checkpoint.load_training(p)
    assert state["data_position"] == 12 and state["train_config"] == {"steps": 3}
    inf = checkpoint.export_inference(tmp_path / "model.pt", m, m.config, tokenizer_sha256="t", step=3, name="r")
    with pytest.raises(ValueError, match="inference export"):
        checkpoint.load_training(inf)


def test_bad_checkpoint_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt not found"):
        checkpoint.load_inference(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable tokshard checkpoint"):
        checkpoint.load_inference(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tokshard checkpoint"):
        checkpoint.load_inference(tmp_path / "other.pt")
    m = tiny()
    good = checkpoint.export_inference(tmp_path / "good.pt", m, m.config, tokenizer_sha256="t", step=0, name="n")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable tokshard checkpoint"):
        checkpoint.load_inference(tmp_path / "cut.pt")
