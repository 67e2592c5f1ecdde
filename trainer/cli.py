"""`tokshard train` and `tokshard sample`, registered into the core CLI through the `tokshard.commands` entry
point. torch is imported inside the commands only, so `tokshard --help` stays fast and works without the
trainer extra.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

S = argparse.SUPPRESS  # a flag not given stays absent: a resumed run then keeps the value it started with


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train a GPT on token shards, reporting validation bits-per-byte",
                       description="Train a GPT on the shards of `tokshard encode`. RUNDIR receives checkpoint.pt "
                       "(for --resume), model.pt (inference export), log.jsonl, loss.png, config.json and a copy of "
                       "the tokenizer. Under torchrun, one process per GPU (DDP).")
    p.set_defaults(func=cmd_train)
    p.add_argument("--data", default=S, help="OUTDIR of `tokshard encode` (train/, val/, manifest.json, tokenizer/)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--preset", default=S, help="model size: tiny (default) or gpt2-small")
    p.add_argument("--steps", type=int, default=S, help="optimiser steps (the LR schedule's length)")
    p.add_argument("--stop-at", type=int, default=S, help="stop after this step with a checkpoint, schedule unchanged")
    p.add_argument("--device", default=S, help="cpu, cuda or auto (default: cuda when available)")
    size = p.add_argument_group("model size (override the preset)")
    for flag in ("--n-layer", "--n-head", "--n-embd", "--seq-len"):
        size.add_argument(flag, type=int, default=S)
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=S, help="sequences per micro-step per GPU")
    opt.add_argument("--grad-accum", type=int, default=S, help="micro-steps per optimiser step")
    opt.add_argument("--matrix-lr", type=float, default=S, help="Muon LR of the hidden matrices (0.02)")
    opt.add_argument("--embed-lr", type=float, default=S, help="AdamW LR of the embedding (0.1)")
    opt.add_argument("--head-lr", type=float, default=S, help="AdamW LR of the output head (0.01)")
    opt.add_argument("--scalar-lr", type=float, default=S, help="AdamW LR of the norm weights (0.01)")
    opt.add_argument("--weight-decay", type=float, default=S, help="Muon's decoupled weight decay (0)")
    opt.add_argument("--warmup-steps", type=int, default=S, help="default: min(200, steps / 10)")
    opt.add_argument("--cooldown-frac", type=float, default=S, help="final fraction of steps with linear LR decay "
                     "to 0 (0.4)")
    opt.add_argument("--clip", type=float, default=S, help="gradient norm clip (1.0)")
    opt.add_argument("--seed", type=int, default=S, help="initialisation and data order (0)")
    opt.add_argument("--muon", choices=["tokshard", "torch"], default=S, help="Muon implementation (tokshard)")
    opt.add_argument("--compile", action=argparse.BooleanOptionalAction, default=S,
                     help="torch.compile the model (default: on CUDA only)")
    ev = p.add_argument_group("evaluation and logging")
    ev.add_argument("--eval-every", type=int, default=S, help="steps between validation runs")
    ev.add_argument("--eval-tokens", type=int, default=S, help="validation tokens (first N of the val split, 2^20)")
    ev.add_argument("--ckpt-every", type=int, default=S, help="steps between checkpoints (default: --eval-every)")
    ev.add_argument("--log-every", type=int, default=S, help="steps between console lines (10)")
    ev.add_argument("--name", default=S, help="run name stored in checkpoints (default: RUNDIR's name)")
    ev.add_argument("--json", action="store_true", help="print a JSON summary at the end")

    p = sub.add_parser("sample", help="generate text from a trained checkpoint")
    p.set_defaults(func=cmd_sample)
    p.add_argument("--checkpoint", required=True, help="RUNDIR/model.pt (or checkpoint.pt)")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = no top-k cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: beside the checkpoint)")
    p.add_argument("--device", default="cpu")
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
