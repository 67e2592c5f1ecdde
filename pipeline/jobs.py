"""The Ray jobs: draw a sample and train the tokenizer; encode every slice of the corpus into shards.

The driver plans, submits and records; the work runs in Ray tasks, so the same code runs on a laptop (a local
Ray instance started and stopped here) and on a cluster (`--address`). Tasks return their stats to the driver,
which writes the manifest last: a manifest on disk describes complete, fsynced shards only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tokshard.pipeline import atomic, balance, sources, storage, superbpe
from tokshard.pipeline.manifest import (
    Manifest,
    ShardRecord,
    claim_out_dir,
    committed_slices,
    read_slice_records,
    remove_uncommitted,
    verify_shards,
    write_slice_records,
)
from tokshard.pipeline.progress import Progress, RowsDone
from tokshard.pipeline.shards import SUFFIX, write_shard
from tokshard.pipeline.tokenizer import (
    DEFAULT_PATTERN,
    DEFAULT_VOCAB_SIZE,
    METADATA_JSON,
    SPECIAL_TOKENS,
    Tokenizer,
    UnencodableError,
    copy_tokenizer,
    load_cached,
    resolve_pattern,
)

DEFAULT_SAMPLE_BYTES = 200_000_000
MAX_SAMPLE_DOC_CHARS = 10_000  # long documents are capped so one of them cannot dominate the merge counts
DEFAULT_VAL_FRACTION = 0.01
CLUSTER_POLL_S = 1.0  # how often the encode driver re-reads the cluster's CPU count


# -- where tasks run: Ray, or this process ------------------------------------------------------------------
# A run whose text is at most this much, with no cluster to join, runs in this process: starting a local Ray
# instance and its workers costs seconds (docs/benchmarks.md, "Fixed cost"), more than encoding that much text.
# The tasks are the same functions either way, so the shards and the manifest are the same too.
LOCAL_MAX_BYTES = 256 << 20


class _Session:
    """What `ray_session` scopes share: how deep they nest and whether Ray was started inside them."""

    depth = 0
    started = False
    address: str | None = None
    workers: int | None = None


@contextlib.contextmanager
def ray_session(address: str | None = None, workers: int | None = None) -> Iterator[None]:
    """A scope in which Ray is started on first need (`_ensure_ray`) and stopped at the end if it was started
    here. Nothing is started for jobs that run in this process, so `tokshard run` on a small source never pays for
    Ray; jobs that need it inside one scope share one instance."""
    outer = _Session.depth == 0
    if outer:
        _Session.address, _Session.workers = address, workers
    _Session.depth += 1
    try:
        yield
    finally:
        _Session.depth -= 1
        if outer:
            _Session.address = _Session.workers = None
        if outer and _Session.started:
            import ray

            ray.shutdown()
            _Session.started = False


def _cluster_requested(address: str | None) -> bool:
    """Is there a cluster to use: an address, RAY_ADDRESS (a `ray job submit` entrypoint), or a Ray already
    initialised in this process (a notebook, the tests)?"""
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    ray = sys.modules.get("ray")  # never import Ray just to ask
    return ray is not None and ray.is_initialized()


def runs_in_process(address: str | None, in_process: bool | None, text_bytes: int) -> bool:
    """Whether a job runs in this process: as asked, else when there is no cluster and the text is small. An
    address given to an enclosing `ray_session` (`tokshard run --address`) counts as the job's own."""
    address = address or _Session.address
    if in_process is not None:
        if in_process and address:
            raise ValueError("--in-process runs without Ray: it cannot be combined with --address")
        return in_process
    return not _cluster_requested(address) and text_bytes <= LOCAL_MAX_BYTES


def _ensure_ray(address: str | None, workers: int | None) -> None:
    """Join `address` or start a local Ray instance; reuse one that is already initialised.

    Ray 2.60 enables token authentication by itself after a local start; we set RAY_AUTH_MODE explicitly
    ("disabled" for the private local instance unless the user chose otherwise) so behaviour never depends
    on what an earlier `ray.init()` left behind."""
    import ray

    if ray.is_initialized():
        return
    if _Session.depth == 0:
        raise RuntimeError("Ray work outside `ray_session`: nothing would stop the instance it starts")
    address = address or _Session.address
    workers = workers or _Session.workers
    # The engines' Rust thread pools: one thread per task, Ray does the parallelism.
    runtime_env = {"env_vars": {"RAYON_NUM_THREADS": "1"}}
    address = address or os.environ.get("RAY_ADDRESS")  # set for the entrypoint of `ray job submit`
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=True, configure_logging=False)
    _Session.started = True


def _largest_node_cpus() -> int:
    import ray

    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(cpus, default=1)))


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- tokenizer training -----------------------------------------------------------------------------------
def _sample_slice(slice_: sources.Slice, fraction: float, seed: int, text_column: str, id_column: str) -> list[str]:
    out: list[str] = []
    for batch in sources.iter_batches(slice_, text_column, id_column):
        for doc_id, text in zip(batch.ids, batch.texts, strict=True):
            if fraction >= 1 or sources.id_fraction(doc_id, f"tokshard-sample-{seed}:") < fraction:
                out.append(text[:MAX_SAMPLE_DOC_CHARS])
    return out


def _train_bpe_task(samples: list[Any], *args: Any) -> dict[str, Any]:
    """`_train_bpe` as one Ray task, given the sample tasks' refs (in plan order)."""
    import ray

    return _train_bpe((ray.get(ref) for ref in samples), *args)


def _train_bpe(samples: Iterable[list[str]], vocab_size: int, pattern: str, sample_bytes: int) -> dict[str, Any]:
    """rustbpe counts pre-split pieces on all the node's cores, then merges. Returns the ranks, and how many
    documents of each sample it used (SuperBPE's stage 2 trains on the same ones)."""
    import rustbpe

    texts: list[str] = []
    used = 0
    used_per_ref: list[int] = []
    for sample in samples:  # in plan order, so the capped sample is the same on every run
        before = len(texts)
        for text in sample:
            if used >= sample_bytes:
                break
            texts.append(text)
            used += len(text.encode("utf-8", "surrogatepass"))
        used_per_ref.append(len(texts) - before)
    bpe = rustbpe.Tokenizer()
    t0 = time.time()
    bpe.train_from_iterator(iter(texts), vocab_size=vocab_size, pattern=pattern)
    return {"documents": len(texts), "bytes": used, "used_per_ref": used_per_ref, "seconds": time.time() - t0,
            "ranks": list(bpe.get_mergeable_ranks())}


@dataclass
class TrainResult:
    tokenizer_dir: Path
    vocab_size: int
    sample_documents: int
    sample_bytes: int
    seconds: float
    sha256: str
    reused: bool = False  # an earlier run's tokenizer, trained with the same settings
    balance: dict[str, Any] | None = None  # the groups' shares of a balanced sample (pipeline/balance.py)

    def summary(self) -> dict[str, Any]:
        out = {"tokenizer": str(self.tokenizer_dir), "vocab_size": self.vocab_size,
               "sample_documents": self.sample_documents, "sample_bytes": self.sample_bytes,
               "seconds": round(self.seconds, 2), "sha256": self.sha256, "reused": self.reused}
        if self.balance is not None:
            out["balance"] = self.balance
        return out


def reusable_tokenizer(tokenizer_dir: str | os.PathLike[str], source: str | None, *, vocab_size: int,
                       sample_bytes: int, pattern: str, seed: int, text_column: str, id_column: str,
                       superbpe_transition: int | None = None) -> TrainResult | None:
    """The tokenizer an earlier `tokshard run` trained with exactly these settings, or None: training is
    deterministic, so resuming a run need not train again."""
    if not storage.exists(storage.join(tokenizer_dir, METADATA_JSON)):
        return None
    tok = Tokenizer.load(tokenizer_dir)
    t = tok.metadata.get("training") or {}
    wanted = {"source": source or "bundled-sample", "sample_bytes_limit": sample_bytes, "seed": seed,
              "text_column": text_column, "id_column": id_column}
    if tok.vocab_size != vocab_size or tok.pattern != _final_pattern(pattern, superbpe_transition):
        return None
    if any(t.get(k) != v for k, v in wanted.items()):
        return None
    if (t.get("superbpe") or {}).get("transition") != superbpe_transition:
        return None
    if t.get("balance") is not None:  # `run` trains on the uniform sample
        return None
    return TrainResult(tokenizer_dir, tok.vocab_size, t.get("sample_documents", 0), t.get("sample_bytes", 0), 0.0,
                       tok.sha256, reused=True)


def _final_pattern(pattern: str, superbpe_transition: int | None) -> str:
    """The regex the trained tokenizer encodes with: the preset's, or with SuperBPE its stage-2 regex."""
    name, regex = resolve_pattern(pattern)
    return regex if superbpe_transition is None else superbpe.stage2_pattern(name)


def train_tokenizer(
    source: str | None,
    out: str | os.PathLike[str],
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    pattern: str = DEFAULT_PATTERN,
    seed: int = 0,
    text_column: str = sources.DEFAULT_TEXT_COLUMN,
    id_column: str = sources.DEFAULT_ID_COLUMN,
    address: str | None = None,
    workers: int | None = None,
    superbpe_transition: int | None = None,
    balance_by: str | None = None,
    balance_alpha: float = balance.DEFAULT_ALPHA,
    balance_weights: dict[str, float] | None = None,
    in_process: bool | None = None,
    show_progress: bool | None = None,
) -> TrainResult:
    """Sample `source` in parallel Ray tasks, train byte-level BPE in one task, save a tokenizer directory.
    With `superbpe_transition` T, ordinary merges stop at a T-token vocabulary (special tokens included, like
    `vocab_size`) and SuperBPE's stage 2 learns the rest (pipeline/superbpe.py). With `balance_by` COLUMN each
    group's share of the sample is drawn by temperature sampling (pipeline/balance.py); `source` may then name
    several sources joined by commas. Plain training of a small local source runs in this process
    (`runs_in_process`); balanced sampling and SuperBPE's sharded stage 2 use Ray. `show_progress`: SuperBPE's
    stage 2 reports its merges on stderr (pipeline/progress.py; default: a bar in a terminal, lines otherwise)."""

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"--vocab-size must be at least {256 + len(SPECIAL_TOKENS) + 1} "
                         f"(256 byte tokens + {len(SPECIAL_TOKENS)} special tokens + 1 merge)")
    pattern_name, regex = resolve_pattern(pattern)
    stage2 = None
    if superbpe_transition is not None:
        if not 256 + len(SPECIAL_TOKENS) < superbpe_transition < vocab_size:
            raise ValueError(f"--superbpe-transition must be between {256 + len(SPECIAL_TOKENS) + 1} and "
                             f"--vocab-size - 1 ({vocab_size - 1:,}), got {superbpe_transition:,}; the paper found "
                             "80-90% of the vocabulary best")
        stage2 = (superbpe_transition - len(SPECIAL_TOKENS), superbpe.stage2_pattern(pattern_name))
    if balance_by is not None:
        balance.check_alpha(balance_alpha)
    t0 = time.time()
    files = balance.resolve_sources(source) if balance_by is not None else sources.resolve_files(source)
    plan = sources.plan_slices(files, text_column)
    if plan.problems:
        raise sources.SourceError("cannot sample the source for training: " + "; ".join(plan.problems))
    slices = plan.slices
    total = sum(s.text_bytes_estimate for s in slices)
    fraction = min(1.0, sample_bytes / max(total, 1))
    balance_record: dict[str, Any] | None = None
    stage1_size = stage2[0] if stage2 else vocab_size - len(SPECIAL_TOKENS)
    needs_ray = balance_by is not None or stage2 is not None
    if in_process and needs_ray:
        raise ValueError("--in-process trains plain BPE only: --balance-by and --superbpe-transition use Ray")
    with ray_session(address, workers):
        if not needs_ray and runs_in_process(address, in_process, total):
            samples = (_sample_slice(s, fraction, seed, text_column, id_column) for s in slices)
            trained = _train_bpe(samples, stage1_size, regex, sample_bytes)
        else:
            import ray

            _ensure_ray(address, workers)
            if balance_by is None:
                sample_task = ray.remote(num_cpus=1, max_retries=3)(_sample_slice)
                refs = [sample_task.remote(s, fraction, seed, text_column, id_column) for s in slices]
                cap = sample_bytes
            else:
                refs, record_balance = _balanced_sample(slices, sample_bytes, seed, text_column, id_column,
                                                        balance_by, balance_alpha, balance_weights or {})
                cap = 1 << 62  # the rates size the sample; a byte cap would cut off the groups sampled last
            train_task = ray.remote(num_cpus=_largest_node_cpus(), max_retries=1)(_train_bpe_task)
            # The refs travel inside a list so Ray hands them over unresolved; the task fetches them itself.
            trained = ray.get(train_task.remote(refs, stage1_size, regex, cap))
            if stage2 and len(trained["ranks"]) == stage2[0]:  # else too little text: reported below
                _continue_superbpe(trained, refs, stage2, vocab_size - len(SPECIAL_TOKENS), show_progress)
            if balance_by is not None:
                balance_record = record_balance()
    n_docs, n_bytes = trained["documents"], trained["bytes"]
    reached = len(trained["ranks"]) + len(SPECIAL_TOKENS)
    if reached < vocab_size:
        raise ValueError(f"the training sample ({n_docs:,} documents, {n_bytes:,} bytes) has only enough distinct "
                         f"pairs for a {reached:,}-token vocabulary, not {vocab_size:,}: lower --vocab-size or "
                         "train on more text (--sample-bytes, or a larger --source)")
    if stage2 is None:
        tok = Tokenizer.from_ranks(dict(trained["ranks"]), regex, pattern_name)
    else:
        tok = Tokenizer.from_ranks(dict(trained["ranks"]), stage2[1], f"superbpe-{pattern_name}")
    seconds = time.time() - t0
    training = {"source": source or "bundled-sample", "files": len(files), "sample_documents": n_docs,
                "sample_bytes": n_bytes, "sample_bytes_limit": sample_bytes, "max_doc_chars": MAX_SAMPLE_DOC_CHARS,
                "seed": seed, "text_column": text_column, "id_column": id_column, "trainer": "rustbpe",
                "seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if balance_record is not None:
        training["balance"] = balance_record
    if stage2 is not None:
        training["trainer"] = "rustbpe + superbpe stage 2"
        training["superbpe"] = {"transition": superbpe_transition, "stage1_pattern": regex,
                                "stage2_pattern": stage2[1], **trained["superbpe"]}
    out_dir = tok.save(out, training=training)
    return TrainResult(out_dir, tok.vocab_size, n_docs, n_bytes, seconds, tok.sha256, balance=balance_record)


def _continue_superbpe(trained: dict[str, Any], refs: list[Any], stage2: tuple[int, str], n_tokens: int,
                       show_progress: bool | None) -> None:
    """SuperBPE's stage 2 on the documents stage 1 used, its pieces sharded over one Ray actor per CPU
    (pipeline/superbpe.py); replaces `trained`'s ranks and adds its record."""
    import ray

    ranks, stats = superbpe.train_stage2_ray(refs, trained["used_per_ref"], dict(trained["ranks"]), stage2[1],
                                             n_tokens, shards=int(ray.cluster_resources().get("CPU", 1)),
                                             show_progress=show_progress)
    trained["ranks"] = list(ranks.items())
    trained["superbpe"] = {"stage1_merges": stage2[0] - 256, "stage1_seconds": round(trained["seconds"], 3), **stats}


def _balanced_sample(slices: list[sources.Slice], sample_bytes: int, seed: int, text_column: str, id_column: str,
                     balance_by: str, alpha: float, weights: dict[str, float]
                     ) -> tuple[list[Any], Callable[[], dict[str, Any]]]:
    """Measure the groups, then submit the balanced draws (pipeline/balance.py): the texts' refs, and a function
    that returns the balance record once the draws are done."""
    import ray

    balance.check_column(sorted({s.path for s in slices}), balance_by)
    measure = ray.remote(num_cpus=1, max_retries=3)(balance.measure_slice)
    sizes = balance.merge_counts(ray.get([measure.remote(s, text_column, balance_by, MAX_SAMPLE_DOC_CHARS)
                                          for s in slices]))
    shares = balance.target_shares(sizes, alpha, weights)
    rates = balance.sampling_rates(sizes, shares, sample_bytes)
    draw = ray.remote(num_cpus=1, max_retries=3, num_returns=2)(balance.sample_slice)
    pairs = [draw.remote(s, rates, seed, text_column, id_column, balance_by, MAX_SAMPLE_DOC_CHARS) for s in slices]
    return [texts for texts, _ in pairs], lambda: balance.record(
        balance_by, alpha, weights, sizes, shares, rates, balance.merge_counts(ray.get([d for _, d in pairs])))


# -- encoding ---------------------------------------------------------------------------------------------
class _SplitBuffer:
    """The encoded rows of one split of one slice. Ids are copied into one array as batches are encoded and the
    shard is written from it as is, so a slice's ids are never held twice (per-batch arrays and their concatenation).
    The array starts at an estimate and doubles if that is exceeded; pages never written take no memory."""

    def __init__(self, capacity: int, dtype: np.dtype) -> None:
        self.ids: list[str] = []
        self.tokens = np.empty(max(capacity, 1), dtype=dtype)
        self.size = 0
        self.lengths: list[np.ndarray] = []
        self.text_bytes = 0

    def add(self, ids: list[str], flat: np.ndarray, offsets: np.ndarray, keep: np.ndarray, text_bytes: int) -> None:
        """Append the rows of a batch (`flat` ids, `offsets` row boundaries) where `keep` is set, copied run by
        run: the validation split is ~1% of the rows, so both splits are a few long runs (cheaper than a mask)."""
        edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.view(np.int8), [0]))))
        runs = list(zip(offsets[edges[::2]].tolist(), offsets[edges[1::2]].tolist(), strict=True))
        need = self.size + sum(b - a for a, b in runs)
        if need > len(self.tokens):
            grown = np.empty(max(need, 2 * len(self.tokens)), dtype=self.tokens.dtype)
            grown[: self.size] = self.tokens[: self.size]
            self.tokens = grown
        for a, b in runs:
            self.tokens[self.size : self.size + b - a] = flat[a:b]
            self.size += b - a
        self.ids.extend(d for d, k in zip(ids, keep.tolist(), strict=True) if k)
        self.lengths.append(np.diff(offsets)[keep])
        self.text_bytes += text_bytes


class SliceDone(NamedTuple):
    """The last item of an `encode_slice` task: its shards' records, and whether they were kept from an earlier
    run."""

    records: list[dict[str, Any]]
    kept: bool


def _rows_done(records: list[dict[str, Any]]) -> RowsDone:
    """A kept slice's counts for the progress display, from its shard records."""
    return RowsDone(*(sum(r[k] for r in records) for k in ("documents", "tokens", "text_bytes")))


def encode_slice(
    slice_: sources.Slice,
    tokenizer_dir: str,
    tokenizer_sha256: str,
    out_dir: str,
    val_fraction: float,
    text_column: str,
    id_column: str,
    parallel: bool = False,
) -> Iterator[RowsDone | SliceDone]:
    """Encode one slice into `train/` and `val/` shards named after the slice, or keep those of an earlier run
    (its sidecar matches this slice and every shard verifies). Runs as a Ray streaming generator (or a plain
    generator in this process): yields a `RowsDone` per row group (the driver's live progress), then one
    `SliceDone`. `parallel`: the engine may use its thread pool (the in-process run; a Ray task has one CPU).

    Both paths yield exactly one item per row group before the result: Ray numbers a generator's items and, when
    it retries the task after its worker died, drops the items it already has by number. A retry that finds the
    slice done (the first attempt died between writing it and reporting it) must not yield fewer, or its
    `SliceDone` would be dropped."""
    t0 = time.time()
    out = out_dir  # a local directory or a URL (pipeline/storage.py)
    info = asdict(slice_)
    done = read_slice_records(out, slice_.name)
    if done is not None and done["slice"] == info and not verify_shards(out, done["shards"]):
        yield _rows_done(done["shards"])
        for _ in range(slice_.rg_start + 1, slice_.rg_end):
            yield RowsDone(0, 0, 0)
        yield SliceDone(done["shards"], True)
        return
    tok = load_cached(tokenizer_dir, tokenizer_sha256)
    # At most one id per text byte plus <|bos|> per row; real text averages 3-4 bytes per id, so half the bytes
    # is ample (the buffer grows if not) and the validation split gets twice its expected share.
    capacity = slice_.text_bytes_estimate // 2 + slice_.row_end - slice_.row_start
    buffers = {"train": _SplitBuffer(capacity, tok.dtype),
               "val": _SplitBuffer(int(capacity * min(1.0, 2 * val_fraction)) + 1024, tok.dtype)}
    for batch in sources.iter_batches(slice_, text_column, id_column):
        try:
            flat, offsets = tok.encode_to_array(batch.texts, bos=True, parallel=parallel)
        except UnencodableError as e:
            raise sources.SourceError(f"{slice_.path}: row {batch.first_row + e.index}: {e.reason}") from None
        doc_bytes = np.diff(batch.utf8[1])
        is_val = sources.validation_mask(batch.ids, val_fraction)
        for split, rows in (("train", ~is_val), ("val", is_val)):
            if rows.any():
                buffers[split].add(batch.ids, flat, offsets, rows, int(doc_bytes[rows].sum()))
        yield RowsDone(len(batch.texts), len(flat), int(doc_bytes.sum()))
    records = [_write_split(out, slice_, split, buf, tok, tokenizer_sha256, t0)
               for split, buf in buffers.items() if buf.ids]
    write_slice_records(out, slice_.name, info, records)
    yield SliceDone(records, False)


def _write_split(out: str, slice_: sources.Slice, split: str, buf: _SplitBuffer, tok: Tokenizer,
                 tokenizer_sha256: str, t0: float) -> dict[str, Any]:
    """Write one split's shard of a slice; its manifest record."""
    lengths = np.concatenate(buf.lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rel = storage.attempt_name(out, f"{split}/shard-{slice_.name}{SUFFIX}")  # per attempt on a store
    written = write_shard(storage.join(out, rel), buf.ids, buf.tokens[: buf.size], offsets,
                          tokenizer_sha256=tokenizer_sha256,
                          bos_id=tok.bos_id)
    seconds = time.time() - t0
    return ShardRecord(
        path=rel, split=split, source=slice_.path, slice=slice_.name, row_groups=[slice_.rg_start, slice_.rg_end],
        rows=[slice_.row_start, slice_.row_end], documents=written.documents, tokens=written.tokens,
        text_bytes=buf.text_bytes, size=written.size, sha256=written.sha256, seconds=round(seconds, 3),
        tokens_per_s=round(written.tokens / max(seconds, 1e-9)), worker=_worker_name(), stored=written.stored,
    ).to_dict()


@dataclass
class EncodeResult:
    manifest: Manifest
    out_dir: str  # a local path or a URL
    seconds: float
    errors: list[str]
    slices_encoded: int = 0
    slices_kept: int = 0
    executor: str = "ray"  # "ray" or "in-process"

    @property
    def complete(self) -> bool:
        return not self.errors

    def summary(self) -> dict[str, Any]:
        totals = self.manifest.totals()
        allt = totals["all"]
        return {"out": str(self.out_dir), "complete": self.complete, "errors": self.errors,
                "documents": allt["documents"], "tokens": allt["tokens"], "text_bytes": allt["text_bytes"],
                "bytes_per_token": allt["bytes_per_token"], "shards": len(self.manifest.shards),
                "seconds": round(self.seconds, 2), "tokens_per_s": round(allt["tokens"] / max(self.seconds, 1e-9)),
                "slices_encoded": self.slices_encoded, "slices_kept": self.slices_kept,
                "engine": self.manifest.tokenizer.get("engine"), "executor": self.executor,
                "splits": {k: v for k, v in totals.items() if k != "all"}}


@dataclass
class _SliceOutcome:
    """What the driver collected from the slices' tasks."""

    records: list[dict[str, Any]]
    errors: list[str]
    kept: int = 0
    failed: int = 0

    def take(self, slice_: sources.Slice, item: RowsDone | SliceDone | None, progress: Progress) -> bool:
        """Account one item of a slice's task; True when the task is over (its result or its end)."""
        if isinstance(item, RowsDone):
            progress.add(item)
            return False
        if isinstance(item, SliceDone):
            self.records.extend(item.records)
            self.kept += item.kept
        else:
            self.fail(f"{slice_.path} (row groups {slice_.rg_start}-{slice_.rg_end - 1}): the task ended without "
                      "its result; run the same command again to finish this slice")
        return True

    def fail(self, message: str) -> None:
        self.errors.append(message)
        self.failed += 1


def encode(
    source: str | None,
    tokenizer_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    text_column: str = sources.DEFAULT_TEXT_COLUMN,
    id_column: str = sources.DEFAULT_ID_COLUMN,
    slice_bytes: int = sources.DEFAULT_SLICE_BYTES,
    address: str | None = None,
    show_progress: bool | None = None,
    limit_docs: int | None = None,
    limit_files: int | None = None,
    in_process: bool | None = None,
) -> EncodeResult:
    """Encode every document of `source` into shards under `out`, one task per slice: Ray tasks, or in this
    process for a small local run (`runs_in_process`); the shards and manifest are the same either way.

    Re-running into the same `out` keeps every slice whose shards verify and encodes only the rest; `out` made by
    another run (tokenizer, files, columns, split or slicing) is refused before anything is touched."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    for name, limit in (("--limit-docs", limit_docs), ("--limit-files", limit_files)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be at least 1, got {limit}")
    t0 = time.time()
    out_dir = storage.display(out)
    storage.check_writable(out_dir)  # a bad endpoint, bucket or credentials fails here, before any task
    tok = load_cached(str(tokenizer_dir), "")  # the in-process path's tasks find it there: loaded once
    files = sources.resolve_files(source)[:limit_files]
    plan = sources.plan_slices(files, text_column, slice_bytes, limit_docs)
    claim_out_dir(out_dir, {"tokenizer_sha256": tok.sha256, "files": files, "text_column": text_column,
                            "id_column": id_column, "val_fraction": val_fraction, "slice_bytes": slice_bytes,
                            "limit_docs": limit_docs})
    # Slices an earlier run committed and that still verify are kept here, without a task each (and a changed
    # source file is refused before anything is written).
    done = committed_slices(out_dir, {s.name: asdict(s) for s in plan.slices})
    local_tok = storage.join(out_dir, "tokenizer")
    if storage.display(tokenizer_dir) != local_tok:
        copy_tokenizer(tokenizer_dir, local_tok)
    for split in ("train", "val"):
        storage.makedirs(storage.join(out_dir, split))
        if not storage.is_url(out_dir):
            atomic.remove_stale_temporaries(Path(out_dir) / split)

    task_args = (local_tok, tok.sha256, out_dir, val_fraction, text_column, id_column)
    outcome = _SliceOutcome(records=[r for recs in done.values() for r in recs], errors=list(plan.problems),
                            kept=len(done))
    progress = Progress(total_bytes=sum(s.text_bytes_estimate for s in plan.slices), show=show_progress)
    for recs in done.values():  # the slices kept above count as done from the start
        progress.add(_rows_done(recs))
    todo = [s for s in plan.slices if s.name not in done]
    local = runs_in_process(address, in_process, sum(s.text_bytes_estimate for s in todo))
    try:
        # Nothing left to do (a finished run resumed): no Ray instance to start or join.
        with ray_session(address, workers) if todo else contextlib.nullcontext():
            if local:
                _run_slices_here(todo, task_args, workers, outcome, progress)
            elif todo:
                _ensure_ray(address, workers)
                _run_slices_on_ray(todo, task_args, workers, outcome, progress)
    finally:
        progress.close()
    if storage.is_url(out_dir):  # what attempts on lost workers left behind
        remove_uncommitted(out_dir, outcome.records)
    else:
        for split in ("train", "val"):
            atomic.remove_stale_temporaries(Path(out_dir) / split)

    records = sorted(outcome.records, key=lambda r: (r["split"], r["path"]))
    manifest = Manifest.create(tok, source or "bundled-sample", files, val_fraction, records, outcome.errors)
    manifest.write(out_dir)
    return EncodeResult(manifest, out_dir, time.time() - t0, outcome.errors,
                        len(plan.slices) - outcome.kept - outcome.failed, outcome.kept,
                        "in-process" if local else "ray")


def _run_slices_here(slices: list[sources.Slice], task_args: tuple[Any, ...], workers: int | None,
                     outcome: _SliceOutcome, progress: Progress) -> None:
    """Every slice in this process, one after another: the same `encode_slice` as a Ray task runs, so the same
    shards. The engines' Rust thread pools (RAYON_NUM_THREADS, set here to --workers unless the user set it)
    spread each batch over the cores instead of Ray's tasks."""
    os.environ.setdefault("RAYON_NUM_THREADS", str(workers or os.cpu_count() or 1))
    for slice_ in slices:
        try:
            for item in encode_slice(slice_, *task_args, parallel=True):
                outcome.take(slice_, item, progress)
        except Exception as e:
            outcome.fail(_task_error(slice_, e))
        progress.update()


def _run_slices_on_ray(slices: list[sources.Slice], task_args: tuple[Any, ...], workers: int | None,
                       outcome: _SliceOutcome, progress: Progress) -> None:
    """The driver loop: keep tasks submitted up to the cluster's CPUs, take their progress items and results as
    they arrive. A streaming generator per slice (see encode_slice): progress needs no actor."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)(encode_slice)
    pending = list(reversed(slices))
    in_flight: dict[Any, sources.Slice] = {}  # ObjectRefGenerator -> its slice
    cluster_cpus, polled = 1, 0.0
    while pending or in_flight:
        # Re-read now and then: nodes that join mid-run (autoscaling, `--scale ray-worker=N`) get tasks too. Not
        # every round: a round is one progress report, hundreds a second on a large cluster, and this is a call to
        # Ray's control store.
        if time.monotonic() - polled >= CLUSTER_POLL_S:
            cluster_cpus, polled = int(ray.cluster_resources().get("CPU", 1)), time.monotonic()
        while pending and len(in_flight) < _max_in_flight(workers, cluster_cpus):
            slice_ = pending.pop()
            in_flight[task.remote(slice_, *task_args)] = slice_
        ready, rest = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
        if ready and rest:  # and every other task with a report waiting, in the same round
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for gen in ready:  # each has its next item ready (or has ended): take one
            slice_ = in_flight[gen]
            try:
                item = ray.get(next(gen))
            except StopIteration:
                item = None
            except Exception as e:
                del in_flight[gen]
                outcome.fail(_task_error(slice_, e))
                continue
            if outcome.take(slice_, item, progress):
                del in_flight[gen]
        progress.update()


def _max_in_flight(workers: int | None, cluster_cpus: int) -> int:
    """Tasks to keep submitted. Where Ray's CPU count already caps concurrency at --workers, submit twice as
    many: Ray queues the extra ones, so a worker that finishes a slice starts the next at once instead of
    waiting for the driver to notice and submit. On a bigger cluster, --workers itself is the cap."""
    if workers is None or cluster_cpus <= workers:
        return 2 * max(1, min(workers or cluster_cpus, cluster_cpus))
    return workers


def _task_error(slice_: sources.Slice, exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    return f"{slice_.path} (row groups {slice_.rg_start}-{slice_.rg_end - 1}): {msg}"
