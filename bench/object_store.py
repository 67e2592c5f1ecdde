"""Benchmark: `tokshard encode` into an S3-compatible store vs into a local directory, same input, same Ray
session, interleaved.

The store is moto_server (the one the tests use) on loopback, reached through AWS_ENDPOINT_URL like any
S3-compatible endpoint. It is a Python process on the same machine, so it takes CPU from the encode workers: the
ratio is a lower bound for a real store on the network; the server's own CPU seconds during each S3 run are
printed beside it. Each repetition encodes into a fresh local directory and
a fresh S3 prefix; the ratio is taken within each repetition, reported as median [min .. max]. Both runs' shards
are checked byte-identical.

    python bench/object_store.py --source '../shared/corpus/train-0000[01].parquet' [--repeat 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import S3_PORT, committed_shard_bytes, shard_bytes, start_moto_server
from tokshard.pipeline import jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=None, help="parquet files (default: the bundled sample)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir (default: train 8192 ids on the sample)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--slice-mb", type=int, default=16)
    args = ap.parse_args()
    import ray
    import s3fs

    server = start_moto_server(S3_PORT)
    tmp = Path(tempfile.mkdtemp(prefix="tokshard-s3-bench-"))
    try:
        ray.init(num_cpus=args.workers, include_dashboard=False, configure_logging=False,
                 runtime_env={"env_vars": {"RAYON_NUM_THREADS": "1"}})
        tok = args.tokenizer or str(jobs.train_tokenizer(None, tmp / "tok", vocab_size=8192,
                                                         sample_bytes=2_000_000).tokenizer_dir)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem().mkdir(bucket)

        def server_cpu() -> float:
            """CPU seconds moto_server has used so far (utime + stime from /proc): what a network store would not
            take from the encode workers."""
            fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def run(out: str) -> tuple[float, int]:
            t0 = time.perf_counter()
            r = jobs.encode(args.source, tok, out, workers=args.workers, slice_bytes=args.slice_mb << 20,
                            show_progress=False)
            assert r.complete
            return time.perf_counter() - t0, r.manifest.totals()["all"]["tokens"]

        run(str(tmp / "warm"))  # workers start and load the tokenizer once, as in a long job
        ratios, local_tps, s3_tps, moto_cpu = [], [], [], []
        for i in range(args.repeat):
            local_out, s3_out = str(tmp / f"local-{i}"), f"s3://{bucket}/run-{i}"
            lt, tokens = run(local_out)
            c0 = server_cpu()
            st, _ = run(s3_out)
            moto_cpu.append(server_cpu() - c0)
            assert committed_shard_bytes(s3_out) == shard_bytes(Path(local_out))
            local_tps.append(tokens / lt)
            s3_tps.append(tokens / st)
            ratios.append(lt / st)
            print(f"rep {i}: {tokens:,} tokens; local {lt:.2f} s ({tokens / lt / 1e6:.2f} M tok/s), "
                  f"s3 {st:.2f} s ({tokens / st / 1e6:.2f} M tok/s), s3/local {lt / st:.3f}; moto_server used "
                  f"{moto_cpu[-1]:.2f} CPU s of the s3 run", flush=True)
            shutil.rmtree(local_out)
        print(f"s3/local throughput: median {statistics.median(ratios):.3f} [{min(ratios):.3f} .. {max(ratios):.3f}]; "
              f"local {statistics.median(local_tps) / 1e6:.2f} M tok/s, s3 {statistics.median(s3_tps) / 1e6:.2f} "
              f"M tok/s (median of {args.repeat}, {args.workers} workers); moto_server CPU per s3 run: median "
              f"{statistics.median(moto_cpu):.2f} s")
    finally:
        ray.shutdown()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
