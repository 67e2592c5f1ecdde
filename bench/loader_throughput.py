"""Is `tokshard.data` ever the bottleneck, and how many tokens does packing waste?

1. Loader throughput: rows per CPU second of `PackedRows` (one process, no workers, torch on one thread) at the
   gpt2-small shape (rows of 1024 + 1 tokens, batches of 32), beside the rows/s one GPU consumes at that preset.
   The GPU step is estimated, not measured (no GPU here): training FLOPs per token from the model (6 x matmul
   parameters + attention) x tokens per step / (H100 bf16 peak x MFU), at the stated MFU.
2. Packing waste on the same run at several sequence lengths: best fit (long documents cropped, or split), nanochat's
   sequential crop and naive concatenation, all over the documents the plan drew (`plan.json`'s definition).

    python bench/loader_throughput.py RUN [--repeats 3] [--mfu 0.4] [--json]

RUN is a finished `tokshard encode` output (e.g. ../shared/corpus encoded with a small tokenizer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tokshard.data import PackedRows, open_plan
from tokshard.pipeline import mix
from tokshard.pipeline.manifest import Manifest
from tokshard.trainer.defaults import H100_BF16_PEAK_FLOPS, PRESET_DEFAULTS, PRESETS
from tokshard.trainer.model import GPTConfig, count_params


def loader_rows_per_s(run: str, seq_len: int, batch: int, batches: int, repeats: int, split: bool) -> list[float]:
    plan = open_plan(run, seq_len=seq_len, tokens=batch * batches * seq_len, split_long=split)
    out = []
    for r in range(repeats):
        ds = PackedRows(plan, batch_size=batch, verify=r == 0)
        t0 = time.process_time()  # CPU seconds of this process: rows per core, whatever else runs on the machine
        n = sum(b["input_ids"].shape[0] for b in ds)
        out.append(n / (time.process_time() - t0))
        ds.close()
    return out


def gpu_rows_per_s(vocab_size: int, mfu: float) -> dict[str, float]:
    cfg = GPTConfig.preset("gpt2-small", vocab_size)
    flops_per_token = count_params(cfg)["flops_per_token"]
    preset = PRESET_DEFAULTS["gpt2-small"]
    rows_per_step = preset["batch_size"] * preset["grad_accum"]
    tokens_per_step = rows_per_step * PRESETS["gpt2-small"]["seq_len"]
    step_s = flops_per_token * tokens_per_step / (H100_BF16_PEAK_FLOPS * mfu)
    return {"flops_per_token": flops_per_token, "rows_per_step": rows_per_step, "step_s": step_s,
            "rows_per_s": rows_per_step / step_s}


def waste(run: str, seq_len: int) -> dict[str, float]:
    crop, _ = mix.build_plan([mix.SourceSpec("run", run, 1)], None, seq_len, seed=0)
    split, _ = mix.build_plan([mix.SourceSpec("run", run, 1)], None, seq_len, seed=0, split_long=True)
    w = crop["waste"]
    return {"seq_len": seq_len, "best_fit_crop": w["best_fit"]["waste"],
            "best_fit_split": split["waste"]["best_fit"]["waste"],
            "split_rows_at_bos": split["waste"]["best_fit"]["rows_starting_at_bos"],
            "nanochat_crop": w["nanochat_crop"]["waste"], "naive": w["naive_concatenation"]["waste"],
            "naive_rows_at_bos": w["naive_concatenation"]["rows_starting_at_bos"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--mfu", type=float, default=0.4)
    ap.add_argument("--seq-lens", default="128,512,1024,2048")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seq = PRESETS["gpt2-small"]["seq_len"]
    loader = loader_rows_per_s(args.run, seq, 32, args.batches, args.repeats, split=False)
    loader_split = loader_rows_per_s(args.run, seq, 32, args.batches, args.repeats, split=True)
    gpu = gpu_rows_per_s(Manifest.read(args.run).tokenizer["vocab_size"], args.mfu)
    wastes = [waste(args.run, int(s)) for s in args.seq_lens.split(",")]
    slowest = min(statistics.median(loader), statistics.median(loader_split))
    result = {"loader_rows_per_s_per_core": loader, "median": statistics.median(loader),
              "split_rows_per_s_per_core": loader_split, "split_median": statistics.median(loader_split),
              "gpu_estimate": gpu, "mfu": args.mfu, "headroom": slowest / gpu["rows_per_s"], "waste": wastes}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"loader: {result['median']:,.0f} rows per CPU second (runs: {', '.join(f'{x:,.0f}' for x in loader)})")
    print(f"loader, long documents split: {result['split_median']:,.0f} rows per CPU second (runs: "
          f"{', '.join(f'{x:,.0f}' for x in loader_split)})")
    print(f"gpt2-small on one H100 at {100 * args.mfu:.0f}% MFU: {gpu['step_s']:.2f} s/step of {gpu['rows_per_step']} "
          f"rows = {gpu['rows_per_s']:,.0f} rows/s -> one loader core keeps {result['headroom']:,.0f} GPUs fed")
    print("seq_len | best fit (crop) | best fit (split; rows at <|bos|>) | nanochat crop | naive (rows at <|bos|>)")
    for w in wastes:
        print(f"{w['seq_len']} | {100 * w['best_fit_crop']:.2f}% | {100 * w['best_fit_split']:.2f}% "
              f"({100 * w['split_rows_at_bos']:.0f}%) | {100 * w['nanochat_crop']:.2f}% | {100 * w['naive']:.2f}% "
              f"({100 * w['naive_rows_at_bos']:.1f}%)")


if __name__ == "__main__":
    main()
