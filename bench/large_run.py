"""Benchmark: what a fineweb-edu-sized run costs the encode driver -- 10,000 files, ~100,000 slices.

fineweb-edu's 10BT sample is ~15,000 files of ~2 GB text... planned at 64 MiB slices a 1.3T-token corpus is
~100,000 slices. The driver holds the plan, collects two shard records per slice and writes the manifest; a resumed
run must find out what is already done. This benchmark builds that shape small: `--files` parquet files of
`--row-groups` one-document row groups, planned at one row group per slice (~100,000 slices), then:

  1. plans it (footers read by sources' thread pool) and reports the time;
  2. commits every slice as a finished run would (encode_slice in a process pool: real shards, real slice
     records; set-up, not measured);
  3. runs `jobs.encode` over it in a fresh process -- nothing is left to do, so this is the resume of a finished
     run: plan, read 100,000 slice records and check each shard against its recorded size and mtime (no shard
     bytes are read), write the 200,000-line manifest -- and reports wall time and the driver's peak RSS
     (ru_maxrss of that process; Ray's own daemons are separate processes);
  4. runs it once more (run.json and manifest already there).

    python bench/large_run.py --dir /tmp/large-run [--files 10000] [--row-groups 10] [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokshard.pipeline import jobs, sources

DRIVER = """
import json, resource, sys, time
from tokshard.pipeline import jobs
t0 = time.perf_counter()
r = jobs.encode(sys.argv[1], sys.argv[2], sys.argv[3], slice_bytes=1, show_progress=False, workers=2)
print(json.dumps({"seconds": time.perf_counter() - t0, "complete": r.complete, "kept": r.slices_kept,
                  "encoded": r.slices_encoded, "shards": len(r.manifest.shards),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _make_file(args: tuple[Path, int, int]) -> None:
    path, index, row_groups = args
    if path.exists():
        return
    texts = [f"Document {index}-{j}: a short text about tokenizing corpora on object storage." for j in
             range(row_groups)]
    pq.write_table(pa.table({"text": texts, "id": [f"f{index}-d{j}" for j in range(row_groups)]}), path,
                   row_group_size=1)


def _commit(args: tuple[list[sources.Slice], str, str, str]) -> int:
    slices, tok_dir, sha, out = args
    for s in slices:
        for _ in jobs.encode_slice(s, tok_dir, sha, out, 0.0, "text", "id"):
            pass
    return len(slices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--row-groups", type=int, default=10)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    root = Path(args.dir)
    src, out, tok_dir = root / "src", root / "out", root / "tok"
    src.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.procs) as pool:
        list(pool.map(_make_file, [(src / f"part-{i:05d}.parquet", i, args.row_groups) for i in range(args.files)],
                      chunksize=200))
    if not (tok_dir / "tokenizer.json").exists():
        jobs.train_tokenizer(None, tok_dir, vocab_size=1024, sample_bytes=1_000_000, workers=2)
    from tokshard.pipeline.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    files = sources.resolve_files(str(src))
    t0 = time.perf_counter()
    plan = sources.plan_slices(files, slice_bytes=1)
    plan_s = time.perf_counter() - t0
    print(f"plan: {len(files):,} files -> {len(plan.slices):,} slices in {plan_s:.1f} s", flush=True)
    if not (out / "manifest.json").exists():
        (out / "train").mkdir(parents=True, exist_ok=True)
        (out / "val").mkdir(parents=True, exist_ok=True)
        chunk = 500
        t0 = time.perf_counter()
        with ProcessPoolExecutor(args.procs) as pool:
            done = sum(pool.map(_commit, [(plan.slices[i:i + chunk], str(tok_dir), tok.sha256, str(out))
                                          for i in range(0, len(plan.slices), chunk)]))
        print(f"set-up: committed {done:,} slices in {time.perf_counter() - t0:.0f} s", flush=True)
    for label in ("resume of the finished run (first driver: writes run.json and the manifest)",
                  "resume again"):
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(src), str(tok_dir), str(out)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        size = (out / "manifest.json").stat().st_size
        print(f"{label}: {r['seconds']:.1f} s, driver peak RSS {r['peak_rss_mib']:.0f} MiB, kept {r['kept']:,} "
              f"slices, encoded {r['encoded']}, {r['shards']:,} shards, manifest {size / 1e6:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
