"""Benchmark: training throughput, MFU, data-loading share and val BPB of a short run (the trainer's GPU numbers).

Runs the real training loop (trainer.train.train) into a temporary run directory and summarises its log.jsonl:

- tokens/s: median over the steps after the first `--skip` (compilation and warm-up excluded);
- MFU = flops_per_token x tokens/s / peak, flops_per_token = 6 x (parameters in matmuls: all but the embedding,
  head included) + 12 x n_layer x n_embd x seq_len (attention scores and values, PaLM appendix B, causal mask not
  discounted); peak = 989 TFLOP/s, the H100 SXM dense bf16 peak (--peak-flops to change); CUDA only;
- data share: time the step spent waiting for the loader plus issuing the host-to-device copy, over the step time;
- val BPB at step 0 and at the end (first --eval-tokens tokens of OUT/val).

On a GPU machine (gpt2-small at seq 1024):

    tokshard encode --source "../shared/corpus/train-0000[0-3].parquet" --tokenizer TOK --out shards
    python bench/train_gpu.py --data shards --preset gpt2-small --device cuda --steps 300

(the encode output of four corpus files is ~35 MB, small enough to carry to a lent GPU machine). On the CPU, to
prove the script works: python bench/train_gpu.py --data OUT --preset tiny --device cpu --steps 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tokshard.trainer.model import GPTConfig, count_params
from tokshard.trainer.train import H100_BF16_PEAK_FLOPS, TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="OUTDIR of tokshard encode")
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--skip", type=int, default=10, help="first steps left out of the throughput median")
    ap.add_argument("--batch-size", type=int, default=None, help="per micro-step (preset default)")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--n-layer", type=int, default=None)
    ap.add_argument("--n-embd", type=int, default=None)
    ap.add_argument("--n-head", type=int, default=None)
    ap.add_argument("--muon", default="tokshard", choices=["tokshard", "torch"])
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--eval-tokens", type=int, default=1 << 20)
    ap.add_argument("--peak-flops", type=float, default=H100_BF16_PEAK_FLOPS)
    ap.add_argument("--out", default=None, help="keep the run here (default: a temporary directory)")
    ap.add_argument("--loader-only", action="store_true", help="measure how fast the data loader alone produces "
                    "batches (no model), for --batch-size x --seq-len windows")
    args = ap.parse_args()
    if args.loader_only:
        loader_rate(args)
        return
    if args.steps <= args.skip:
        sys.exit(f"--steps ({args.steps}) must exceed --skip ({args.skip})")

    with tempfile.TemporaryDirectory(prefix="tokshard-bench-") as tmp:
        run = Path(args.out or Path(tmp) / "run")
        cfg = TrainConfig(data=args.data, out=str(run), preset=args.preset, steps=args.steps, device=args.device,
                          batch_size=args.batch_size, grad_accum=args.grad_accum, seq_len=args.seq_len,
                          n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, muon=args.muon,
                          compile=args.compile, eval_every=args.steps, eval_tokens=args.eval_tokens,
                          log_every=max(1, args.steps // 10), peak_flops=args.peak_flops)
        t0 = time.time()
        summary = train(cfg)
        wall = time.time() - t0
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        conf = json.loads((run / "config.json").read_text())
    steps = [r for r in log if r["kind"] == "train"][args.skip :]
    vals = [r for r in log if r["kind"] == "val"]
    model_cfg = GPTConfig.from_dict(conf["model"])
    counts = count_params(model_cfg)
    tok_s = statistics.median(r["tokens_per_s"] for r in steps)
    step_ms = statistics.median(r["step_ms"] for r in steps)
    data_share = sum(r["data_ms"] for r in steps) / sum(r["step_ms"] for r in steps)
    cuda = "mfu" in steps[0]
    result = {
        "device": args.device, "preset": args.preset, "n_layer": model_cfg.n_layer, "n_embd": model_cfg.n_embd,
        "seq_len": model_cfg.seq_len, "vocab_size": model_cfg.vocab_size,
        "tokens_per_step": conf["train"]["batch_size"] * model_cfg.seq_len * conf["train"]["grad_accum"],
        "params": counts["total"], "non_embedding_params": counts["non_embedding"],
        "flops_per_token": counts["flops_per_token"], "steps": args.steps, "steps_measured": len(steps),
        "tokens_per_s": round(tok_s), "step_ms": round(step_ms, 2), "data_share": round(data_share, 5),
        "mfu": round(counts["flops_per_token"] * tok_s / args.peak_flops, 4) if cuda else None,
        "val_bpb_step0": vals[0]["val_bpb"], "val_bpb_end": vals[-1]["val_bpb"], "val_tokens": vals[-1]["val_tokens"],
        "muon": args.muon, "compiled": args.compile if args.compile is not None else args.device.startswith("cuda"),
        "wall_s": round(wall, 1),
        "finished": summary["finished"],
    }
    print(json.dumps(result, indent=2))


def loader_rate(args: argparse.Namespace) -> None:
    """Batches per second the background loader delivers when nothing else runs (its ceiling)."""
    from tokshard.trainer.data import BatchLoader, WindowStream, open_dataset

    ds = open_dataset(args.data)
    seq_len = args.seq_len or GPTConfig.preset(args.preset, ds.vocab_size).seq_len
    batch = args.batch_size or 32
    loader = BatchLoader(WindowStream(ds.train, seq_len, seed=0), batch, prefetch=4)
    for _ in range(5):
        loader.next()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 5:
        loader.next()
        n += 1
    dt = time.perf_counter() - t0
    loader.close()
    ds.close()
    print(json.dumps({"batch_size": batch, "seq_len": seq_len, "batches_per_s": round(n / dt, 1),
                      "tokens_per_s": round(n * batch * seq_len / dt), "ms_per_batch": round(1000 * dt / n, 3)}))


if __name__ == "__main__":
    main()
