"""Benchmark: where the fixed time of a small `tokshard encode` goes, and the whole command against nanoGPT-style.

Measures, on one small file (default: ../shared/corpus/val-00000.parquet, 6.8 MB), each part of the fixed cost
of `tokshard encode --source FILE` in its own fresh process, the way a user meets it:
  imports         `import tokshard.pipeline.jobs` (and `import ray`, which only the Ray path pays)
  tokenizer load  `Tokenizer.load` (parse tokenizer.json, sha256) and building its engine
  planning        resolve the source and plan its slices (parquet footers)
  ray start       `ray.init` of a private local instance (--workers CPUs)
  worker start    the first task's round trip after `ray.init` (a Ray worker process starts and imports us)
  manifest        `Manifest.create` + write
  ray shutdown    `ray.shutdown`
then the whole command end to end with `--in-process` and `--no-in-process` (Ray), each `--repeat` times, its
fixed overhead = wall - slice time (the slices' own encode seconds from the manifest, divided by the workers
that ran them in parallel), and the nanoGPT-style pipeline (bench/nanogpt_style.py) on the same file right
after each, for the wall-clock ratio. Medians of the repeats; the machine may be shared, so say so with them.

    python bench/startup.py --tokenizer TOKDIR [--source FILE] [--workers 2] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEFAULT_SOURCE = BENCH.parents[1] / "shared" / "corpus" / "val-00000.parquet"

# Each part runs in a fresh interpreter so nothing is warm; the snippet prints its own seconds.
_PARTS = {
    "imports": "import time; t=time.perf_counter(); import tokshard.pipeline.jobs; print(time.perf_counter()-t)",
    "import ray": "import time; t=time.perf_counter(); import ray; print(time.perf_counter()-t)",
    "tokenizer load + engine": (
        "import time; from tokshard.pipeline.tokenizer import Tokenizer; t=time.perf_counter(); "
        "tok=Tokenizer.load({tok!r}); tok.encode_ordinary('x'); print(time.perf_counter()-t)"),
    "planning": (
        "import time; from tokshard.pipeline import sources; t=time.perf_counter(); "
        "sources.plan_slices(sources.resolve_files({src!r})); print(time.perf_counter()-t)"),
    "ray start + worker start + shutdown": (
        "import os, time, json, ray; os.environ.setdefault('RAY_AUTH_MODE', 'disabled'); t=time.perf_counter(); "
        "ray.init(num_cpus={workers}, include_dashboard=False, configure_logging=False); a=time.perf_counter(); "
        "ray.get(ray.remote(lambda: 1).remote()); b=time.perf_counter(); ray.shutdown(); c=time.perf_counter(); "
        "print(json.dumps([a-t, b-a, c-b]))"),
    "manifest": (
        "import time, tempfile; from tokshard.pipeline.manifest import Manifest; "
        "from tokshard.pipeline.tokenizer import Tokenizer; tok=Tokenizer.load({tok!r}); tok.encode('x'); "
        "t=time.perf_counter(); Manifest.create(tok, 's', ['f'], 0.01, [], []).write(tempfile.mkdtemp()); "
        "print(time.perf_counter()-t)"),
}


def _python(code: str) -> str:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          env=env).stdout.strip().splitlines()[-1]


def parts(tok: str, src: str, workers: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, code in _PARTS.items():
        value = json.loads(_python(code.format(tok=tok, src=src, workers=workers)))
        if isinstance(value, list):
            out.update({"ray start": value[0], "worker start (first task)": value[1], "ray shutdown": value[2]})
        else:
            out[name] = value
    return out


def encode_run(tok: str, src: str, workers: int, in_process: bool, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "tokshard", "encode", "--source", src, "--tokenizer", tok, "--out", str(out),
           "--workers", str(workers), "--json", "--no-progress", "--in-process" if in_process else "--no-in-process"]
    t0, c0 = time.perf_counter(), _children_cpu()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    summary = json.loads(done.stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    by_slice = {r["slice"]: r["seconds"] for r in manifest["shards"]}  # a slice's shards share its clock
    lanes = 1 if in_process else max(1, min(workers, len(by_slice)))
    slice_s = sum(by_slice.values()) / lanes
    return {"wall_s": wall, "cpu_s": cpu, "slice_s": slice_s, "fixed_s": wall - slice_s, "tokens": summary["tokens"],
            "engine": summary["engine"], "executor": summary["executor"]}


def nanogpt_run(tok: str, src: str, workers: int, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of it and its pool)."""
    cmd = [sys.executable, str(BENCH / "nanogpt_style.py"), "--source", src, "--tokenizer", tok,
           "--out-dir", str(out), "--procs", str(workers)]
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, _children_cpu() - c0


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children (a Ray run's daemons outlive it: not all counted)."""
    t = os.times()
    return t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--source", default=str(DEFAULT_SOURCE))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tokshard-startup-"))
    runs: dict[str, list[dict[str, float]]] = {"in-process": [], "ray": []}
    nanogpt: list[tuple[float, float]] = []
    fixed_parts: list[dict[str, float]] = []
    for i in range(args.repeat):
        fixed_parts.append(parts(args.tokenizer, args.source, args.workers))
        for mode in ("in-process", "ray"):
            runs[mode].append(encode_run(args.tokenizer, args.source, args.workers, mode == "in-process",
                                         work / f"{mode}-{i}"))
        nanogpt.append(nanogpt_run(args.tokenizer, args.source, args.workers, work / f"ngp-{i}"))
        print(f"repeat {i + 1}/{args.repeat} done", file=sys.stderr)

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    report = {
        "source": args.source, "workers": args.workers, "repeat": args.repeat,
        "load_avg_1min": float(Path("/proc/loadavg").read_text().split()[0]),
        "parts_s": {k: med([p[k] for p in fixed_parts]) for k in fixed_parts[0]},
        "nanogpt_wall_s": med([n[0] for n in nanogpt]), "nanogpt_cpu_s": med([n[1] for n in nanogpt]),
        **{mode: {k: med([r[k] for r in rs]) for k in ("wall_s", "cpu_s", "slice_s", "fixed_s")} | {
            "engine": rs[0]["engine"], "executor": rs[0]["executor"],
            "speedup_vs_nanogpt_wall": med([n[0] / r["wall_s"] for n, r in zip(nanogpt, rs, strict=True)]),
            "speedup_vs_nanogpt_cpu": med([n[1] / r["cpu_s"] for n, r in zip(nanogpt, rs, strict=True)])}
           for mode, rs in runs.items()},
        "runs": runs, "nanogpt_runs": nanogpt, "parts_runs": fixed_parts,
    }
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("runs")}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
