"""`tokshard train --help` and `tokshard sample --help` show the defaults the trainer runs with, taken from
trainer/defaults.py (the same tables `train.resolve` and `sample()` use), and importing the CLI needs no torch."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

from tokshard.pipeline import cli
from tokshard.trainer.defaults import DEFAULTS, PRESET_DEFAULTS, PRESETS, SAMPLE_DEFAULTS


def _sub(name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def test_train_help_shows_the_resolved_defaults():
    text = " ".join(_sub("train").format_help().split())
    for key in ("matrix_lr", "embed_lr", "head_lr", "scalar_lr", "clip", "cooldown_frac", "seed", "eval_tokens",
                "log_every", "muon", "packing", "preset"):
        assert f"(default: {DEFAULTS[key]})" in text, key
    for key in ("steps", "batch_size", "eval_every"):
        shown = ", ".join(f"{p[key]} ({name})" for name, p in PRESET_DEFAULTS.items())
        assert f"(default: {shown})" in text, key
    assert "(default: 1 (tiny), 16 (gpt2-small))" in text  # grad_accum: global default under one preset
    for key in ("n_layer", "n_embd", "seq_len"):
        assert "default: " + ", ".join(f"{p[key]} ({name})" for name, p in PRESETS.items()) in text, key


def test_sample_defaults_are_the_functions():
    from tokshard.trainer.sample import sample

    p = _sub("sample")
    params = inspect.signature(sample).parameters
    for dest, key in (("max_tokens", "max_new_tokens"), ("temperature", "temperature"), ("top_k", "top_k"),
                      ("seed", "seed"), ("device", "device")):
        assert p.get_default(dest) == SAMPLE_DEFAULTS[key] == params[key].default, dest


def test_the_cli_imports_no_torch():
    code = "import sys, tokshard.trainer.cli, tokshard.pipeline.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
