"""Benchmark: BPE training time, rustbpe vs. HF tokenizers, same text, same pattern, same vocabulary size.

This is how tokshard's trainer was chosen (docs/benchmarks.md). Both train on the first --mb MB of the files.

    python bench/train_speed.py [--files ../shared/corpus/train-0000[0-1].parquet] [--mb 20] [--vocab-size 32768]
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import rustbpe
import tokenizers
from tokenizers import Regex, models, pre_tokenizers, trainers

from tokshard.pipeline.tokenizer import DEFAULT_PATTERN, PATTERNS, SPECIAL_TOKENS

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default=str(CORPUS / "train-0000[0-1].parquet"))
    ap.add_argument("--mb", type=float, default=20)
    ap.add_argument("--vocab-size", type=int, default=32768)
    args = ap.parse_args()
    texts, used = [], 0
    for f in sorted(glob.glob(args.files)):
        for t in pq.read_table(f, columns=["text"]).column("text").to_pylist():
            if used >= args.mb * 1e6:
                break
            texts.append(t)
            used += len(t.encode())
    pattern = PATTERNS[DEFAULT_PATTERN]

    t0 = time.perf_counter()
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size=args.vocab_size - len(SPECIAL_TOKENS), pattern=pattern)
    rust_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    hf.train_from_iterator(texts, trainer)
    hf_s = time.perf_counter() - t0
    print(json.dumps({"text_mb": round(used / 1e6, 1), "documents": len(texts), "vocab": args.vocab_size,
                      "rustbpe_s": round(rust_s, 2), "hf_tokenizers_s": round(hf_s, 2),
                      "hf_over_rustbpe": round(hf_s / rust_s, 2)}, indent=2))


if __name__ == "__main__":
    main()
