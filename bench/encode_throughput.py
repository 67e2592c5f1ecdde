"""Benchmark: `tokshard encode` end to end vs. the raw encoding engine, per core, on the same text in one run.

Measures, on the same parquet files and the same tokenizer:
  raw riptoken   CoreBPE.encode_ordinary per document, one thread, texts already in memory (the ceiling)
  raw tiktoken   the same with tiktoken (the peer engine)
  tokshard       `pipeline.jobs.encode` with N workers: parquet read, encode, split, Arrow write, fsync, manifest
and reports tokens/s per core for each and tokshard's share of the raw engine. tokshard runs twice: cold (Ray
workers start and import on the first tasks) and warm (the same run again: the steady state of a long job).

    python bench/encode_throughput.py [--source ../shared/corpus] [--workers 2] [--vocab-size 32768]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import riptoken

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pipeline import jobs, sources
from pipeline.tokenizer import Tokenizer

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def raw_rate(encode, texts: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(len(encode(t)) for t in texts)
    return n / (time.perf_counter() - t0), n


def _raw_in_task(path: str, tok_dir: str) -> tuple[int, float]:
    """The raw engine inside a Ray task, texts preloaded: the ceiling under the same parallelism/contention."""
    tok = Tokenizer.load(tok_dir)
    engine = riptoken.CoreBPE(tok.ranks, {}, tok.pattern)
    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    t0 = time.perf_counter()
    n = sum(len(engine.encode_ordinary(t)) for t in texts)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(DEFAULT_SOURCE / "train-0000[0-3].parquet"))
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir (default: train one on --train-source)")
    ap.add_argument("--train-source", default=str(DEFAULT_SOURCE / "val-00000.parquet"))
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tokshard-bench-"))
    try:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, configure_logging=False,
                 runtime_env={"env_vars": {"RAYON_NUM_THREADS": "1"}})
        ray_start = time.perf_counter() - t0
        tok_dir = args.tokenizer
        if tok_dir is None:
            tok_dir = str(work / "tok")
            jobs.train_tokenizer(args.train_source, tok_dir, vocab_size=args.vocab_size)
        tok = Tokenizer.load(tok_dir)

        files = sources.resolve_files(args.source)
        texts = [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]
        text_mb = sum(len(t.encode()) for t in texts) / 1e6
        rip, n_tokens = raw_rate(riptoken.CoreBPE(tok.ranks, {}, tok.pattern).encode_ordinary, texts)
        tik, _ = raw_rate(tok._exact.encode_ordinary, texts)
        ours_single, _ = raw_rate(tok.encode_ordinary, texts)

        def timed_encode(out: Path) -> tuple[float, float, float]:
            t0 = time.perf_counter()
            result = jobs.encode(args.source, tok_dir, out, workers=args.workers, show_progress=False)
            wall = time.perf_counter() - t0
            busy = sum(r["seconds"] for r in result.manifest.shards if r["split"] == "train")
            return wall, result.manifest.totals()["all"]["tokens"] / wall / args.workers, busy

        raw_task = ray.remote(num_cpus=1)(_raw_in_task)
        parallel = ray.get([raw_task.remote(f, tok_dir) for f in files])
        raw_parallel = sum(n for n, _ in parallel) / sum(s for _, s in parallel)

        cold_wall, cold, _ = timed_encode(work / "cold")  # pays for starting and warming the Ray workers
        wall, ours, busy = timed_encode(work / "warm")  # steady state: workers already running
        report = {
            "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "source": args.source, "files": len(files), "documents": len(texts), "text_mb": round(text_mb, 1),
            "vocab_size": tok.vocab_size, "tokens": n_tokens, "workers": args.workers,
            "raw_riptoken_tok_s_per_core": round(rip), "raw_tiktoken_tok_s_per_core": round(tik),
            "tokenizer_encode_ordinary_tok_s": round(ours_single), "engine": tok.engine,
            "tokshard_cold_wall_s": round(cold_wall, 2), "tokshard_cold_tok_s_per_core": round(cold),
            "tokshard_warm_wall_s": round(wall, 2), "tokshard_warm_tok_s_per_core": round(ours),
            "tokshard_warm_share_of_raw_riptoken": round(ours / rip, 3),
            "raw_riptoken_in_parallel_tasks_tok_s_per_core": round(raw_parallel),
            "tokshard_warm_share_of_raw_in_parallel_tasks": round(ours / raw_parallel, 3),
            "task_busy_share_of_wall_cores": round(busy / (wall * args.workers), 3),
            "in_task_tok_s": round(n_tokens / busy), "ray_start_s": round(ray_start, 2),
        }
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
