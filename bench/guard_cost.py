"""Benchmark: microseconds per `Tokenizer.exact_needed` call (the riptoken guard) on one document of real text.

The guard runs on every encode call; for a single small service request its fixed cost matters more than its
throughput. Times one document cut from the corpus at each size (best of 7 repeats), through `exact_needed` (the
small-input screen, then the block scan where needed) and through the block scan alone (`_guard_scan`), plus one
real batch of 2,048 documents (a parquet row group). Run it from another checkout to compare versions.

    python bench/guard_cost.py --tokenizer /tmp/tok32k [--source ../shared/corpus/val-00000.parquet] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

import pyarrow.parquet as pq

from tokshard.pipeline.tokenizer import Tokenizer, utf8_buffer

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "val-00000.parquet"
SIZES = {"100 B": 100, "1 KB": 1_000, "10 KB": 10_000, "1 MB": 1_000_000}


def best_us(fn, n_bytes: int) -> float:
    number = max(1, 200_000 // max(n_bytes, 1_000))
    return round(min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--source", default=str(DEFAULT_SOURCE))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tok = Tokenizer.load(args.tokenizer)
    texts = pq.read_table(args.source, columns=["text"]).column("text").to_pylist()
    blob = "\n".join(texts).encode()
    report: dict[str, dict[str, float]] = {}
    cases = {label: [blob[:n].decode("utf-8", "ignore")] for label, n in SIZES.items()}
    cases["batch of 2,048 documents"] = texts[:2048]
    for label, docs in cases.items():
        data, offsets = utf8_buffer(docs)
        row = {"bytes": len(data), "flagged": int(tok.exact_needed(data, offsets).sum()),
               "exact_needed_us": best_us(lambda d=data, o=offsets: tok.exact_needed(d, o), len(data))}
        if hasattr(tok, "_guard_scan"):  # absent before the screen existed
            row["block_scan_only_us"] = best_us(lambda d=data, o=offsets: tok._guard_scan(d, o), len(data))
        report[label] = row
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
