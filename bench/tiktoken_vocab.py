"""Make OpenAI's GPT-2 and GPT-4 (cl100k) vocabularies available offline as plain HF tokenizer.json files.

Why: `tokshard eval-tokenizer` compares our tokenizers with well-known ones, and this machine reaches npm but not
OpenAI's blob store. The npm package js-tiktoken ships the ranks in `dist/ranks/NAME.js`: `export default {...}`
whose "bpe_ranks" string holds lines "NAME OFFSET TOKEN TOKEN ...", each TOKEN base64 bytes whose rank is OFFSET
plus its position on the line, beside "pat_str" (a JavaScript rewrite of the split regex) and "special_tokens".

The written tokenizer.json is built by `tokshard.pipeline.tokenizer.build_tokenizer_json` (merges recovered from
the ranks, `ignore_merges` so a piece that is a token maps to it directly, as tiktoken does), with the file's own
special tokens and no post-processor (not our `<|bos|>` template). The split regex is tiktoken's original for the known
encodings (gpt2/r50k/p50k: our "gpt2" preset; cl100k_base: "cl100k"; o200k_base: "o200k"), the file's pat_str
otherwise. `--verify` checks that HF tokenizers on the written file gives the ids of tiktoken over the same ranks
and regex on real text, and `--js-tiktoken` also runs js-tiktoken itself (node) on the same documents.

    npm install --prefix /tmp/jstik js-tiktoken@1.0.21    # the ranks, and base64-js for the node check
    JS=/tmp/jstik/node_modules/js-tiktoken
    python bench/tiktoken_vocab.py $JS/dist/ranks/cl100k_base.js /tmp/cl100k/tokenizer.json \\
        --verify ../shared/corpus/val-00000.parquet --verify-docs 100000 --js-tiktoken $JS
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tokshard.pipeline import atomic
from tokshard.pipeline.tokenizer import BOS, PATTERNS, build_tokenizer_json

# tiktoken's own split regex per encoding name; js-tiktoken ships JavaScript-compatible rewrites of them.
TIKTOKEN_PATTERNS = {"gpt2": "gpt2", "r50k_base": "gpt2", "p50k_base": "gpt2", "p50k_edit": "gpt2",
                     "cl100k_base": "cl100k", "o200k_base": "o200k"}


def read_ranks_js(path: Path) -> dict[str, Any]:
    """{"name", "ranks": {bytes: rank}, "pat_str", "special_tokens"} from a js-tiktoken ranks module."""
    text = path.read_text().strip()
    prefix = "export default"
    if not text.startswith(prefix):
        raise ValueError(f"{path}: not a js-tiktoken ranks module (it does not start with {prefix!r})")
    data = json.loads(text[len(prefix):].strip().rstrip(";"))
    ranks: dict[bytes, int] = {}
    for line in filter(None, data["bpe_ranks"].split("\n")):
        _, offset, *tokens = line.split(" ")
        for i, token in enumerate(tokens):
            ranks[base64.b64decode(token)] = int(offset) + i
    return {"name": path.name.split(".")[0], "ranks": ranks, "pat_str": data["pat_str"],
            "special_tokens": data.get("special_tokens", {})}


def tokenizer_json(ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int]) -> dict[str, Any]:
    """A plain HF tokenizer.json: byte-level BPE over `ranks`, `pattern`, these special tokens, no template."""
    spec = build_tokenizer_json(ranks, pattern, [BOS])  # BOS only to satisfy its template; both replaced below
    spec["added_tokens"] = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for s, i in sorted(special_tokens.items(), key=lambda kv: kv[1])
    ]
    spec["post_processor"] = None
    return spec


def corpus_texts(path: str, docs: int) -> list[str]:
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()[:docs]


def verify_tiktoken(tokenizer_path: Path, ranks: dict[bytes, int], pattern: str, specials: dict[str, int],
                    texts: list[str]) -> dict[str, Any]:
    import tiktoken
    import tokenizers

    hf = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    hf.encode_special_tokens = True
    enc = tiktoken.Encoding(name="check", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    mismatches = [i for i, t in enumerate(texts)
                  if hf.encode(t, add_special_tokens=False).ids != enc.encode_ordinary(t)]
    tokens = sum(len(x) for x in enc.encode_ordinary_batch(texts))
    return {"documents": len(texts), "tokens": tokens, "mismatched_documents": mismatches[:20],
            "mismatches": len(mismatches)}


_NODE = """
import { readFileSync } from "node:fs";
import { Tiktoken } from "%(lite)s";
import ranks from "%(ranks)s";
const enc = new Tiktoken(ranks);
const texts = JSON.parse(readFileSync(process.argv[2], "utf8"));
process.stdout.write(JSON.stringify(texts.map((t) => enc.encode(t, [], []))));
"""


def verify_js(package: Path, name: str, tokenizer_path: Path, texts: list[str]) -> dict[str, Any]:
    """js-tiktoken itself (its JavaScript regex, its BPE) against HF on the written file."""
    import tokenizers

    hf = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    hf.encode_special_tokens = True
    with tempfile.TemporaryDirectory() as tmp:
        script, data = Path(tmp) / "encode.mjs", Path(tmp) / "texts.json"
        script.write_text(_NODE % {"lite": (package / "dist" / "lite.js").resolve().as_uri(),
                                   "ranks": (package / "dist" / "ranks" / f"{name}.js").resolve().as_uri()})
        data.write_text(json.dumps(texts))
        out = subprocess.run(["node", str(script), str(data)], check=True, capture_output=True, text=True)
    js_ids = json.loads(out.stdout)
    mismatches = [i for i, (t, ids) in enumerate(zip(texts, js_ids, strict=True))
                  if hf.encode(t, add_special_tokens=False).ids != ids]
    return {"documents": len(texts), "mismatched_documents": mismatches[:20], "mismatches": len(mismatches)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ranks_js", type=Path, help="js-tiktoken dist/ranks/NAME.js")
    ap.add_argument("out", type=Path, help="tokenizer.json to write")
    ap.add_argument("--pattern", default=None, help="split regex or preset name (default: tiktoken's for NAME)")
    ap.add_argument("--verify", default=None, help="a parquet file whose 'text' documents are encoded both ways")
    ap.add_argument("--verify-docs", type=int, default=2000)
    ap.add_argument("--js-tiktoken", type=Path, default=None, help="the unpacked js-tiktoken package directory")
    args = ap.parse_args(argv)
    t0 = time.time()
    vocab = read_ranks_js(args.ranks_js)
    preset = args.pattern or TIKTOKEN_PATTERNS.get(vocab["name"])
    pattern = PATTERNS.get(preset, preset) if preset else vocab["pat_str"]
    spec = tokenizer_json(vocab["ranks"], pattern, vocab["special_tokens"])
    atomic.write_bytes(args.out, json.dumps(spec, ensure_ascii=False).encode())
    summary: dict[str, Any] = {"name": vocab["name"], "out": str(args.out), "ranks": len(vocab["ranks"]),
                               "special_tokens": vocab["special_tokens"], "pattern": pattern,
                               "seconds": round(time.time() - t0, 1)}
    ok = True
    if args.verify:
        texts = corpus_texts(args.verify, args.verify_docs)
        summary["tiktoken_check"] = verify_tiktoken(args.out, vocab["ranks"], pattern, vocab["special_tokens"], texts)
        ok = summary["tiktoken_check"]["mismatches"] == 0
        if args.js_tiktoken:
            summary["js_tiktoken_check"] = verify_js(args.js_tiktoken, vocab["name"], args.out, texts)
            ok = ok and summary["js_tiktoken_check"]["mismatches"] == 0
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
