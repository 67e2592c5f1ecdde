"""Benchmark: `tokshard encode` vs. its raw engine and peer pipelines, per core, same text, one run.

On the same parquet files (`--copies` copies of the source with unique ids) and the same tokenizer it measures:
  raw engine      the engine tokshard picks for this pattern (pipeline/engines.py), fresh (a new engine per
                  repetition: its caches start empty), `encode_flat` per row group of texts already in memory,
                  one thread: the ceiling
  raw tiktoken    `encode_ordinary` per document (the nanoGPT-style peers' engine)
  tokshard        `tokshard.pipeline.jobs.encode` on Ray with --workers N and with 1 worker: parquet read, encode,
                  split, Arrow write, fsync, manifest (Ray workers warm: the steady state of a long job; one cold
                  run first)
  nanoGPT-style   bench/nanogpt_style.py: multiprocessing Pool(N) + tiktoken encode_ordinary + numpy uint16 +
                  .bin write, with the same vocabulary (a fresh process, so its workers inherit nothing of ours)
  datatrove       bench/peers.py: datatrove's ParquetReader + DocumentTokenizer, N tasks (if installed)
  datasets.map    bench/peers.py: HF datasets `map(batched=True, num_proc=N)` with the HF fast tokenizer
Each is measured twice over: tokens per wall second per core (wall x cores used), and tokens per CPU second
(utime + stime of every process involved: for tokshard the driver, the Ray workers and Ray's own daemons; for
nanoGPT-style the parent and its workers). On a shared machine the CPU-time figure is the stable one; the
wall-clock figures move with whatever else runs. "encode tasks only" / "workers only" count the CPU of the
processes doing the encoding: the steady state a long job converges to, once fixed costs (each worker loading
the tokenizer, Ray's daemons) are amortised. Peak RSS per worker is the kernel's high-water mark (VmHWM), reset
at the start of each phase (bench/procmem.py). Phases are interleaved and repeated (--repeat); ratios are taken
within each repetition and reported as median [min .. max].

    python bench/encode_throughput.py --tokenizer /tmp/tok32k [--source "../shared/corpus/train-*.parquet"]
        [--workers 2] [--repeat 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import tiktoken
from procmem import TreeWatch, mib

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["RAYON_NUM_THREADS"] = "1"  # the raw engine's pool in this process: one thread, like an encode task

from tokshard.pipeline import jobs, sources
from tokshard.pipeline.tokenizer import Tokenizer

BENCH = Path(__file__).resolve().parent
DEFAULT_SOURCE = BENCH.parents[1] / "shared" / "corpus"


def raw_rate(encode, texts: list[str]) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(len(encode(t)) for t in texts)
    return {"tokens": n, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def raw_engine_rate(tok_dir: str, batches: list[list[str]]) -> dict[str, float]:
    """A fresh engine (its caches empty) over row-group batches, one thread: tokshard's ceiling."""
    engine = Tokenizer.load(tok_dir)._engine
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(len(engine.encode_flat(batch)[0]) for batch in batches)
    return {"tokens": n, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "engine": engine.name}


def _raw_in_task(path: str, tok_dir: str) -> tuple[int, float]:
    """The raw engine inside a Ray task, texts preloaded: the ceiling under the same parallelism/contention."""
    engine = Tokenizer.load(tok_dir)._engine
    pf = pq.ParquetFile(path)
    batches = [pf.read_row_group(i, columns=["text"]).column("text").to_pylist() for i in range(pf.num_row_groups)]
    c0 = time.process_time()
    n = sum(len(engine.encode_flat(b)[0]) for b in batches)
    return n, time.process_time() - c0


def make_copies(source: str, copies: int, dest: Path) -> str:
    """`copies` copies of every source file with ids made unique per copy (same row groups): a larger corpus of
    real text, so fixed costs weigh what they weigh on a real job."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sources.resolve_files(source):
        pf = pq.ParquetFile(path)
        rg_rows = pf.metadata.row_group(0).num_rows
        table = pf.read()
        for k in range(copies):
            ids = pa.array([f"{i}#copy{k}" for i in table.column("id").to_pylist()], pa.string())
            pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", ids),
                           dest / f"copy{k}-{Path(path).name}", row_group_size=rg_rows)
    return str(dest / "*.parquet")


def tokshard_run(source: str, tok_dir: str, out: Path, workers: int) -> dict[str, Any]:
    """One `jobs.encode` with the whole process tree watched: wall, CPU of every process, worker peak RSS."""
    watch = TreeWatch(os.getpid()).start()
    t0, c0 = time.perf_counter(), time.process_time()
    result = jobs.encode(source, tok_dir, out, workers=workers, show_progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    watch.stop()
    driver_cpu = cpu - watch.own_cpu()
    shutil.rmtree(out, ignore_errors=True)
    encoders = watch.workers("encode_slice")
    encode_cpu = sum(s.cpu for s in encoders)
    other_workers_cpu = sum(s.cpu for s in watch.workers()) - encode_cpu  # ~0 since progress needs no actor
    return {
        "workers": workers, "tokens": result.manifest.totals()["all"]["tokens"], "wall_s": wall,
        "cpu_s": driver_cpu + watch.cpu_total(), "cpu_driver_s": driver_cpu, "cpu_encode_workers_s": encode_cpu,
        "cpu_other_ray_workers_s": other_workers_cpu,
        "cpu_ray_daemons_s": watch.cpu_total() - encode_cpu - other_workers_cpu,
        "encode_workers": len(encoders), "worker_peak_rss": sorted((s.peak_rss for s in encoders), reverse=True),
        "peak_reset_ok": watch.reset_ok, "complete": result.complete,
    }


def nanogpt_run(source: str, tok_dir: str, out: Path, procs: int) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "nanogpt_style.py"), "--source", source, "--tokenizer", tok_dir,
           "--out-dir", str(out), "--procs", str(procs)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    r = json.loads(done.stdout)
    r["cpu_s"] = r["cpu_parent_s"] + r["cpu_workers_s"]
    return r


def peer_run(peer: str, source: str, tok_dir: str, out: Path, procs: int) -> dict[str, Any] | None:
    """bench/peers.py in a fresh process: its wall clock and the CPU of it and its children."""
    cmd = [sys.executable, str(BENCH / "peers.py"), peer, "--source", source, "--tokenizer", tok_dir,
           "--out-dir", str(out), "--procs", str(procs)]
    before = os.times()
    done = subprocess.run(cmd, capture_output=True, text=True)
    after = os.times()
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        print(f"{peer}: failed, left out ({done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["cpu_s"] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return r


def _spread(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def _rates(r: dict[str, Any], cores: int) -> tuple[float, float]:
    """(tokens/s per core from wall clock, tokens per CPU second)."""
    return r["tokens"] / r["wall_s"] / cores, r["tokens"] / r["cpu_s"]


def summarize(reps: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    for rep in reps:
        rip_wall, rip_cpu = _rates(rep["raw_engine"], 1)
        tik_wall, tik_cpu = _rates(rep["raw_tiktoken"], 1)
        tsn_wall, tsn_cpu = _rates(rep["tokshard_n"], workers)
        ts1_wall, ts1_cpu = _rates(rep["tokshard_1"], 1)
        ngp_wall, ngp_cpu = _rates(rep["nanogpt"], rep["nanogpt"]["procs"])
        tsn_task = rep["tokshard_n"]["tokens"] / rep["tokshard_n"]["cpu_encode_workers_s"]
        ngp_task = rep["nanogpt"]["tokens"] / rep["nanogpt"]["cpu_workers_s"]
        for name, value in [("raw_engine_per_core_cpu", rip_cpu), ("raw_engine_per_core_wall", rip_wall),
                            ("raw_tiktoken_per_core_cpu", tik_cpu), ("raw_tiktoken_per_core_wall", tik_wall),
                            (f"tokshard_{workers}w_per_core_cpu", tsn_cpu),
                            (f"tokshard_{workers}w_per_core_wall", tsn_wall),
                            (f"tokshard_{workers}w_per_core_cpu_encode_tasks_only", tsn_task),
                            ("tokshard_1w_per_core_cpu", ts1_cpu), ("tokshard_1w_per_core_wall", ts1_wall),
                            ("nanogpt_per_core_cpu_workers_only", ngp_task),
                            ("nanogpt_per_core_cpu", ngp_cpu), ("nanogpt_per_core_wall", ngp_wall)]:
            add(name, value / 1e6)  # millions of tokens
        add("ratio_tokshard_vs_raw_cpu", tsn_cpu / rip_cpu)
        add("ratio_tokshard_vs_raw_wall", tsn_wall / rip_wall)
        add("ratio_tokshard_vs_raw_cpu_encode_tasks_only", tsn_task / rip_cpu)
        add("ratio_tokshard_vs_nanogpt_cpu", tsn_cpu / ngp_cpu)
        add("ratio_tokshard_vs_nanogpt_cpu_workers_only", tsn_task / ngp_task)
        add("ratio_tokshard_vs_nanogpt_wall", tsn_wall / ngp_wall)
        add("ratio_tokshard_vs_nanogpt_wall_clock_whole_run", rep["nanogpt"]["wall_s"] / rep["tokshard_n"]["wall_s"])
        for peer in ("datatrove", "datasets"):
            if rep.get(peer):
                p_wall, p_cpu = _rates(rep[peer], rep[peer]["procs"])
                add(f"{peer}_per_core_cpu", p_cpu / 1e6)
                add(f"{peer}_per_core_wall", p_wall / 1e6)
                add(f"ratio_tokshard_vs_{peer}_cpu", tsn_cpu / p_cpu)
                add(f"ratio_tokshard_vs_{peer}_wall_clock_whole_run", rep[peer]["wall_s"] / rep["tokshard_n"]["wall_s"])
        add(f"scaling_{workers}w_vs_1w_wall", rep["tokshard_1"]["wall_s"] / rep["tokshard_n"]["wall_s"])
        add(f"scaling_{workers}w_vs_1w_cpu_efficiency", workers * tsn_cpu / ts1_cpu)
        for key in ("tokshard_n", "tokshard_1", "nanogpt"):
            add(f"cores_obtained_{key}", rep[key]["cpu_s"] / rep[key]["wall_s"])
        add("tokshard_worker_peak_rss_mib", mib(max(rep["tokshard_n"]["worker_peak_rss"])))
        add("tokshard_1w_worker_peak_rss_mib", mib(max(rep["tokshard_1"]["worker_peak_rss"])))
        add("nanogpt_worker_peak_rss_mib", mib(max(rep["nanogpt"]["worker_peak_rss"])))
        add("load_avg_1min", rep["load_avg_1min"])
    return {k: _spread(v) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(DEFAULT_SOURCE / "train-*.parquet"))
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir (default: train one on --train-source)")
    ap.add_argument("--train-source", default=str(DEFAULT_SOURCE / "val-00000.parquet"))
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--copies", type=int, default=4, help="copies of --source with unique ids (default 4)")
    ap.add_argument("--peers", default="datatrove,datasets", help="peer pipelines to run besides nanoGPT-style")
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

        source = make_copies(args.source, args.copies, work / "src") if args.copies > 1 else args.source
        files = sources.resolve_files(source)
        batches = []
        for f in files:
            pf = pq.ParquetFile(f)
            batches += [pf.read_row_group(i, columns=["text"]).column("text").to_pylist()
                        for i in range(pf.num_row_groups)]
        texts = [t for b in batches for t in b]
        text_mb = sum(len(t.encode()) for t in texts) / 1e6
        ranks, specials = tok.ranks, tok.special_tokens
        tik = tiktoken.Encoding(name="bench", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=specials)
        peers = [p for p in args.peers.split(",") if p]

        cold = tokshard_run(source, tok_dir, work / "cold", args.workers)  # Ray workers start here
        raw_task = ray.remote(num_cpus=1)(_raw_in_task)
        parallel = ray.get([raw_task.remote(f, tok_dir) for f in files])
        raw_parallel_cpu = sum(n for n, _ in parallel) / sum(s for _, s in parallel)

        reps = []
        for i in range(args.repeat):
            rep = {"raw_engine": raw_engine_rate(tok_dir, batches),
                   "raw_tiktoken": raw_rate(tik.encode_ordinary, texts),
                   "tokshard_n": tokshard_run(source, tok_dir, work / f"n{i}", args.workers),
                   "tokshard_1": tokshard_run(source, tok_dir, work / f"one{i}", 1),
                   "nanogpt": nanogpt_run(source, tok_dir, work / f"ngp{i}", args.workers),
                   **{p: peer_run(p, source, tok_dir, work / f"{p}{i}", args.workers) for p in peers},
                   "load_avg_1min": float(Path("/proc/loadavg").read_text().split()[0])}
            # Same documents, same vocabulary, <|bos|> per document: all must agree on the token count.
            counts = {rep[k]["tokens"] for k in ("tokshard_n", "tokshard_1", "nanogpt", *peers) if rep.get(k)}
            rep["same_token_count"] = counts == {rep["raw_engine"]["tokens"] + len(texts)}
            reps.append(rep)
            print(f"repeat {i + 1}/{args.repeat} done", file=sys.stderr)

        report = {
            "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "source": args.source, "copies": args.copies, "files": len(files), "documents": len(texts),
            "text_mb": round(text_mb, 1), "vocab_size": tok.vocab_size, "pattern": tok.pattern_name,
            "engine": tok.engine,
            "tokens": reps[0]["tokshard_n"]["tokens"], "workers": args.workers, "repeat": args.repeat,
            "all_token_counts_agree": all(r["same_token_count"] for r in reps),
            "summary_millions_and_ratios": summarize(reps, args.workers),
            "tokshard_cold_wall_s": round(cold["wall_s"], 2),
            "raw_engine_in_parallel_tasks_per_core_cpu": round(raw_parallel_cpu),
            "ray_start_s": round(ray_start, 2), "repetitions": reps,
        }
        print(json.dumps(report["summary_millions_and_ratios"], indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
