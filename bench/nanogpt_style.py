"""The peer pipeline for the encode benchmark: how nanoGPT / modded-nanogpt / llm.c tokenize a corpus.

Their `fineweb.py` / `openwebtext/prepare.py` scripts share one design, re-implemented here over tokshard's
vocabulary so the comparison is engine- and vocabulary-fair:
  - the parent process iterates the documents and feeds them to a `multiprocessing.Pool` with `imap`
    (chunksize 16), which pickles each text to a worker;
  - a worker encodes one document with tiktoken's `encode_ordinary`, puts the document separator first
    (here `<|bos|>`) and returns it as a numpy uint16 array;
  - the parent copies each array into a preallocated shard buffer of `--shard-size` tokens and writes full
    shards as .bin files (256 int32 header, then uint16), cutting a document where the buffer is full.
The tiktoken `Encoding` is built from tokshard's `tokenizer.json` ranks, pattern and special tokens exactly as
`pipeline/tokenizer.py` builds its exact engine, before the pool forks (as the peers create theirs at import).

Run by bench/encode_throughput.py in a fresh process (so the workers inherit nothing of the benchmark's
memory); prints one JSON object: tokens, wall seconds, CPU seconds (parent, workers) and each worker's peak RSS.

    python bench/nanogpt_style.py --source FILES --tokenizer TOKDIR --out-dir DIR [--procs 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tiktoken
from procmem import memory  # bench/ is on sys.path when a bench script runs

from tokshard.pipeline.export import nanogpt_header
from tokshard.pipeline.tokenizer import BOS, TOKENIZER_JSON, parse_tokenizer_json

_enc: tiktoken.Encoding | None = None
_bos = 0


def _setup(tokenizer_dir: str) -> None:
    global _enc, _bos
    ranks, pattern, specials = parse_tokenizer_json(json.loads((Path(tokenizer_dir) / TOKENIZER_JSON).read_text()))
    _enc = tiktoken.Encoding(name="nanogpt-style", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    _bos = specials[BOS]


def tokenize(text: str) -> np.ndarray:
    ids = [_bos]
    ids.extend(_enc.encode_ordinary(text))
    return np.array(ids, dtype=np.uint16)


def documents(files: list[str]):
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(columns=["text"], batch_size=1024):
            yield from batch.column(0).to_pylist()


def write_bin(path: Path, tokens: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(nanogpt_header(len(tokens)))
        f.write(tokens.tobytes())


def run(files: list[str], tokenizer_dir: str, out_dir: Path, procs: int, shard_size: int) -> dict:
    _setup(tokenizer_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    buf = np.empty(shard_size, dtype=np.uint16)
    used = total = n_files = 0
    with mp.get_context("fork").Pool(procs) as pool:
        for toks in pool.imap(tokenize, documents(files), chunksize=16):
            total += len(toks)
            while used + len(toks) >= shard_size:  # fill the shard, write it, carry the rest over
                take = shard_size - used
                buf[used:] = toks[:take]
                write_bin(out_dir / f"nanogpt_{n_files:06d}.bin", buf)
                n_files += 1
                toks, used = toks[take:], 0
            buf[used : used + len(toks)] = toks
            used += len(toks)
        if used:
            write_bin(out_dir / f"nanogpt_{n_files:06d}.bin", buf[:used])
            n_files += 1
        # The workers are idle now and still alive: read their peak RSS before the pool ends them.
        worker_peaks = [memory(p.pid).get("VmHWM", 0) for p in mp.active_children()]
    wall = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "procs": procs, "tokens": total, "files": n_files, "wall_s": wall,
        "cpu_parent_s": time.process_time() - cpu0, "cpu_workers_s": children.ru_utime + children.ru_stime,
        "worker_peak_rss": worker_peaks, "workers_max_rss_rusage": children.ru_maxrss * 1024,
        "parent_peak_rss": memory(os.getpid()).get("VmHWM", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="parquet file or glob")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shard-size", type=int, default=100_000_000)
    args = ap.parse_args()
    files = sorted(glob.glob(args.source)) or [args.source]
    print(json.dumps(run(files, args.tokenizer, Path(args.out_dir), args.procs, args.shard_size)))


if __name__ == "__main__":
    main()
