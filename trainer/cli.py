"""`tokshard train` and `tokshard sample`, registered into the core CLI through the `tokshard.commands` entry
point. torch is imported inside the commands only, so `tokshard --help` stays fast and works without the
trainer extra; the defaults shown in --help come from the trainer's own tables (trainer/defaults.py), never
repeated here.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from tokshard.trainer.defaults import DEFAULTS, PACKINGS, PRESET_DEFAULTS, PRESETS, SAMPLE_DEFAULTS

S = argparse.SUPPRESS  # a flag not given stays absent: a resumed run then keeps the value it started with


def _preset_default(key: str) -> str:
    """The default of a setting as `train.resolve` picks it: the preset's value over the global one."""
    values = {name: preset.get(key, DEFAULTS.get(key)) for name, preset in PRESET_DEFAULTS.items()}
    if len(set(values.values())) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{v} ({name})" for name, v in values.items())


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train a GPT on token shards, reporting validation bits-per-byte",
                       description="Train a GPT on the shards of `tokshard encode` or the rows of a `tokshard mix` "
                       "plan. RUNDIR receives checkpoint.pt (for --resume), model.pt (inference export), log.jsonl, "
                       "loss.png, config.json and a copy of the tokenizer. Under torchrun, one process per GPU (DDP).")
    p.set_defaults(func=cmd_train)
    p.add_argument("--data", default=S, help="OUTDIR of `tokshard encode` (train/, val/, manifest.json, tokenizer/) "
                   "or a `tokshard mix` plan directory")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--preset", default=S, choices=list(PRESET_DEFAULTS),
                   help=f"model size (default: {DEFAULTS['preset']})")
    p.add_argument("--steps", type=int, default=S, help="optimiser steps, the LR schedule's length (default: "
                   f"{_preset_default('steps')})")
    p.add_argument("--stop-at", type=int, default=S, help="stop after this step with a checkpoint, schedule unchanged")
    p.add_argument("--device", default=S, help=f"cpu, cuda or auto (default: {DEFAULTS['device']}: cuda when "
                   "available)")
    p.add_argument("--packing", choices=PACKINGS, default=S, help="best-fit: rows packed from whole documents "
                   "from their <|bos|>, attention masked per document; best-fit-split: the same with documents longer "
                   "than a row cut into pieces instead of cropped; windows: fixed windows across documents (default: "
                   f"{DEFAULTS['packing']})")
    size = p.add_argument_group("model size (override the preset)")
    for key in ("n_layer", "n_head", "n_embd", "seq_len"):
        size.add_argument(f"--{key.replace('_', '-')}", type=int, default=S, help="default: " + ", ".join(
            f"{v[key]} ({name})" for name, v in PRESETS.items()))
    opt = p.add_argument_group("optimisation")
    for flag, kind, what in (
        ("batch-size", int, "sequences per micro-step per GPU"),
        ("grad-accum", int, "micro-steps per optimiser step"),
        ("matrix-lr", float, "Muon LR of the hidden matrices"),
        ("embed-lr", float, "AdamW LR of the embedding"),
        ("head-lr", float, "AdamW LR of the output head"),
        ("scalar-lr", float, "AdamW LR of the norm weights"),
        ("weight-decay", float, "Muon's decoupled weight decay"),
        ("cooldown-frac", float, "final fraction of steps with linear LR decay to 0"),
        ("clip", float, "gradient norm clip"),
        ("seed", int, "initialisation and data order"),
    ):
        opt.add_argument(f"--{flag}", type=kind, default=S,
                         help=f"{what} (default: {_preset_default(flag.replace('-', '_'))})")
    opt.add_argument("--warmup-steps", type=int, default=S, help="default: min(200, steps / 10)")
    opt.add_argument("--muon", choices=["tokshard", "torch"], default=S,
                     help=f"Muon implementation (default: {DEFAULTS['muon']})")
    opt.add_argument("--compile", action=argparse.BooleanOptionalAction, default=S,
                     help="torch.compile the model (default: on CUDA only)")
    ev = p.add_argument_group("evaluation and logging")
    ev.add_argument("--eval-every", type=int, default=S, help="steps between validation runs (default: "
                    f"{_preset_default('eval_every')})")
    ev.add_argument("--eval-tokens", type=int, default=S, help="validation tokens, the first N of the val split "
                    f"(default: {DEFAULTS['eval_tokens']})")
    ev.add_argument("--ckpt-every", type=int, default=S, help="steps between checkpoints (default: --eval-every)")
    ev.add_argument("--log-every", type=int, default=S, help="steps between console lines (default: "
                    f"{DEFAULTS['log_every']})")
    ev.add_argument("--name", default=S, help="run name stored in checkpoints (default: RUNDIR's name)")
    ev.add_argument("--json", action="store_true", help="print a JSON summary at the end")

    p = sub.add_parser("sample", help="generate text from a trained checkpoint")
    p.set_defaults(func=cmd_sample)
    p.add_argument("--checkpoint", required=True, help="RUNDIR/model.pt (or checkpoint.pt)")
    p.add_argument("--prompt", default="", help="text to continue (default: %(default)r, a new document)")
    p.add_argument("--max-tokens", type=int, default=SAMPLE_DEFAULTS["max_new_tokens"], help="tokens to generate")
    p.add_argument("--temperature", type=float, default=SAMPLE_DEFAULTS["temperature"], help="0 = greedy")
    p.add_argument("--top-k", type=int, default=SAMPLE_DEFAULTS["top_k"], help="0 = no top-k cut")
    p.add_argument("--seed", type=int, default=SAMPLE_DEFAULTS["seed"], help="sampling seed")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: beside the checkpoint)")
    p.add_argument("--device", default=SAMPLE_DEFAULTS["device"], help="cpu or cuda")
    p.add_argument("--json", action="store_true")


def cmd_train(args: argparse.Namespace) -> int:
    from tokshard.trainer.train import TrainConfig, train

    names = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    summary = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return 0 if summary["finished"] else 1
    if args.json:
        print(json.dumps(summary))
    else:
        bpb = f"{summary['val_bpb']:.4f}" if summary["val_bpb"] is not None else "n/a"
        print(f"{'finished' if summary['finished'] else 'stopped'} at step {summary['step']}/{summary['steps']}: "
              f"val bpb {bpb} -> {summary['model']}")
    return 0 if summary["finished"] else 1


def cmd_sample(args: argparse.Namespace) -> int:
    from tokshard.trainer.sample import sample

    out = sample(args.checkpoint, args.prompt, max_new_tokens=args.max_tokens, temperature=args.temperature,
                 top_k=args.top_k or None, seed=args.seed, tokenizer_dir=args.tokenizer, device=args.device)
    print(json.dumps(out, ensure_ascii=False) if args.json else args.prompt + out["completion"])
    return 0
