"""Checkpoints: full training state for `--resume`, and a small inference export for the service and sampling.

Both are one `torch.save` file written atomically (temp name, fsync, rename: pipeline/atomic.py) and read back
with `weights_only=True` (plain tensors, numbers and strings; no pickled code runs on load).

- training (`tokshard-train/1`): model weights (fp32 master copy), every optimiser's state, step, data position,
  model and training config, tokenizer sha256, run name, and the torch RNG state.
- inference (`tokshard-inference/1`): weights (fp32 unless asked otherwise), model config, tokenizer sha256,
  step and name — no optimiser state, a third of the size.

`load_inference` accepts both kinds (a training checkpoint carries everything an inference one does), so the
service can serve a run's latest `checkpoint.pt` as well as its exported `model.pt`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokshard.pipeline import atomic
from tokshard.trainer.model import GPT, GPTConfig

INFERENCE_FORMAT = "tokshard-inference/1"
TRAIN_FORMAT = "tokshard-train/1"


@dataclass
class InferenceModel:
    model: GPT  # eval mode, on the requested device, fp32
    config: GPTConfig
    tokenizer_sha256: str
    step: int
    name: str


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside a torch.compile and/or DistributedDataParallel wrapper."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model  # type: ignore[return-value]


def _save(path: str | os.PathLike[str], obj: dict[str, Any]) -> Path:
    with atomic.atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} not found (a run writes RUNDIR/model.pt and RUNDIR/checkpoint.pt)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError... for a damaged file
        raise ValueError(f"{p} is not a readable tokshard checkpoint (truncated or not a torch file): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(obj, dict) or obj.get("format") not in (INFERENCE_FORMAT, TRAIN_FORMAT):
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{p} is not a tokshard checkpoint (format {found!r}; expected {INFERENCE_FORMAT} "
                         f"or {TRAIN_FORMAT})")
    return obj


def export_inference(path: str | os.PathLike[str], model: torch.nn.Module, config: GPTConfig, *,
                     tokenizer_sha256: str, step: int, name: str, dtype: torch.dtype | None = None) -> Path:
    """Write a small inference checkpoint; weights in `dtype` (default: as trained, fp32)."""
    state = {k: v.detach().to("cpu", dtype=dtype or v.dtype).clone() for k, v in unwrap(model).state_dict().items()}
    return _save(path, {"format": INFERENCE_FORMAT, "config": config.to_dict(), "state_dict": state,
                        "tokenizer_sha256": tokenizer_sha256, "step": int(step), "name": name})


def load_inference(path: str | os.PathLike[str], device: str = "cpu") -> InferenceModel:
    """Load an inference or training checkpoint as an fp32 GPT in eval mode on `device`."""
    obj = _read(path)
    config = GPTConfig.from_dict(obj["config"])
    with torch.device(device):
        model = GPT(config)
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: the weights do not fit the model config stored with them: {e}") from e
    model.eval().requires_grad_(False)
    return InferenceModel(model=model, config=config, tokenizer_sha256=obj["tokenizer_sha256"],
                          step=int(obj["step"]), name=obj["name"])


def save_training(path: str | os.PathLike[str], *, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                  config: GPTConfig, train_config: dict[str, Any], step: int, data_position: int,
                  tokenizer_sha256: str, name: str) -> Path:
    return _save(path, {
        "format": TRAIN_FORMAT, "config": config.to_dict(), "train_config": train_config,
        "state_dict": unwrap(model).state_dict(), "optimizers": [o.state_dict() for o in optimizers],
        "step": int(step), "data_position": int(data_position), "tokenizer_sha256": tokenizer_sha256,
        "name": name, "torch_rng": torch.get_rng_state(),
    })


def load_training(path: str | os.PathLike[str]) -> dict[str, Any]:
    obj = _read(path)
    if obj["format"] != TRAIN_FORMAT:
        raise ValueError(f"{path} is an inference export (no optimiser state); --resume needs the run's "
                         "checkpoint.pt")
    return obj
