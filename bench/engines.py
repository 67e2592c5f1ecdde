"""Benchmark: which encoding engine is exact, and how fast, for each pre-split pattern (pipeline/engines.py).

For each pattern it trains a 32,768-id tokenizer with rustbpe on the same documents, then checks every engine
that loads the pattern against HF tokenizers on the tokenizer.json (`encode_special_tokens=True`, the reference)
on three sets of text:
  real         every document of the evaluation file (default: ../shared/corpus/val-00000.parquet)
  adversarial  runs of 499-5,000 copies of one character or short unit (where engines switch merge algorithms),
               alone and between words; special-token text; mixed scripts, emoji, code, control characters
  1M runs      million-character runs of a space, a letter, a dash, a digit, a newline pair
and times a fresh engine (its caches empty, built inside the timed process) on the real text in row-group
batches, one thread (RAYON_NUM_THREADS=1), as CPU seconds: M tokens per CPU second, and per wall second.
tiktoken (the nanoGPT-style peers' engine) is timed too, `encode_ordinary` per document.

    python bench/engines.py [--patterns cl100k,cl100k-d2,gpt2,o200k] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"

import pyarrow.parquet as pq
import rustbpe
import tiktoken
import tokenizers

from tokshard.pipeline import engines
from tokshard.pipeline.tokenizer import PATTERNS, SPECIAL_TOKENS, Tokenizer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def adversarial() -> list[str]:
    out = ["<|bos|> text <|pad|> <|reserved_0|>", "mixed 中文 テキスト 한국어 😀👩‍👩‍👧 code: def f(x): return x**2\n\n",
           "\x00\x1f\r\n\t \u2028\u00a0\u3000", "a \n ", "x  \n  ", "end   "]
    for unit in [" ", "-", "a", "=", "0", "\n", "é", "中", "😀", "ab", "\r\n", " a", "\t", "\u3000", "-\n", ".",
                 "'s", "1a", " \n"]:
        for n in (499, 500, 501, 777, 1000, 2500, 5000):
            out += [unit * n, f"x {unit * n} y"]
    return out


def million_runs() -> list[str]:
    return [f"start {unit * (1_000_000 // len(unit))} end" for unit in (" ", "a", "-", "1", "\n\n")]


def mismatches(engine: engines.Engine, hf: tokenizers.Tokenizer, texts: list[str]) -> int:
    flat, offsets = engine.encode_flat(texts)
    ours = [flat[a:b].tolist() for a, b in itertools.pairwise(offsets)]
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    return sum(a != b for a, b in zip(ours, theirs, strict=True))


def rate(encode, batches: list[list[str]]) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(encode(b) for b in batches)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tokens": n, "m_tok_per_cpu_s": round(n / cpu / 1e6, 2), "m_tok_per_wall_s": round(n / wall / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", default="cl100k,cl100k-d2,gpt2,o200k")
    ap.add_argument("--train", default=str(CORPUS / "train-00001.parquet"))
    ap.add_argument("--train-docs", type=int, default=8000)
    ap.add_argument("--eval", default=str(CORPUS / "val-00000.parquet"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    train = pq.read_table(args.train, columns=["text"]).column("text").to_pylist()[: args.train_docs]
    pf = pq.ParquetFile(args.eval)
    batches = [pf.read_row_group(i, columns=["text"]).column("text").to_pylist() for i in range(pf.num_row_groups)]
    real = [t for b in batches for t in b]
    adv, runs = adversarial(), million_runs()
    rows = []
    for name in args.patterns.split(","):
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(train), vocab_size=32768 - len(SPECIAL_TOKENS), pattern=PATTERNS[name])
        tok = Tokenizer.from_ranks(dict(bpe.get_mergeable_ranks()), PATTERNS[name], name)
        hf = tokenizers.Tokenizer.from_str(tok._spec_json)
        hf.encode_special_tokens = True
        for engine_name in engines.ENGINE_NAMES:
            try:
                engine = engines.choose_engine(tok.preset, tok.ranks, lambda tok=tok: tok._spec_json,
                                               forced=engine_name)
            except ValueError as e:
                rows.append({"pattern": name, "engine": engine_name, "refused": str(e)[:120]})
                print(json.dumps(rows[-1]), flush=True)
                continue
            speed = rate(lambda b, engine=engine: len(engine.encode_flat(b)[0]), batches)  # fresh: timed first
            row = {"pattern": name, "engine": engine_name, **speed,
                   "real_wrong": mismatches(engine, hf, real), "real_docs": len(real),
                   "adversarial_wrong": mismatches(engine, hf, adv), "adversarial_cases": len(adv),
                   "million_runs_wrong": mismatches(engine, hf, runs), "million_runs": len(runs),
                   "chosen": engines.choose_engine(tok.preset, tok.ranks, lambda tok=tok: tok._spec_json).name
                   == engine_name}
            rows.append(row)
            print(json.dumps(row), flush=True)
        tik = tiktoken.Encoding(name="bench", pat_str=tok.pattern, mergeable_ranks=tok.ranks, special_tokens={})
        rows.append({"pattern": name, "engine": "tiktoken (per document)",
                     **rate(lambda b, tik=tik: sum(len(tik.encode_ordinary(t)) for t in b), batches)})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
