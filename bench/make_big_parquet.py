"""Write one large parquet file (fineweb-edu schema) by repeating ../shared/corpus, for memory benchmarks.

Each repetition of the corpus gets its own ids (`<original id>#rN`), so every row is a distinct document to the
encoder and the split; text and the other columns are unchanged. Row groups of 2,048 documents and zstd, as in
the corpus (and as a large fineweb-edu file: many row groups, not one). Repetitions are appended until the
file reaches --target-mb; the file appears under its name only when complete (temp name, fsync, rename).

    python bench/make_big_parquet.py [--corpus ../shared/corpus] [--out /tmp/tokshard-big.parquet] [--target-mb 1024]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokshard.pipeline import atomic

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--out", default="/tmp/tokshard-big.parquet")
    ap.add_argument("--target-mb", type=float, default=1024, help="stop once the file is this large (MiB)")
    ap.add_argument("--row-group", type=int, default=2048)
    args = ap.parse_args()

    t0 = time.time()
    files = sorted(Path(args.corpus).glob("*.parquet"))
    if not files:
        raise SystemExit(f"no parquet files in {args.corpus}")
    corpus = pa.concat_tables([pq.read_table(f) for f in files])
    text_bytes = pc.sum(pc.binary_length(corpus.column("text"))).as_py()
    ids = corpus.column("id").combine_chunks()
    target = int(args.target_mb * 2**20)
    reps = 0
    with atomic.atomic_open(args.out, "wb") as f, pq.ParquetWriter(f, corpus.schema, compression="zstd") as writer:
        while f.tell() < target:
            suffix = pa.array([f"#r{reps}"] * len(ids), pa.string())
            rep = corpus.set_column(corpus.schema.get_field_index("id"), "id",
                                    pc.binary_join_element_wise(ids, suffix, ""))
            writer.write_table(rep, row_group_size=args.row_group)
            reps += 1
    size = Path(args.out).stat().st_size
    print(json.dumps({"out": args.out, "bytes": size, "mib": round(size / 2**20, 1), "repetitions": reps,
                      "documents": reps * len(corpus), "text_bytes": reps * text_bytes,
                      "row_groups": pq.ParquetFile(args.out).metadata.num_row_groups,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
