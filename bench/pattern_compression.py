"""Benchmark: compression (bytes/token) of each pre-split preset at equal vocabulary, on the same text.

Trains one tokenizer per preset with rustbpe on the same training text, then encodes the same held-out text
with each and reports bytes/token (higher is better), training seconds, the engine tokshard picks for the
pattern (pipeline/engines.py) and its encode throughput (one thread, a fresh engine, wall and CPU seconds).

    python bench/pattern_compression.py [--train FILE] [--eval FILE] [--vocab-size 32768] [--train-mb 20]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import rustbpe

from tokshard.pipeline.tokenizer import PATTERNS, SPECIAL_TOKENS, Tokenizer

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one engine thread, like an encode task
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def read_texts(path: str, limit_bytes: int | None = None) -> list[str]:
    texts, used = [], 0
    for t in pq.read_table(path, columns=["text"]).column("text").to_pylist():
        if limit_bytes is not None and used >= limit_bytes:
            break
        texts.append(t)
        used += len(t.encode())
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default=str(CORPUS / "train-00001.parquet"))
    ap.add_argument("--eval", default=str(CORPUS / "val-00000.parquet"))
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--train-mb", type=float, default=20)
    args = ap.parse_args()
    train = read_texts(args.train, int(args.train_mb * 1e6))
    evals = read_texts(args.eval)
    eval_bytes = sum(len(t.encode()) for t in evals)
    rows = []
    for name in ("gpt2", "cl100k", "cl100k-d2", "o200k"):
        t0 = time.perf_counter()
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(train), vocab_size=args.vocab_size - len(SPECIAL_TOKENS), pattern=PATTERNS[name])
        train_s = time.perf_counter() - t0
        tok = Tokenizer.from_ranks(dict(bpe.get_mergeable_ranks()), PATTERNS[name], name)
        tok.encode_ordinary("x")  # build the engine outside the clock
        t0, c0 = time.perf_counter(), time.process_time()
        n = len(tok.encode_to_array(evals, bos=False)[0])
        enc_s, enc_cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append({"pattern": name, "bytes_per_token": round(eval_bytes / n, 4), "tokens": n,
                     "train_s": round(train_s, 2), "engine": tok.engine, "encode_tok_s": round(n / enc_s),
                     "encode_tok_per_cpu_s": round(n / enc_cpu)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"train_mb": args.train_mb, "eval_mb": round(eval_bytes / 1e6, 2), "vocab": args.vocab_size,
                      "results": rows}, indent=2))


if __name__ == "__main__":
    main()
