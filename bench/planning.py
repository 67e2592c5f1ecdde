"""Benchmark: planning time vs number of files, serial (1 thread) vs parallel (sources.PLAN_THREADS), on the
local disk and on a filesystem that adds a fixed latency to every open (what a remote object store costs per
footer read).

Planning reads every parquet footer. Serially that is files x latency on a remote store; with a bounded pool it
should be files x latency / threads. The "slow" filesystem is the local disk with `--latency-ms` of sleep per
open (an fsspec filesystem registered as `slowfile://`), so the ratio measures tokshard, not a network.

    python bench/planning.py [--files 250,1000,2000] [--latency-ms 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import fsspec
import fsspec.implementations.local
import pyarrow as pa
import pyarrow.parquet as pq

from tokshard.pipeline import sources


class SlowFileSystem(fsspec.implementations.local.LocalFileSystem):
    """The local disk, `latency` seconds slower per open."""

    protocol = "slowfile"
    root_marker = "/"
    latency = 0.05

    def _open(self, path, *args, **kwargs):
        time.sleep(self.latency)
        return super()._open(path, *args, **kwargs)


def make_files(directory: Path, n: int) -> None:
    table = pa.table({"text": [f"document {i} " * 20 for i in range(40)], "id": [f"d{i}" for i in range(40)]})
    for i in range(n):
        path = directory / f"part-{i:05d}.parquet"
        if not path.exists():
            pq.write_table(table, path, row_group_size=10)


def timed_plan(files: list[str], threads: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    plan = sources.plan_slices(files, slice_bytes=1, threads=threads)
    return time.perf_counter() - t0, len(plan.slices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default="250,1000,2000")
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary directory)")
    args = ap.parse_args()
    SlowFileSystem.latency = args.latency_ms / 1000
    fsspec.register_implementation("slowfile", SlowFileSystem, clobber=True)
    root = Path(args.dir or tempfile.mkdtemp(prefix="tokshard-plan-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"threads: serial 1, parallel {sources.PLAN_THREADS}; latency {args.latency_ms:g} ms per open; "
          f"median of {args.repeat}")
    print(f"{'files':>6} {'fs':>6} {'serial s':>9} {'parallel s':>10} {'parallel/serial':>15}")
    for n in (int(x) for x in args.files.split(",")):
        d = root / f"n{n}"
        d.mkdir(exist_ok=True)
        make_files(d, n)
        local = sorted(str(p) for p in d.glob("*.parquet"))
        for label, files in (("local", local), ("slow", [f"slowfile://{p}" for p in local])):
            serial, parallel = [], []
            for _ in range(args.repeat):
                s, n_slices = timed_plan(files, 1)
                p, n_par = timed_plan(files, sources.PLAN_THREADS)
                assert n_slices == n_par == 4 * n
                serial.append(s)
                parallel.append(p)
            s, p = statistics.median(serial), statistics.median(parallel)
            print(f"{n:>6} {label:>6} {s:>9.2f} {p:>10.2f} {p / s:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
