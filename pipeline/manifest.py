"""The record of an encode run: what was encoded, with what, into which shards -- and what is already done.

`OUT/manifest.json` lists every shard with its split, source file and row range, documents, tokens, UTF-8 bytes of
text, size and sha256, plus the per-shard time, throughput and worker, and totals per split. `tokshard inspect`
verifies shards against it; the trainer reads the tokenizer sha256 from it. It is written last.

Resuming needs a record that exists before the end: `OUT/run.json` (written first) pins what the directory is
for -- tokenizer, source files, columns, split, slicing -- so a re-run with anything else is refused, and
`OUT/slices/<slice>.json` (written by each task after its shards) holds that slice's shard records, so a re-run
verifies and keeps finished slices and redoes only the rest, even after the driver was killed.

OUT is a local directory or an object-store URL (pipeline/storage.py): on a store the slice record is the commit
of that slice's per-attempt shard keys, and shard objects no committed record names are `uncommitted`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from tokshard.pipeline import storage
from tokshard.pipeline.shards import FORMAT_VERSION
from tokshard.pipeline.tokenizer import Tokenizer

OutDir = str | os.PathLike[str]  # a local directory or an object-store URL

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
    slice: str  # the slice's name, FFFFF-SSSS (file index, slice number in the file)
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
    # What the store reported about the object right after it was written (S3 ETag, GCS md5, local mtime_ns):
    # a resumed run compares it with what the store reports now instead of reading the shard back.
    stored: str = ""

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

    def write(self, out_dir: OutDir) -> str:
        path = storage.join(out_dir, MANIFEST)
        storage.write_json(path, self.data)
        return path

    @classmethod
    def read(cls, out_dir: OutDir) -> Manifest:
        path = storage.join(out_dir, MANIFEST)
        try:
            data = storage.read_json(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: {out_dir} is not the output of `tokshard encode`") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from e
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: unknown manifest format {data.get('format')!r}")
        return cls(data)

    def verify(self, out_dir: OutDir) -> list[str]:
        """Read every shard back and check its size and sha256, and the tokenizer copy; return the problems."""
        problems = verify_shards(out_dir, self.shards, full=True)
        tok_json = storage.join(out_dir, self.tokenizer["path"], "tokenizer.json")
        if not storage.exists(tok_json):
            problems.append(f"{tok_json}: missing")
        elif storage.sha256_of(tok_json) != self.tokenizer["sha256"]:
            problems.append(f"{tok_json}: sha256 differs from the manifest's tokenizer")
        if not storage.is_url(out_dir):  # on a store, unlisted shard objects are dead attempts: `uncommitted`
            problems += [f"{rel}: not listed in the manifest" for rel in unlisted_shards(out_dir, self.shards)]
        return problems


def _shard_files(out_dir: OutDir) -> dict[str, dict[str, Any]]:
    """Every shard file/object under OUT's split directories, by relative path."""
    found = {}
    for split in ("train", "val"):
        for rel, meta in storage.list_files(storage.join(out_dir, split)).items():
            if rel.endswith(".arrow") and "/" not in rel:
                found[f"{split}/{rel}"] = meta
    return found


def unlisted_shards(out_dir: OutDir, records: Iterable[dict[str, Any]]) -> list[str]:
    """Shard files/objects no record names: on a store, what attempts that never committed left behind."""
    listed = {rec["path"] for rec in records}
    return sorted(rel for rel in _shard_files(out_dir) if rel not in listed)


def remove_uncommitted(out_dir: OutDir, records: Iterable[dict[str, Any]]) -> int:
    """Delete the shard objects of attempts that never committed (call when no task of the run is running)."""
    return storage.remove(storage.join(out_dir, rel) for rel in unlisted_shards(out_dir, records))


def verify_shards(out_dir: OutDir, records: list[dict[str, Any]], full: bool = False) -> list[str]:
    """Problems of the shards `records` describe: missing, wrong size, wrong content.

    `full` reads every shard and compares sha256s (`inspect`). Otherwise a record with a `stored` tag is checked
    against what the store reports now (size and ETag / md5 / mtime: no shard bytes are read, which keeps resuming
    a large run cheap); records without one are read and hashed."""
    problems = []
    for rec in records:
        path = storage.join(out_dir, rec["path"])
        found = storage.info(path)
        if found is None:
            problems.append(f"{rec['path']}: missing")
        elif found["size"] != rec["size"]:
            problems.append(f"{rec['path']}: size {found['size']}, manifest says {rec['size']}")
        elif not full and rec.get("stored") and storage.stored_tag(found) == rec["stored"]:
            continue
        elif not full and rec.get("stored"):
            problems.append(f"{rec['path']}: changed since it was written (the store reports another version)")
        elif storage.sha256_of(path) != rec["sha256"]:
            problems.append(f"{rec['path']}: sha256 differs from the manifest (file corrupted or replaced)")
    return problems


def claim_out_dir(out_dir: OutDir, spec: dict[str, Any]) -> None:
    """Write `run.json` for a new OUT, or check that an existing one describes the same run.

    Everything in `spec` decides which documents land in which shard, so any difference would mix two runs."""
    path = storage.join(out_dir, RUN_SPEC)
    spec = {"format": RUN_SPEC_FORMAT, **spec}
    try:
        old = storage.read_json(path)
    except FileNotFoundError:
        old = None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete {out_dir} or choose another --out") from e
    if old is not None:
        changed = [k for k in sorted(set(spec) | set(old)) if spec.get(k) != old.get(k)]
        if changed:
            details = "; ".join(f"{_LABELS.get(k, k)} {_short(old.get(k))} -> {_short(spec.get(k))}" for k in changed)
            raise ValueError(f"{out_dir} belongs to another run ({details}). Resuming would mix the two: choose "
                             "another --out, or delete that directory to start over")
        return
    if storage.exists(storage.join(out_dir, MANIFEST)):
        old_sha = Manifest.read(out_dir).tokenizer["sha256"]
        if old_sha != spec.get("tokenizer_sha256"):
            raise ValueError(f"{out_dir} holds shards made with tokenizer {old_sha[:12]}…, not "
                             f"{str(spec.get('tokenizer_sha256'))[:12]}…; choose another --out or delete it")
    storage.write_json(path, spec)


_LABELS = {"tokenizer_sha256": "tokenizer", "files": "source files", "text_column": "--text-column",
           "id_column": "--id-column", "val_fraction": "--val-fraction", "slice_bytes": "--slice-mb",
           "limit_docs": "--limit-docs"}


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256
        return value[:12] + "…"
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def slice_record_path(out_dir: OutDir, slice_name: str) -> str:
    return storage.join(out_dir, SLICES_DIR, f"{slice_name}.json")


def write_slice_records(out_dir: OutDir, slice_name: str, slice_info: dict[str, Any],
                        records: list[dict[str, Any]]) -> None:
    """Commit a slice: written after its shards, one atomic file/object naming exactly the keys it keeps."""
    storage.write_json(slice_record_path(out_dir, slice_name), {"slice": slice_info, "shards": records})


def read_slice_records(out_dir: OutDir, slice_name: str) -> dict[str, Any] | None:
    """The sidecar of a finished slice, or None when there is none (or it is unreadable: redo the slice)."""
    try:
        return storage.read_json(slice_record_path(out_dir, slice_name))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def committed_slices(out_dir: OutDir, slices: dict[str, dict[str, Any]], threads: int | None = None
                     ) -> dict[str, list[dict[str, Any]]]:
    """The shard records of every slice in `slices` (name -> slice info) that an earlier run committed and whose
    shards still verify (the cheap check of `verify_shards`): the driver keeps these without submitting a task,
    so resuming a finished 100,000-slice run costs one listing and a metadata request per object, not 100,000
    tasks. On a store the records are read by `threads` threads (default 32; network-bound), locally by one
    (CPU-bound: threads only contend for the GIL).

    Raises ValueError when a source file changed since its slices were committed (its footer fingerprint
    differs): resuming would mix two versions of it."""
    names = {rel.removesuffix(".json") for rel in storage.list_files(storage.join(out_dir, SLICES_DIR))}
    wanted = [n for n in slices if n in names]
    if threads is None:
        threads = 32 if storage.is_url(out_dir) else 1

    def check(name: str) -> tuple[str, list[dict[str, Any]] | None, bool]:
        """(name, its shard records if kept, whether its source file changed); only what is kept stays alive."""
        done = read_slice_records(out_dir, name)
        if done is None:
            return name, None, False
        if done["slice"].get("file_fingerprint") != slices[name].get("file_fingerprint"):
            return name, None, True
        keep = done["slice"] == slices[name] and not verify_shards(out_dir, done["shards"])
        return name, done["shards"] if keep else None, False

    if threads <= 1:
        results = [check(n) for n in wanted]
    else:
        with ThreadPoolExecutor(max_workers=min(threads, max(1, len(wanted)))) as pool:
            results = list(pool.map(check, wanted))
    changed = sorted({slices[n]["path"] for n, _, file_changed in results if file_changed})
    if changed:
        raise ValueError(f"{len(changed)} source file(s) changed since {out_dir} was written (their parquet footers "
                         f"differ), e.g. {changed[0]}; resuming would mix two versions: choose another --out, or "
                         "delete that directory to start over")
    return {name: shards for name, shards, _ in results if shards is not None}
