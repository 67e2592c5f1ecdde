"""Peer pipelines for the encode benchmark, on the same files and the same tokenizer.json as tokshard.

  datatrove  `LocalPipelineExecutor([ParquetReader, DocumentTokenizer])`, `--procs` tasks and workers, no
             shuffling: how datatrove tokenizes FineWeb (HF tokenizers on our tokenizer.json, whose template puts
             `<|bos|>` first in every document, as ours does; datatrove writes .ds token files).
  datasets   `datasets.load_dataset("parquet").map(batched=True, num_proc=--procs)` with the HF fast tokenizer on
             the same tokenizer.json, its Arrow cache written to a fresh directory: what a notebook user does.

HF tokenizers' own thread pool is turned off (TOKENIZERS_PARALLELISM=false), so `--procs` processes use
`--procs` cores, like tokshard's workers. Prints one JSON object: tokens, wall seconds. The caller measures CPU
(bench/encode_throughput.py runs this in a fresh process and reads its children's rusage).

    python bench/peers.py datatrove|datasets --source GLOB --tokenizer TOKDIR --out-dir DIR [--procs 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"


def datatrove_run(files: list[str], tokenizer_json: str, out: Path, procs: int) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    folder = os.path.dirname(files[0])
    names = {os.path.basename(f) for f in files}
    pattern = next(iter(names)) if len(names) == 1 else "*.parquet"
    LocalPipelineExecutor(
        pipeline=[ParquetReader(folder, glob_pattern=pattern, text_key="text", id_key="id"),
                  DocumentTokenizer(str(out / "tokens"), tokenizer_name_or_path=tokenizer_json,
                                    shuffle_documents=False, save_final_metadata=False)],
        tasks=procs, workers=procs, logging_dir=str(out / "logs"), skip_completed=False,
    ).run()
    # Each .ds file is uint16 tokens (datatrove's default for vocabularies < 65536).
    return sum(p.stat().st_size for p in (out / "tokens").rglob("*.ds")) // 2


def datasets_run(files: list[str], tokenizer_json: str, out: Path, procs: int) -> int:
    import datasets
    import pyarrow.compute as pc
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(tokenizer_json)

    def encode(batch: dict) -> dict:
        return {"input_ids": [e.ids for e in tok.encode_batch(batch["text"])]}

    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(out / "cache"))
    encoded = ds.map(encode, batched=True, num_proc=procs, remove_columns=ds.column_names)
    return pc.sum(pc.list_value_length(encoded.data.column("input_ids"))).as_py()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer", choices=["datatrove", "datasets"])
    ap.add_argument("--source", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    files = sorted(glob.glob(args.source)) or [args.source]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = datatrove_run if args.peer == "datatrove" else datasets_run
    t0 = time.perf_counter()
    tokens = run(files, str(Path(args.tokenizer) / "tokenizer.json"), out, args.procs)
    print(json.dumps({"peer": args.peer, "procs": args.procs, "tokens": int(tokens),
                      "wall_s": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
