"""The record of an encode run: what was encoded, with what, into which shards -- and what is already done.

`OUT/manifest.json` lists every shard with its split, source file and row range, documents, tokens, UTF-8 bytes of
text, size and sha256, plus the per-shard time, throughput and worker, and totals per split. `tokshard inspect`
verifies shards against it; the trainer reads the tokenizer sha256 from it. It is written last.

Resuming needs a record that exists before the end: `OUT/run.json` (written first) pins what the directory is
for -- tokenizer, source files, columns, split, slicing -- so a re-run with anything else is refused, and
`OUT/slices/<slice>.json` (written by each task after its shards) holds that slice's shard records, so a re-run
verifies and keeps finished slices and redoes only the rest, even after the driver was killed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokshard.pipeline import atomic
from tokshard.pipeline.shards import FORMAT_VERSION
from tokshard.pipeline.tokenizer import Tokenizer, sha256_file

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "tokshard-manifest/1"
RUN_SPEC = "run.json"
RUN_SPEC_FORMAT = "tokshard-run/1"
SLICES_DIR = "slices"


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
                          "dtype": tok.dtype.name, "bos_id": tok.bos_id, "pattern_name": tok.pattern_name,
                          "engine": tok.engine},
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
        problems = verify_shards(out, self.shards)
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


def verify_shards(out_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    """Problems of the shards `records` describe: missing, wrong size, wrong sha256."""
    problems = []
    for rec in records:
        p = out_dir / rec["path"]
        if not p.is_file():
            problems.append(f"{rec['path']}: missing")
        elif p.stat().st_size != rec["size"]:
            problems.append(f"{rec['path']}: size {p.stat().st_size}, manifest says {rec['size']}")
        elif sha256_file(p) != rec["sha256"]:
            problems.append(f"{rec['path']}: sha256 differs from the manifest (file corrupted or replaced)")
    return problems


def claim_out_dir(out_dir: Path, spec: dict[str, Any]) -> None:
    """Write `run.json` for a new OUT, or check that an existing one describes the same run.

    Everything in `spec` decides which documents land in which shard, so any difference would mix two runs."""
    path = out_dir / RUN_SPEC
    spec = {"format": RUN_SPEC_FORMAT, **spec}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete {out_dir} or choose another --out") from e
        changed = [k for k in sorted(set(spec) | set(old)) if spec.get(k) != old.get(k)]
        if changed:
            details = "; ".join(f"{_LABELS.get(k, k)} {_short(old.get(k))} -> {_short(spec.get(k))}" for k in changed)
            raise ValueError(f"{out_dir} belongs to another run ({details}). Resuming would mix the two: choose "
                             "another --out, or delete that directory to start over")
        return
    if (out_dir / MANIFEST).is_file():
        old_sha = Manifest.read(out_dir).tokenizer["sha256"]
        if old_sha != spec.get("tokenizer_sha256"):
            raise ValueError(f"{out_dir} holds shards made with tokenizer {old_sha[:12]}…, not "
                             f"{str(spec.get('tokenizer_sha256'))[:12]}…; choose another --out or delete it")
    atomic.write_json(path, spec)


_LABELS = {"tokenizer_sha256": "tokenizer", "files": "source files", "text_column": "--text-column",
           "id_column": "--id-column", "val_fraction": "--val-fraction", "slice_bytes": "--slice-mb",
           "limit_docs": "--limit-docs"}


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256
        return value[:12] + "…"
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def slice_record_path(out_dir: Path, slice_name: str) -> Path:
    return out_dir / SLICES_DIR / f"{slice_name}.json"


def write_slice_records(out_dir: Path, slice_name: str, slice_info: dict[str, Any],
                        records: list[dict[str, Any]]) -> None:
    atomic.write_json(slice_record_path(out_dir, slice_name), {"slice": slice_info, "shards": records})


def read_slice_records(out_dir: Path, slice_name: str) -> dict[str, Any] | None:
    """The sidecar of a finished slice, or None when there is none (or it is unreadable: redo the slice)."""
    try:
        return json.loads(slice_record_path(out_dir, slice_name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
