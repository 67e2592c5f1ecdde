"""The trainer's defaults in one torch-free place: `trainer/train.py` resolves settings from them, `trainer/model.py`
builds the presets' shapes from them, and `tokshard train --help` prints them (the CLI must not import torch).
"""

from __future__ import annotations

from typing import Any

H100_BF16_PEAK_FLOPS = 989e12  # H100 SXM dense bf16 tensor-core peak (NVIDIA datasheet; 756e12 for the PCIe card)

PRESETS: dict[str, dict[str, int]] = {
    # Small enough to run a few hundred steps on 2 CPU cores in well under a minute (tests, smoke runs).
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 128},
    # GPT-2 small's shape (nanoGPT's baseline): 12 x 768, 12 heads, 1024 context; 85M non-embedding parameters
    # with the SwiGLU width chosen to match a 4x GELU MLP.
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "seq_len": 1024},
}

DEFAULTS: dict[str, Any] = {
    "preset": "tiny", "grad_accum": 1, "matrix_lr": 0.02, "embed_lr": 0.1, "head_lr": 0.01, "scalar_lr": 0.01,
    "weight_decay": 0.0, "cooldown_frac": 0.4, "clip": 1.0, "seed": 0, "muon": "tokshard",
    "eval_tokens": 1 << 20, "log_every": 10, "device": "auto", "prefetch": 4, "peak_flops": H100_BF16_PEAK_FLOPS,
    "packing": "best-fit-split",
}
# best-fit: rows of whole documents from their <|bos|> (longer ones cropped), attention masked per document;
# best-fit-split: the same, documents longer than a row cut into row-sized pieces; windows: fixed windows across
# documents, unmasked (nanoGPT's way). The default keeps every token (best-fit crops 68% of ../shared/corpus's
# tokens at the tiny preset's 128) and is what a `tokshard mix` plan holds. At the tiny preset in 300 steps it
# reached val BPB 2.210 vs 2.137 for windows, and windows cut from the same documents 2.205: the gap is which
# documents a short run samples, not packing; the mask costs nothing there (2.212 without it). docs/benchmarks.md
PACKINGS = ("best-fit", "best-fit-split", "windows")
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"steps": 300, "batch_size": 16, "eval_every": 100},
    # 32 x 1024 tokens x 16 micro-steps = 0.5M tokens per step on one GPU (nanoGPT's batch); torchrun with N
    # GPUs multiplies it by N unless --grad-accum is lowered.
    "gpt2-small": {"steps": 5000, "batch_size": 32, "grad_accum": 16, "eval_every": 250},
}

# `tokshard sample` / `trainer.sample.sample`: generation settings
SAMPLE_DEFAULTS: dict[str, Any] = {"max_new_tokens": 100, "temperature": 0.8, "top_k": 50, "seed": 0, "device": "cpu"}
