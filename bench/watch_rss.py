"""Run a command and report the peak RSS and CPU time of every process it starts (Ray workers included).

Used to show that a `tokshard encode` worker's memory does not grow with the input file:

    python bench/make_big_parquet.py --out /tmp/tokshard-big.parquet --target-mb 1024
    python bench/watch_rss.py --json /tmp/big-rss.json -- \\
        tokshard encode --source /tmp/tokshard-big.parquet --tokenizer /tmp/tok32k --out /tmp/big-out --json

Peaks are the kernel's high-water marks (VmHWM), read every 0.1 s while the command runs (bench/procmem.py).
The command's own stdout is passed through; the report goes to stderr (and --json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from procmem import TreeWatch, mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="also write the report to this file")
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")

    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    watch = TreeWatch(proc.pid, interval=args.interval, reset=False, include_root=True).start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    stats = watch.stop()
    encoders = watch.workers("encode_slice")
    others = [s for s in stats.values() if s not in encoders]
    report = {
        "command": command, "returncode": rc, "wall_s": round(wall, 1),
        "encode_workers": [{"pid": s.pid, "peak_rss_mib": mib(s.peak_rss), "cpu_s": round(s.cpu, 1)}
                           for s in sorted(encoders, key=lambda s: -s.peak_rss)],
        "encode_worker_peak_rss_mib": mib(max((s.peak_rss for s in encoders), default=0)),
        "driver_peak_rss_mib": mib(stats[proc.pid].peak_rss) if proc.pid in stats else None,
        "other_processes": [{"pid": s.pid, "kind": s.kind, "peak_rss_mib": mib(s.peak_rss), "cpu_s": round(s.cpu, 1)}
                            for s in sorted(others, key=lambda s: -s.peak_rss)],
        "cpu_s_total": round(watch.cpu_total(), 1),
    }
    print(json.dumps(report, indent=1), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(rc)


if __name__ == "__main__":
    main()
