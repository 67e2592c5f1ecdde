"""The training loop: shards in, a GPT, validation bits-per-byte, checkpoints and logs out.

A run directory (RUNDIR) holds everything about one run:

    config.json      the resolved training config, model config, data dir and tokenizer sha256
    tokenizer/       a copy of the data's tokenizer (so `tokshard sample` and the service find it)
    checkpoint.pt    the latest full training state (what --resume reads), written atomically
    model.pt         the latest inference export (weights + config + tokenizer sha256)
    log.jsonl        one JSON object per training step ("train"), evaluation ("val") and checkpoint ("ckpt")
    loss.png         train loss and validation BPB against the step

Resuming is exact: the data order is a function of (seed, windows consumed), the LR schedule of the step, and
nothing else in a step is random, so a resumed run replays the same batches through the same optimiser state.
Under `torchrun` each process is one rank of a DistributedDataParallel run (gloo on CPU, NCCL on CUDA); rank 0
evaluates its share, writes the logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from tokshard.data import IGNORE_INDEX, SHUFFLE_BLOCK, PackedRows, open_plan
from tokshard.pipeline import atomic, storage
from tokshard.trainer import checkpoint, optim
from tokshard.trainer.bpb import Score, score_windows
from tokshard.trainer.data import BatchLoader, Dataset, WindowStream, open_dataset, val_windows, window_batches
from tokshard.trainer.defaults import DEFAULTS, PACKINGS, PRESET_DEFAULTS
from tokshard.trainer.model import GPT, GPTConfig


@dataclass
class TrainConfig:
    """What to train. None means "not given": a new run takes the preset's or the global default, a resumed run
    the value it was started with (only the fields in RESUMABLE may then change)."""

    data: str | None = None
    out: str | None = None
    preset: str | None = None
    steps: int | None = None
    batch_size: int | None = None  # windows per micro-step per rank
    grad_accum: int | None = None
    seq_len: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    matrix_lr: float | None = None
    embed_lr: float | None = None
    head_lr: float | None = None
    scalar_lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    cooldown_frac: float | None = None
    clip: float | None = None
    seed: int | None = None
    muon: str | None = None
    eval_every: int | None = None
    eval_tokens: int | None = None
    ckpt_every: int | None = None
    log_every: int | None = None
    device: str | None = None
    compile: bool | None = None
    stop_at: int | None = None  # stop (with a checkpoint) after this step without finishing the schedule
    name: str | None = None
    prefetch: int | None = None
    peak_flops: float | None = None
    packing: str | None = None  # "best-fit": packed rows, attention masked per document; "windows": fixed windows


RESUMABLE = {"data", "out", "steps", "stop_at", "device", "compile", "eval_every", "eval_tokens", "ckpt_every",
             "log_every", "prefetch", "peak_flops"}
CONFIG_JSON, CHECKPOINT, MODEL, LOG, PLOT, TOKENIZER = (
    "config.json", "checkpoint.pt", "model.pt", "log.jsonl", "loss.png", "tokenizer")


def resolve(cfg: TrainConfig, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """Concrete settings: given values over (stored | preset | global) defaults."""
    given = {k: v for k, v in asdict(cfg).items() if v is not None}
    if stored is not None:
        changed = {k: (stored.get(k), v) for k, v in given.items() if k not in RESUMABLE and stored.get(k) != v}
        if changed:
            what = ", ".join(f"{k} (run: {a!r}, given: {b!r})" for k, (a, b) in sorted(changed.items()))
            raise ValueError(f"--resume continues the run as it was started; these settings differ: {what}. "
                             "Drop them, or start a new run with another --out")
        out = {**stored, "stop_at": None, **given}  # a stop applies to the invocation that asked for it
    else:
        preset = given.get("preset", DEFAULTS["preset"])
        if preset not in PRESET_DEFAULTS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_DEFAULTS)}")
        out = {f.name: None for f in fields(TrainConfig)}
        out.update({**DEFAULTS, **PRESET_DEFAULTS[preset], **given})
        out["ckpt_every"] = out["ckpt_every"] if out["ckpt_every"] is not None else out["eval_every"]
        if out["warmup_steps"] is None:  # the seed blog's 200, but at most a tenth of a short run
            out["warmup_steps"] = min(200, out["steps"] // 10)
    if out["data"] is not None and not storage.is_url(out["data"]):
        out["data"] = str(Path(out["data"]).resolve())  # absolute, so a resume from elsewhere finds the shards
    for k in ("steps", "batch_size", "grad_accum", "eval_every", "log_every", "eval_tokens"):
        if not isinstance(out[k], int) or out[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be a positive integer, got {out[k]!r}")
    if out["packing"] not in PACKINGS:
        raise ValueError(f"--packing must be one of {', '.join(PACKINGS)}, got {out['packing']!r}")
    if not 0 <= out["cooldown_frac"] <= 1:
        raise ValueError(f"--cooldown-frac must be in [0, 1], got {out['cooldown_frac']}")
    return out


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to this torch (is it the CPU build?)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {name!r}")
    return name


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[Dist, str]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process per GPU (or per CPU slot with gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    ranks = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        device = f"cuda:{ranks.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return ranks, device


class RunLog:
    """log.jsonl, appended line by line and flushed, so a crash loses at most the line being written."""

    def __init__(self, path: Path, keep_until: int | None) -> None:
        self.path = path
        if keep_until is None:
            atomic.write_bytes(path, b"")
        else:  # a resumed run replays the steps after its checkpoint: drop their old records
            kept = [line for line in _read_lines(path) if json.loads(line)["step"] <= keep_until]
            atomic.write_bytes(path, "".join(line + "\n" for line in kept).encode())
        self._f = open(path, "a")  # noqa: SIM115 - held open for the whole run

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def evaluate(model: torch.nn.Module, windows: np.ndarray, lengths: np.ndarray, token_bytes: np.ndarray, device: str,
             batch_size: int, ranks: Dist, bos_id: int | None = None) -> Score:
    """Validation BPB on this rank's share of the fixed windows, summed over ranks; with `bos_id` attention is
    masked per document, as in training on packed rows."""
    was_training = model.training
    model.eval()
    s = score_windows(model, windows[ranks.rank :: ranks.world], token_bytes, device=device, batch_size=batch_size,
                      lengths=lengths[ranks.rank :: ranks.world], bos_id=bos_id)
    model.train(was_training)
    if ranks.world > 1:
        t = torch.tensor([s.nats, s.bytes, s.tokens], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        s = Score(float(t[0]), int(t[1]), int(t[2]))
    return s


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to stop at the next step boundary and checkpoint, never mid-step."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, no graceful stop
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:  # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _agree(local: bool, ranks: Dist, device: str) -> bool:
    if ranks.world == 1:
        return local
    t = torch.tensor([float(local)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@dataclass
class Run:
    """A training run between steps: its settings, model, optimisers, data and log."""

    settings: dict[str, Any]
    out: Path
    ranks: Dist
    device: str
    model: GPT
    train_model: torch.nn.Module  # the model, or its DDP wrapper
    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    optimizers: list[torch.optim.Optimizer]
    dataset: Dataset
    loader: BatchLoader
    val_windows: np.ndarray
    val_lengths: np.ndarray
    log: RunLog | None  # rank 0 only
    say: Callable[[str], None]
    start_step: int
    tokens_per_step: int

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def masked(self) -> bool:
        """Attention masked per document (packed rows): validation is then masked the same way."""
        return self.settings["packing"] != "windows"

    def close(self) -> None:
        self.loader.close()
        if self.log is not None:
            self.log.close()
        self.dataset.close()
        if self.ranks.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    seconds: float
    data_seconds: float  # waiting for the loader and copying to the device


def _load_state(cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (or None), refusing what would overwrite or misread a run."""
    if cfg.out is None:
        raise ValueError("--out RUNDIR is required")
    ckpt_path = Path(cfg.out) / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: {ckpt_path} does not exist; start the run without --resume")
        return checkpoint.load_training(ckpt_path)
    if ckpt_path.is_file():
        raise ValueError(f"{cfg.out} already holds a run ({CHECKPOINT}); pass --resume to continue it or choose "
                         "another --out")
    if cfg.data is None:
        raise ValueError("--data OUTDIR (the output of `tokshard encode`, or a `tokshard mix` plan) is required")
    return None


def _open_data(settings: dict[str, Any], state: dict[str, Any] | None, say: Callable[[str], None]) -> Dataset:
    ds = open_dataset(settings["data"])
    if state is not None and state["tokenizer_sha256"] != ds.tokenizer_sha256:
        raise ValueError(f"{Path(settings['out']) / CHECKPOINT} was trained with tokenizer "
                         f"{state['tokenizer_sha256'][:12]}…, but {settings['data']} holds shards of tokenizer "
                         f"{ds.tokenizer_sha256[:12]}…")
    if ds.plan is not None and settings["packing"] == "windows":
        raise ValueError(f"{settings['data']} is a `tokshard mix` plan: its rows are packed; drop --packing windows")
    if not ds.complete:
        say(f"warning: {ds.out_dir}/manifest.json says the encode run was incomplete; training on what is there")
    return ds


def _build_model(settings: dict[str, Any], state: dict[str, Any] | None, vocab_size: int,
                 device: str) -> tuple[GPT, GPTConfig, list[torch.optim.Optimizer]]:
    """The model and optimisers, fresh from the seed or restored from `state`; fills the model size into
    `settings`."""
    model_cfg = (GPTConfig.from_dict(state["config"]) if state else
                 GPTConfig.preset(settings["preset"], vocab_size, seq_len=settings["seq_len"],
                                  n_layer=settings["n_layer"], n_head=settings["n_head"], n_embd=settings["n_embd"]))
    settings.update(seq_len=model_cfg.seq_len, n_layer=model_cfg.n_layer, n_head=model_cfg.n_head,
                    n_embd=model_cfg.n_embd)
    torch.manual_seed(settings["seed"])
    with torch.device(device):
        model = GPT(model_cfg)
    optimizers = optim.build_optimizers(model, matrix_lr=settings["matrix_lr"], embed_lr=settings["embed_lr"],
                                        head_lr=settings["head_lr"], scalar_lr=settings["scalar_lr"],
                                        weight_decay=settings["weight_decay"], muon=settings["muon"])
    if state is not None:
        model.load_state_dict(state["state_dict"])
        for opt, s in zip(optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        torch.set_rng_state(state["torch_rng"])
    return model, model_cfg, optimizers


def _batches(settings: dict[str, Any], ds: Dataset, ranks: Dist) -> tuple[Callable[[int], dict[str, Any]], str]:
    """This rank's batch maker for the run's packing, and a line describing the training data."""
    seq_len, batch_size = settings["seq_len"], settings["batch_size"]
    if settings["packing"] == "windows":
        stream = WindowStream(ds.train, seq_len, settings["seed"])
        return window_batches(stream, batch_size, ranks.rank), (
            f"{stream.n_windows:,} train windows ({stream.n_windows * seq_len:,} tokens/epoch)")
    rows = settings["steps"] * settings["grad_accum"] * batch_size * ranks.world
    # Whole shuffle blocks (tokshard.data), so a longer run's plan reads its first rows in the same order (resume
    # with more --steps).
    planned = -(-rows // SHUFFLE_BLOCK) * SHUFFLE_BLOCK
    plan = ds.plan or open_plan(ds.out_dir, seq_len=seq_len, tokens=planned * seq_len, seed=settings["seed"],
                                max_epochs=math.inf,  # like windows, a run's data repeats as long as training lasts
                                split_long=settings["packing"] == "best-fit-split")
    if plan.data["seq_len"] != seq_len:
        raise ValueError(f"{settings['data']} is planned for seq_len {plan.data['seq_len']}; the model's is {seq_len}")
    if plan.rows < rows:
        raise ValueError(f"{settings['data']} plans {plan.rows:,} rows; {settings['steps']:,} steps of "
                         f"{rows // settings['steps']:,} rows need {rows:,}: plan more --tokens or train fewer --steps")
    packed = PackedRows(plan, batch_size=batch_size, rank=ranks.rank, world=ranks.world)
    epochs = ", ".join(f"{s['name']} {s['epochs']:.2f}" for s in plan.data["sources"])
    return packed.batch, (f"{plan.rows:,} packed rows (epochs: {epochs}; waste "
                          f"{100 * plan.data['waste']['best_fit']['waste']:.1f}%), attention masked per document")


def _loss_fn(train_model: torch.nn.Module, is_cuda: bool,
             use_compile: bool) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    def forward_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16) if is_cuda else contextlib.nullcontext():
            logits = train_model(batch["input_ids"], batch.get("position_ids"))
        # Summed over the targets and divided by all positions, padding included: a mean over each rank's own
        # count of real targets would weigh rows differently at another world size (DDP averages ranks' means).
        labels = batch["labels"]
        nats = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return nats / labels.numel()

    # Compiling the loss with the model fuses the soft cap, log-softmax and gather over the [B, T, vocab] logits.
    return torch.compile(forward_loss) if use_compile else forward_loss


def setup(cfg: TrainConfig, resume: bool = False, echo: Callable[[str], None] | None = None) -> Run:
    """Everything before the first step: settings, ranks, data, model, optimisers, loader, log and run files."""
    state = _load_state(cfg, resume)
    settings = resolve(cfg, state["train_config"] if state else None)
    out = Path(settings["out"])
    ranks, device = init_distributed(pick_device(settings["device"]))
    echo = echo or (lambda s: print(s, flush=True))
    say = echo if ranks.main else (lambda s: None)
    is_cuda = device.startswith("cuda")
    if is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ds = _open_data(settings, state, say)
    if ds.plan is not None and settings["seq_len"] is None:  # a plan fixes the row length: the model follows it
        settings["seq_len"] = int(ds.plan.data["seq_len"])
    model, model_cfg, optimizers = _build_model(settings, state, ds.vocab_size, device)
    settings["name"] = settings["name"] or out.resolve().name
    start_step, position = (int(state["step"]), int(state["data_position"])) if state else (0, 0)
    del state
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        from tokshard.pipeline.tokenizer import copy_tokenizer

        copy_tokenizer(ds.tokenizer_dir, out / TOKENIZER)
        atomic.write_json(out / CONFIG_JSON, {"train": settings, "model": model_cfg.to_dict(),
                                              "tokenizer_sha256": ds.tokenizer_sha256, "data": settings["data"]})
    train_model: torch.nn.Module = model
    if ranks.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ranks.local_rank] if is_cuda else None)
    use_compile = settings["compile"] if settings["compile"] is not None else is_cuda
    make_batch, data_line = _batches(settings, ds, ranks)
    loader = BatchLoader(make_batch, settings["batch_size"] * ranks.world, position=position,
                         prefetch=settings["prefetch"], pin=is_cuda)
    vwin, vlen = val_windows(ds.val, model_cfg.seq_len, settings["eval_tokens"])
    log = RunLog(out / LOG, keep_until=start_step if resume else None) if ranks.main else None
    tokens_per_step = settings["batch_size"] * model_cfg.seq_len * settings["grad_accum"] * ranks.world
    say(f"{settings['name']}: {model.num_params():,} parameters ({model.num_params(non_embedding=True):,} "
        f"non-embedding), {model_cfg.n_layer}x{model_cfg.n_embd}, seq {model_cfg.seq_len}, vocab "
        f"{model_cfg.vocab_size:,}; {tokens_per_step:,} tokens/step; {data_line}; {len(vwin)} val windows; device "
        f"{device}{' x' + str(ranks.world) if ranks.world > 1 else ''}{', compiled' if use_compile else ''}"
        + (f"; resuming at step {start_step}" if start_step else ""))
    return Run(settings=settings, out=out, ranks=ranks, device=device, model=model, train_model=train_model,
               loss_fn=_loss_fn(train_model, is_cuda, use_compile), optimizers=optimizers, dataset=ds,
               loader=loader, val_windows=vwin, val_lengths=vlen, log=log, say=say, start_step=start_step,
               tokens_per_step=tokens_per_step)


def train_step(run: Run, step: int) -> StepResult:
    """One optimiser step (grad_accum micro-batches) at schedule step `step` (0-based)."""
    s = run.settings
    t0, wait0, copy_s = time.perf_counter(), run.loader.wait_s, 0.0
    optim.set_lr(run.optimizers, optim.lr_multiplier(step, s["steps"], s["warmup_steps"], s["cooldown_frac"]))
    loss_sum = torch.zeros((), device=run.device)
    for micro in range(s["grad_accum"]):
        tc = time.perf_counter()
        batch = {k: v.to(run.device, non_blocking=True) for k, v in run.loader.next().items()}
        copy_s += time.perf_counter() - tc
        sync = run.ranks.world == 1 or micro == s["grad_accum"] - 1
        with contextlib.nullcontext() if sync else run.train_model.no_sync():  # type: ignore[operator]
            loss = run.loss_fn(batch)
            (loss / s["grad_accum"]).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), s["clip"])
    for opt in run.optimizers:
        opt.step()
    run.model.zero_grad(set_to_none=True)
    if run.ranks.world > 1:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    train_loss = loss_sum.item() / s["grad_accum"]  # also waits for the GPU: honest step times
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"train loss is {train_loss} at step {step + 1}; lower the learning rates or check "
                                 "the data")
    return StepResult(train_loss, float(grad_norm), time.perf_counter() - t0, run.loader.wait_s - wait0 + copy_s)


def log_step(run: Run, step: int, result: StepResult) -> None:
    """Append the step's record to log.jsonl (rank 0) and print a line every log_every steps."""
    if run.log is None:
        return
    s, group = run.settings, run.optimizers[0].param_groups[0]
    rec = {"kind": "train", "step": step, "loss": result.loss, "lr_mult": group["lr"] / group["initial_lr"],
           "grad_norm": result.grad_norm, "step_ms": 1000 * result.seconds, "data_ms": 1000 * result.data_seconds,
           "tokens_per_s": run.tokens_per_step / result.seconds}
    if run.is_cuda:
        rec["mfu"] = (run.model.flops_per_token() * run.tokens_per_step / result.seconds
                      / (s["peak_flops"] * run.ranks.world))
    run.log.write(rec)
    if step % s["log_every"] == 0 or step == run.start_step + 1:
        run.say(f"step {step}/{s['steps']} | loss {result.loss:.4f} | lr x{rec['lr_mult']:.3f} | "
                f"{rec['tokens_per_s']:,.0f} tok/s | {rec['step_ms']:.0f} ms (data "
                f"{100 * result.data_seconds / result.seconds:.1f}%)"
                + (f" | mfu {100 * rec['mfu']:.1f}%" if run.is_cuda else ""))


def validate(run: Run, step: int) -> Score:
    """Validation BPB over all ranks, logged by rank 0."""
    score = evaluate(run.model, run.val_windows, run.val_lengths, run.dataset.token_bytes, run.device,
                     run.settings["batch_size"], run.ranks, bos_id=run.dataset.bos_id if run.masked else None)
    if run.log is not None:
        run.log.write({"kind": "val", "step": step, "val_bpb": score.bpb, "val_loss": score.loss,
                       "val_tokens": score.tokens, "val_bytes": score.bytes})
        run.say(f"step {step}/{run.settings['steps']} | val bpb {_fmt(score.bpb)} | val loss {_fmt(score.loss)}")
    return score


def save(run: Run, step: int) -> None:
    """Checkpoint (for --resume), inference export, a log record and the plot; rank 0 only."""
    if run.log is None:
        return
    name, sha = run.settings["name"], run.dataset.tokenizer_sha256
    checkpoint.save_training(run.out / CHECKPOINT, model=run.model, optimizers=run.optimizers,
                             config=run.model.config, train_config=run.settings, step=step,
                             data_position=run.loader.position, tokenizer_sha256=sha, name=name)
    checkpoint.export_inference(run.out / MODEL, run.model, run.model.config, tokenizer_sha256=sha, step=step,
                                name=name)
    run.log.write({"kind": "ckpt", "step": step, "data_position": run.loader.position})
    _plot(run.out)


def train(cfg: TrainConfig, resume: bool = False, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary (final step, val BPB, paths, throughput)."""
    run = setup(cfg, resume, echo)
    s = run.settings
    steps = s["steps"]
    stop_at = s["stop_at"] if s["stop_at"] is not None else steps
    last_val = validate(run, 0) if run.start_step == 0 else None
    step, interrupted = run.start_step, False
    t_run = time.perf_counter()
    run.model.train()
    try:
        with _StopFlag() as flag:
            while step < min(steps, stop_at):
                if _agree(flag.set, run.ranks, run.device):  # every rank stops at the same step boundary
                    interrupted = True
                    break
                result = train_step(run, step)
                step += 1
                log_step(run, step, result)
                if step % s["eval_every"] == 0 or step == steps:
                    last_val = validate(run, step)
                if step in (steps, stop_at) or (s["ckpt_every"] and step % s["ckpt_every"] == 0):
                    save(run, step)
            if interrupted:
                run.say(f"stopped at step {step}: checkpoint saved, continue with --resume")
                save(run, step)
    finally:
        run.close()
    tokens_run = (step - run.start_step) * run.tokens_per_step
    elapsed = time.perf_counter() - t_run
    return {"name": s["name"], "out": str(run.out), "step": step, "steps": steps, "finished": step >= steps,
            "interrupted": interrupted, "val_bpb": last_val.bpb if last_val else None,
            "val_loss": last_val.loss if last_val else None,
            "tokens_per_s": tokens_run / elapsed if tokens_run else None,
            "checkpoint": str(run.out / CHECKPOINT), "model": str(run.out / MODEL), "log": str(run.out / LOG)}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _plot(out: Path) -> None:
    from tokshard.trainer.plot import plot_run

    plot_run(out / LOG, out / PLOT)
