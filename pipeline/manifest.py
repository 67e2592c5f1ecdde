"""The manifest of an encode run (`OUT/manifest.json`): what was encoded, with what, into which shards.

It lists every shard with its split, source file and row range, documents, tokens, UTF-8 bytes of text, size and
sha256, plus the per-shard time, throughput and worker, and totals per split. `tokshard inspect` verifies shards
against it; the trainer reads the tokenizer sha256 from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.shards import FORMAT_VERSION
from pipeline.tokenizer import Tokenizer, sha256_file

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "tokshard-manifest/1"


@dataclass
class ShardRecord:
    path: str  # relative to the output directory
    split: str
    source: str
    slice: int
    row_groups: list[int]  # [first, end) row groups of the source file
    rows: list[int]  # [first, end) rows of the source file covered by the slice (both splits together)
    documents: int
    tokens: int
    text_bytes: int
    size: int
    sha256: str
    seconds: float
    tokens_per_s: int
    worker: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    docs = sum(r["documents"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    text_bytes = sum(r["text_bytes"] for r in records)
    # bytes/token counts text tokens only: the <|bos|> of each row carries no text.
    return {"shards": len(records), "documents": docs, "tokens": tokens, "text_bytes": text_bytes,
            "bytes_per_token": round(text_bytes / max(tokens - docs, 1), 4)}


@dataclass
class Manifest:
    data: dict[str, Any]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.data["shards"]

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.data["tokenizer"]

    def totals(self) -> dict[str, Any]:
        return self.data["totals"]

    @classmethod
    def create(
        cls,
        tok: Tokenizer,
        source: str,
        files: list[str],
        val_fraction: float,
        records: list[dict[str, Any]],
        errors: list[str],
    ) -> Manifest:
        totals = {split: _totals([r for r in records if r["split"] == split]) for split in ("train", "val")}
        totals["all"] = _totals(records)
        return cls({
            "format": MANIFEST_FORMAT,
            "shard_format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "complete": not errors,
            "errors": errors,
            "tokenizer": {"path": "tokenizer", "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                          "dtype": tok.dtype.name, "bos_id": tok.bos_id, "pattern_name": tok.pattern_name},
            "source": {"spec": source, "files": files},
            "val_fraction": val_fraction,
            "shards": records,
            "totals": totals,
        })

    def write(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / MANIFEST
        atomic.write_json(path, self.data)
        return path

    @classmethod
    def read(cls, out_dir: str | Path) -> Manifest:
        path = Path(out_dir) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: {out_dir} is not the output of `tokshard encode`") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from e
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: unknown manifest format {data.get('format')!r}")
        return cls(data)

    def verify(self, out_dir: str | Path) -> list[str]:
        """Check every shard's size and sha256 and the tokenizer copy; return the problems found."""
        out = Path(out_dir)
        problems = []
        for rec in self.shards:
            p = out / rec["path"]
            if not p.is_file():
                problems.append(f"{rec['path']}: missing")
            elif p.stat().st_size != rec["size"]:
                problems.append(f"{rec['path']}: size {p.stat().st_size}, manifest says {rec['size']}")
            elif sha256_file(p) != rec["sha256"]:
                problems.append(f"{rec['path']}: sha256 differs from the manifest (file corrupted or replaced)")
        tok_json = out / self.tokenizer["path"] / "tokenizer.json"
        if not tok_json.is_file():
            problems.append(f"{tok_json}: missing")
        elif sha256_file(tok_json) != self.tokenizer["sha256"]:
            problems.append(f"{tok_json}: sha256 differs from the manifest's tokenizer")
        listed = {rec["path"] for rec in self.shards}
        for split in ("train", "val"):
            for p in sorted((out / split).glob("*.arrow")):
                if f"{split}/{p.name}" not in listed:
                    problems.append(f"{split}/{p.name}: not listed in the manifest")
        return problems
