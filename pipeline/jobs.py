"""The Ray jobs: draw a sample and train the tokenizer; encode every slice of the corpus into shards.

The driver plans, submits and records; the work runs in Ray tasks, so the same code runs on a laptop (a local
Ray instance started and stopped here) and on a cluster (`--address`). Tasks return their stats to the driver,
which writes the manifest last: a manifest on disk describes complete, fsynced shards only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tokshard.pipeline import atomic, balance, hf_folder, sources, storage, superbpe
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
    load_cached,
    resolve_pattern,
)

DEFAULT_SAMPLE_BYTES = 200_000_000
MAX_SAMPLE_DOC_CHARS = 10_000  # long documents are capped so one of them cannot dominate the merge counts
DEFAULT_VAL_FRACTION = 0.01
CLUSTER_POLL_S = 1.0  # how often the encode driver re-reads the cluster's CPU count


# -- Ray session ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(address: str | None = None, workers: int | None = None) -> Iterator[None]:
    """Join `address` or start a local Ray instance (stopped on exit); reuse one that is already initialised.

    Ray 2.60 enables token authentication by itself after a local start; we set RAY_AUTH_MODE explicitly
    ("disabled" for the private local instance unless the user chose otherwise) so behaviour never depends
    on what an earlier `ray.init()` left behind.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    # riptoken's batch encoder uses rayon's global pool: one thread per task, Ray does the parallelism.
    runtime_env = {"env_vars": {"RAYON_NUM_THREADS": "1"}}
    address = address or os.environ.get("RAY_ADDRESS")  # set for the entrypoint of `ray job submit`
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=True, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def _largest_node_cpus() -> int:
    import ray

    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(cpus, default=1)))


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- tokenizer training -----------------------------------------------------------------------------------
def _sample_slice(piece: sources.Slice, fraction: float, seed: int, text_column: str, id_column: str) -> list[str]:
    out: list[str] = []
    for batch in sources.iter_batches(piece, text_column, id_column):
        for doc_id, text in zip(batch.ids, batch.texts, strict=True):
            if fraction >= 1 or sources.id_fraction(doc_id, f"tokshard-sample-{seed}:") < fraction:
                out.append(text[:MAX_SAMPLE_DOC_CHARS])
    return out


def _train_bpe(samples: list[Any], vocab_size: int, pattern: str, sample_bytes: int) -> dict[str, Any]:
    """Runs as one Ray task: rustbpe counts pre-split pieces on all the node's cores, then merges. Returns the
    ranks, and how many documents of each sample ref it used (SuperBPE's stage 2 trains on the same ones)."""
    import ray
    import rustbpe

    texts: list[str] = []
    used = 0
    used_per_ref: list[int] = []
    for ref in samples:  # refs in plan order, so the capped sample is the same on every run
        before = len(texts)
        for text in ray.get(ref):
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
                       sample_bytes: int, pattern: str,
                       seed: int, text_column: str, id_column: str,
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
) -> TrainResult:
    """Sample `source` in parallel Ray tasks, train byte-level BPE in one task, save a tokenizer directory.
    With `superbpe_transition` T, ordinary merges stop at a T-token vocabulary (special tokens included, like
    `vocab_size`) and SuperBPE's stage 2 learns the rest (pipeline/superbpe.py). With `balance_by` COLUMN each
    group's share of the sample is drawn by temperature sampling (pipeline/balance.py); `source` may then name
    several sources joined by commas."""
    import ray

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
    with ray_session(address, workers):
        if balance_by is None:
            sample_task = ray.remote(num_cpus=1, max_retries=3)(_sample_slice)
            refs = [sample_task.remote(s, fraction, seed, text_column, id_column) for s in slices]
            cap = sample_bytes
        else:
            refs, record_balance = _balanced_sample(slices, sample_bytes, seed, text_column, id_column,
                                                    balance_by, balance_alpha, balance_weights or {})
            cap = 1 << 62  # the rates size the sample; a byte cap would cut off the groups sampled last
        train_task = ray.remote(num_cpus=_largest_node_cpus(), max_retries=1)(_train_bpe)
        # The refs travel inside a list so Ray hands them over unresolved; the task fetches them itself.
        stage1_size = stage2[0] if stage2 else vocab_size - len(SPECIAL_TOKENS)
        trained = ray.get(train_task.remote(refs, stage1_size, regex, cap))
        if stage2 and len(trained["ranks"]) == stage2[0]:  # else too little text: reported below
            _continue_superbpe(trained, refs, stage2, vocab_size - len(SPECIAL_TOKENS))
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


def _continue_superbpe(trained: dict[str, Any], refs: list[Any], stage2: tuple[int, str], n_tokens: int) -> None:
    """SuperBPE's stage 2 on the documents stage 1 used, its pieces sharded over one Ray actor per CPU
    (pipeline/superbpe.py); replaces `trained`'s ranks and adds its record."""
    import ray

    ranks, stats = superbpe.train_stage2_ray(refs, trained["used_per_ref"], dict(trained["ranks"]), stage2[1],
                                             n_tokens, shards=int(ray.cluster_resources().get("CPU", 1)))
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
    shard is written from it as is, so a slice's ids are never held twice (pieces and their concatenation).
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


def encode_slice(
    piece: sources.Slice,
    tokenizer_dir: str,
    tokenizer_sha256: str,
    out_dir: str,
    val_fraction: float,
    text_column: str,
    id_column: str,
) -> Iterator[RowsDone | SliceDone]:
    """Encode one slice into `train/` and `val/` shards named after the slice, or keep those of an earlier run
    (its sidecar matches this slice and every shard verifies). Runs as a Ray streaming generator: yields a
    `RowsDone` per row group (the driver's live progress), then one `SliceDone`.

    Both paths yield exactly one item per row group before the result: Ray numbers a generator's items and, when
    it retries the task after its worker died, drops the items it already has by number. A retry that finds the
    slice done (the first attempt died between writing it and reporting it) must not yield fewer, or its
    `SliceDone` would be dropped."""
    t0 = time.time()
    out = out_dir
    info = asdict(piece)
    done = read_slice_records(out, piece.name)
    if done is not None and done["slice"] == info and not verify_shards(out, done["shards"]):
        yield RowsDone(*(sum(r[k] for r in done["shards"]) for k in ("documents", "tokens", "text_bytes")))
        for _ in range(piece.rg_start + 1, piece.rg_end):
            yield RowsDone(0, 0, 0)
        yield SliceDone(done["shards"], True)
        return
    tok = load_cached(tokenizer_dir, tokenizer_sha256)
    # At most one id per text byte plus <|bos|> per row; real text averages 3-4 bytes per id, so half the bytes
    # is ample (the buffer grows if not) and the validation split gets twice its expected share.
    capacity = piece.text_bytes_estimate // 2 + piece.row_end - piece.row_start
    buffers = {"train": _SplitBuffer(capacity, tok.dtype),
               "val": _SplitBuffer(int(capacity * min(1.0, 2 * val_fraction)) + 1024, tok.dtype)}
    for batch in sources.iter_batches(piece, text_column, id_column):
        try:
            flat, offsets = tok.encode_to_array(batch.texts, bos=True, utf8=batch.utf8)
        except UnencodableError as e:
            raise sources.SourceError(f"{piece.path}: row {batch.first_row + e.index}: {e.reason}") from None
        doc_bytes = np.diff(batch.utf8[1])
        is_val = sources.validation_mask(batch.ids, val_fraction)
        for split, rows in (("train", ~is_val), ("val", is_val)):
            if rows.any():
                buffers[split].add(batch.ids, flat, offsets, rows, int(doc_bytes[rows].sum()))
        yield RowsDone(len(batch.texts), len(flat), int(doc_bytes.sum()))
    records = []
    for split, buf in buffers.items():
        if not buf.ids:
            continue
        lengths = np.concatenate(buf.lengths)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rel = storage.attempt_name(out_dir, f"{split}/shard-{piece.name}{SUFFIX}")  # per attempt on a store
        written = write_shard(storage.join(out_dir, rel), buf.ids, buf.tokens[: buf.size], offsets,
                              tokenizer_sha256=tokenizer_sha256, bos_id=tok.bos_id)
        seconds = time.time() - t0
        records.append(ShardRecord(
            path=rel, split=split, source=piece.path, slice=piece.name, row_groups=[piece.rg_start, piece.rg_end],
            rows=[piece.row_start, piece.row_end], documents=written.documents, tokens=written.tokens,
            text_bytes=buf.text_bytes, size=written.size, sha256=written.sha256, seconds=round(seconds, 3),
            tokens_per_s=round(written.tokens / max(seconds, 1e-9)), worker=_worker_name(), stored=written.stored,
        ).to_dict())
    write_slice_records(out, piece.name, info, records)
    yield SliceDone(records, False)


@dataclass
class EncodeResult:
    manifest: Manifest
    out_dir: str  # a local path or a URL
    seconds: float
    errors: list[str]
    slices_encoded: int = 0
    slices_kept: int = 0

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
                "splits": {k: v for k, v in totals.items() if k != "all"}}


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
) -> EncodeResult:
    """Encode every document of `source` into shards under `out`, one Ray task per slice.

    Re-running into the same `out` keeps every slice whose shards verify and encodes only the rest; `out` made by
    another run (tokenizer, files, columns, split or slicing) is refused before anything is touched."""
    import ray

    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    for name, limit in (("--limit-docs", limit_docs), ("--limit-files", limit_files)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be at least 1, got {limit}")
    t0 = time.time()
    out_dir = storage.display(out)
    storage.check_writable(out_dir)  # a bad endpoint, bucket or credentials fails here, before any task
    tok = Tokenizer.load(tokenizer_dir)
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

    records: list[dict[str, Any]] = []
    errors: list[str] = list(plan.problems)
    for recs in done.values():
        records.extend(recs)
    kept, failed = len(done), 0
    # Nothing left to do (a finished run resumed): no Ray instance to start or join.
    session = ray_session(address, workers) if len(done) < len(plan.slices) else contextlib.nullcontext()
    with session:
        # A streaming generator (see encode_slice): progress arrives with the results, no actor needed.
        task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)(encode_slice)
        progress = Progress(total_bytes=sum(s.text_bytes_estimate for s in plan.slices), show=show_progress)
        for recs in done.values():  # the slices kept above count as done from the start
            progress.add(RowsDone(*(sum(r[k] for r in recs) for k in ("documents", "tokens", "text_bytes"))))
        pending = [s for s in reversed(plan.slices) if s.name not in done]
        in_flight: dict[Any, sources.Slice] = {}  # ObjectRefGenerator -> its slice
        cluster_cpus, polled = 1, 0.0
        try:
            while pending or in_flight:
                # Re-read now and then: nodes that join mid-run (autoscaling, `--scale ray-worker=N`) get tasks
                # too. Not every round: a round is one progress report, hundreds a second on a large cluster,
                # and this is a call to Ray's control store.
                if time.monotonic() - polled >= CLUSTER_POLL_S:
                    cluster_cpus, polled = int(ray.cluster_resources().get("CPU", 1)), time.monotonic()
                while pending and len(in_flight) < _max_in_flight(workers, cluster_cpus):
                    s = pending.pop()
                    gen = task.remote(s, str(local_tok), tok.sha256, str(out_dir), val_fraction, text_column,
                                      id_column)
                    in_flight[gen] = s
                ready, rest = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                if ready and rest:  # and every other task with a report waiting, in the same round
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                for gen in ready:  # each has its next item ready (or has ended): take one
                    s = in_flight[gen]
                    try:
                        item = ray.get(next(gen))
                    except StopIteration:
                        item = None
                    except Exception as e:
                        del in_flight[gen]
                        errors.append(_task_error(s, e))
                        failed += 1
                        continue
                    if isinstance(item, RowsDone):
                        progress.add(item)
                        continue
                    del in_flight[gen]
                    if not isinstance(item, SliceDone):
                        errors.append(f"{s.path} (row groups {s.rg_start}-{s.rg_end - 1}): the task ended without "
                                      "its result; run the same command again to finish this slice")
                        failed += 1
                        continue
                    records.extend(item.records)
                    kept += item.kept
                progress.update()
        finally:
            progress.close()
    if storage.is_url(out_dir):  # what attempts on lost workers left behind
        remove_uncommitted(out_dir, records)
    else:
        for split in ("train", "val"):
            atomic.remove_stale_temporaries(Path(out_dir) / split)

    records.sort(key=lambda r: (r["split"], r["path"]))
    manifest = Manifest.create(tok, source or "bundled-sample", files, val_fraction, records, errors)
    manifest.write(out_dir)
    return EncodeResult(manifest, out_dir, time.time() - t0, errors, len(plan.slices) - kept - failed, kept)


def _max_in_flight(workers: int | None, cluster_cpus: int) -> int:
    """Tasks to keep submitted. Where Ray's CPU count already caps concurrency at --workers, submit twice as
    many: Ray queues the extra ones, so a worker that finishes a slice starts the next at once instead of
    waiting for the driver to notice and submit. On a bigger cluster, --workers itself is the cap."""
    if workers is None or cluster_cpus <= workers:
        return 2 * max(1, min(workers or cluster_cpus, cluster_cpus))
    return workers


def copy_tokenizer(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy a tokenizer directory (local or URL) file by file (atomically each), so OUT/tokenizer is
    byte-identical to SRC."""
    from tokshard.pipeline.tokenizer import METADATA_JSON, TOKEN_BYTES_NPY, TOKENIZER_JSON

    for name in (TOKENIZER_JSON, TOKEN_BYTES_NPY, *hf_folder.FILES, METADATA_JSON):
        if storage.exists(storage.join(src, name)):
            storage.write_bytes(storage.join(dest, name), storage.read_bytes(storage.join(src, name)))


def _task_error(piece: sources.Slice, exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    return f"{piece.path} (row groups {piece.rg_start}-{piece.rg_end - 1}): {msg}"

