"""Benchmark: SuperBPE vs ordinary BPE at the same vocabulary on real text.

Trains ordinary BPE and SuperBPE (one per --transitions value) on the same hash sample of the corpus train files,
then on the held-out val file reports tokens, bytes/token and the share of tokens saved, single-thread encode
throughput (our engine path, and the raw engines), the most frequent superword tokens, training time, and -- for
ordinary BPE and the first transition -- the val bits-per-byte of the tiny trainer preset after the same number of
steps on shards encoded from the same text (BPB is per byte, so it compares across tokenizers).

    python bench/superbpe.py [--corpus ../shared/corpus] [--train-mb 20] [--vocab-size 32768] \
        [--transitions 28672 24576] [--bpb-steps 300] [--out /tmp/superbpe-bench] [--reuse]
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the engines' Rust pools: one thread, like an encode task

import argparse
import collections
import glob
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import regex
import rustbpe
import tiktoken

from tokshard.pipeline import jobs, sources, superbpe
from tokshard.pipeline.tokenizer import PATTERNS, SPECIAL_TOKENS, Tokenizer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def sample(files: list[str], mb: float) -> list[str]:
    """A deterministic hash sample of about `mb` MB across `files`, documents capped as the training job caps them."""
    table = [pq.read_table(f, columns=["text", "id"]).to_pylist() for f in files]
    total = sum(len(r["text"].encode()) for rows in table for r in rows)
    fraction = min(1.0, mb * 1e6 / total)
    return [r["text"][: jobs.MAX_SAMPLE_DOC_CHARS] for rows in table for r in rows
            if sources.id_fraction(r["id"], "tokshard-sample-0:") < fraction]


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def train(texts: list[str], vocab: int, transition: int | None) -> tuple[Tokenizer, dict]:
    size = (transition or vocab) - len(SPECIAL_TOKENS)
    bpe = rustbpe.Tokenizer()
    _, wall1, cpu1 = timed(lambda: bpe.train_from_iterator(iter(texts), vocab_size=size, pattern=PATTERNS["cl100k-d2"]))
    ranks = dict(bpe.get_mergeable_ranks())
    info = {"stage1_wall_s": round(wall1, 2), "stage1_cpu_s": round(cpu1, 2)}
    if transition is None:
        return Tokenizer.from_ranks(ranks, PATTERNS["cl100k-d2"], "cl100k-d2"), info
    pattern = superbpe.stage2_pattern("cl100k-d2")
    n = vocab - len(SPECIAL_TOKENS)
    (ranks, stats), wall2, cpu2 = timed(lambda: superbpe.train_stage2(texts, ranks, pattern, n))
    info.update(stage2_wall_s=round(wall2, 2), stage2_cpu_s=round(cpu2, 2), **stats)
    return Tokenizer.from_ranks(ranks, pattern, "superbpe-cl100k-d2"), info


def throughput(fn, n_bytes: int, repeat: int = 2) -> float:
    """MB/s of text over the best of `repeat` runs, by process time (the machine is shared; one thread here)."""
    return round(n_bytes / 1e6 / min(timed(fn)[2] for _ in range(repeat)), 2)


def superwords(tok: Tokenizer, first_stage2: int, rows: list[list[int]], n: int = 25) -> list[tuple[str, int]]:
    counts = collections.Counter(i for ids in rows for i in ids if i >= first_stage2)
    multi = [(tok.id_bytes(i).decode("utf-8", "replace"), c) for i, c in counts.most_common()
             if regex.search(rb"\S[ \t]+\S", tok.id_bytes(i))]
    return multi[:n]


def bpb_runs(tok_dirs: list[Path], shards_src: str, out: Path, steps: int) -> list[dict]:
    """Encode `shards_src` with each tokenizer (the same documents land in val: the split hashes document ids),
    then train the tiny preset for each, all runs at once on one thread each, and read the final val BPB (over
    every val token, so each tokenizer is scored on the same text)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    shards, runs, procs = [], [], []
    for tok_dir in tok_dirs:
        shards.append(jobs.encode(shards_src, tok_dir, out / f"shards-{tok_dir.name}", workers=2, val_fraction=0.02,
                                  show_progress=False).summary())
        runs.append(out / f"run-{tok_dir.name}")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tokshard", "train", "--data", shards[-1]["out"], "--out", str(runs[-1]),
             "--preset", "tiny", "--device", "cpu", "--steps", str(steps), "--eval-every", str(steps), "--json"],
            env=env, stdout=subprocess.DEVNULL))
    results = []
    for proc, run, s in zip(procs, runs, shards, strict=True):
        if proc.wait() != 0:
            raise SystemExit(f"tokshard train failed for {run}")
        vals = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("kind") == "val"]
        results.append({"val_bpb": round(vals[-1]["val_bpb"], 4), "val_bpb_step0": round(vals[0]["val_bpb"], 4),
                        "val_tokens": vals[-1]["val_tokens"], "val_docs": s["splits"]["val"]["documents"],
                        "train_bytes_per_token": s["splits"]["train"]["bytes_per_token"], "steps": steps})
    return results


def tiktoken_of(tok: Tokenizer) -> tiktoken.Encoding:
    """tiktoken over the same ranks and pattern (the peers' engine), for the raw comparison."""
    return tiktoken.Encoding(name="bench", pat_str=tok.pattern, mergeable_ranks=tok.ranks, special_tokens={})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--train-mb", type=float, default=20)
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--transitions", type=int, nargs="+", default=[28672, 24576])
    ap.add_argument("--bpb-steps", type=int, default=300, help="tiny-preset steps per BPB run (0: skip)")
    ap.add_argument("--bpb-source", default="train-00000.parquet", help="corpus file(s) encoded for the BPB runs")
    ap.add_argument("--out", default="/tmp/superbpe-bench")
    ap.add_argument("--reuse", action="store_true", help="load the tokenizers an earlier run saved in --out instead "
                    "of training them again (no training times then)")
    args = ap.parse_args()
    out = Path(args.out)
    texts = sample(sorted(glob.glob(f"{args.corpus}/train-*.parquet")), args.train_mb)
    evals = pq.read_table(f"{args.corpus}/val-00000.parquet", columns=["text"]).column("text").to_pylist()
    eval_bytes = sum(len(t.encode()) for t in evals)
    print(f"sample: {len(texts):,} docs, {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB; "
          f"eval: {len(evals):,} docs, {eval_bytes / 1e6:.1f} MB", flush=True)
    results = []
    for transition in [None, *args.transitions]:
        name = "bpe" if transition is None else f"superbpe-t{transition}"
        if args.reuse and (out / name / "tokenizer.json").is_file():
            info = {"reused": True}
        else:
            tok, info = train(texts, args.vocab_size, transition)
            tok.save(out / name)
        tok = Tokenizer.load(out / name)
        rows = tok.encode_batch(evals, bos=False)
        peer = tiktoken_of(tok)
        n_tokens = sum(map(len, rows))
        row = {"tokenizer": name, "transition": transition, "engine": tok.engine, "tokens": n_tokens,
               "bytes_per_token": round(eval_bytes / n_tokens, 4), **info,
               "encode_mb_s": throughput(lambda tok=tok: tok.encode_batch(evals, bos=False), eval_bytes),
               "raw_engine_mb_s": throughput(lambda tok=tok: tok._engine.encode_flat(evals), eval_bytes),
               "raw_tiktoken_mb_s": throughput(lambda peer=peer: [peer.encode_ordinary(t) for t in evals],
                                               eval_bytes)}
        if transition is not None:
            row["superwords"] = superwords(tok, transition - len(SPECIAL_TOKENS), rows)
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "superwords"}), flush=True)
    base = results[0]["tokens"]
    for row in results:
        row["tokens_saved"] = round(1 - row["tokens"] / base, 4)
    if args.bpb_steps:
        scored = bpb_runs([out / row["tokenizer"] for row in results[:2]], f"{args.corpus}/{args.bpb_source}",
                          out / "bpb", args.bpb_steps)
        for row, score in zip(results, scored, strict=False):
            row["bpb"] = score
            print(json.dumps({"tokenizer": row["tokenizer"], **score}), flush=True)
    summary = {"train_docs": len(texts), "train_mb": round(sum(len(t.encode()) for t in texts) / 1e6, 2),
               "eval_mb": round(eval_bytes / 1e6, 2), "vocab_size": args.vocab_size, "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
