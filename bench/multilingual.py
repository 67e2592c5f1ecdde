"""Held-out parallel text for the multilingual tokenizer benchmarks (docs/benchmarks.md, "Tokenizers for many
languages").

../shared/corpus-multi holds the Debian installation guide in 19 languages: the same page in every language, its
`url` differing only in the language's path segment. This script cuts the corpus in two by page (a stable hash of
the key, all languages of a page on the same side): the training file keeps everything but the held-out pages; the
evaluation file holds the held-out pages with their `key` column, plus English text kept out of the English
training data (../shared/corpus/val-00000.parquet, language "en", no key), so English bytes/token is measured on
several MB.

    python bench/multilingual.py /tmp/multi-data        # -> multi-train.parquet, heldout.parquet
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARALLEL_PREFIX = "debian://installation-guide/"


def parallel_key(url: str, language: str) -> str:
    """The url without its language segment ("de", "zh_CN" or "zh-CN", "pt_BR"/"pt-BR", or the bare "zh")."""
    spellings = {language, language.replace("-", "_"), language.split("-")[0]}
    return "/".join(part for part in url.split("/") if part not in spellings)


def held_out(key: str, fraction: float) -> bool:
    h = hashlib.blake2b(f"tokshard-multi-heldout:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64 < fraction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--multi", type=Path, default=SHARED / "corpus-multi" / "multi-00000.parquet")
    ap.add_argument("--english-val", type=Path, default=SHARED / "corpus" / "val-00000.parquet")
    ap.add_argument("--fraction", type=float, default=0.5, help="share of the parallel pages held out")
    args = ap.parse_args()
    table = pq.read_table(args.multi)
    keys = [parallel_key(u, lang) if u.startswith(PARALLEL_PREFIX) else None
            for u, lang in zip(table.column("url").to_pylist(), table.column("language").to_pylist(), strict=True)]
    out_mask = pa.array([k is not None and held_out(k, args.fraction) for k in keys])
    args.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.filter(pc.invert(out_mask)), args.out / "multi-train.parquet", row_group_size=1024)
    parallel = table.filter(out_mask).select(["text", "id", "url", "language"])
    held_keys = [k for k, m in zip(keys, out_mask.to_pylist(), strict=True) if m]
    parallel = parallel.append_column("key", pa.array(held_keys))
    english = pq.read_table(args.english_val, columns=["text", "id", "url"])
    english = english.append_column("language", pa.array(["en"] * len(english)))
    english = english.append_column("key", pa.nulls(len(english), pa.string()))
    heldout = pa.concat_tables([parallel.cast(english.schema), english])
    pq.write_table(heldout, args.out / "heldout.parquet", row_group_size=1024)
    langs = sorted(set(parallel.column("language").to_pylist()))
    print(f"held out {len(set(parallel.column('key').to_pylist()))} pages in {len(langs)} languages "
          f"({parallel.num_rows} documents) + {english.num_rows} English documents -> {args.out}")


if __name__ == "__main__":
    main()
