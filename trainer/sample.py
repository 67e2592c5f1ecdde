"""Generation: continue a prompt with a trained checkpoint (temperature / top-k sampling, or greedy).

The tokenizer is found beside the checkpoint: a run directory holds `tokenizer/` (copied there by the trainer),
and `--tokenizer DIR` overrides it. Its sha256 must be the one the checkpoint was trained with.
Each new token re-reads the whole (cropped) context: no KV cache, which keeps this simple and is fast enough
for the short samples it is for.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tokshard.pipeline.tokenizer import Tokenizer
from tokshard.trainer.checkpoint import load_inference
from tokshard.trainer.defaults import SAMPLE_DEFAULTS
from tokshard.trainer.model import GPT


@torch.inference_mode()
def generate(model: GPT, ids: list[int], max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 50,
             seed: int | None = 0, stop_id: int | None = None, device: str = "cpu") -> list[int]:
    """The new token ids after `ids` (which should start with <|bos|>); stops early at `stop_id`."""
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    ctx = torch.tensor([ids], dtype=torch.long, device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(ctx[:, -model.config.seq_len :])[0, -1]
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        if nxt == stop_id:
            break
        new.append(nxt)
        ctx = torch.cat([ctx, torch.tensor([[nxt]], device=device)], dim=1)
    return new


def find_tokenizer(checkpoint: str | Path, tokenizer_dir: str | Path | None, sha256: str) -> Tokenizer:
    ckpt = Path(checkpoint)
    d = Path(tokenizer_dir) if tokenizer_dir else ckpt.parent / "tokenizer"
    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer found at {d} (a run directory has one beside its checkpoints); "
                                "pass --tokenizer DIR")
    tok = Tokenizer.load(d)
    if tok.sha256 != sha256:
        raise ValueError(f"{d} is tokenizer {tok.sha256[:12]}…, but {ckpt.name} was trained with {sha256[:12]}…")
    return tok


def sample(checkpoint: str | Path, prompt: str, *, max_new_tokens: int = SAMPLE_DEFAULTS["max_new_tokens"],
           temperature: float = SAMPLE_DEFAULTS["temperature"], top_k: int | None = SAMPLE_DEFAULTS["top_k"],
           seed: int | None = SAMPLE_DEFAULTS["seed"], tokenizer_dir: str | Path | None = None,
           device: str = SAMPLE_DEFAULTS["device"]) -> dict:
    inf = load_inference(checkpoint, device=device)
    tok = find_tokenizer(checkpoint, tokenizer_dir, inf.tokenizer_sha256)
    ids = tok.encode(prompt, bos=True)
    new = generate(inf.model, ids, max_new_tokens, temperature, top_k, seed, stop_id=tok.bos_id, device=device)
    return {"prompt": prompt, "completion": tok.decode(new), "tokens": new, "step": inf.step, "name": inf.name}
