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

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tokshard.pipeline import atomic
from tokshard.trainer import checkpoint, optim
from tokshard.trainer.bpb import Score, score_windows
from tokshard.trainer.data import BatchLoader, WindowStream, open_dataset, val_windows
from tokshard.trainer.model import GPT, GPTConfig

H100_BF16_PEAK_FLOPS = 989e12  # H100 SXM dense bf16 tensor-core peak (NVIDIA datasheet; 756e12 for the PCIe card)


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


DEFAULTS: dict[str, Any] = {
    "preset": "tiny", "grad_accum": 1, "matrix_lr": 0.02, "embed_lr": 0.1, "head_lr": 0.01, "scalar_lr": 0.01,
    "weight_decay": 0.0, "cooldown_frac": 0.4, "clip": 1.0, "seed": 0, "muon": "tokshard",
    "eval_tokens": 1 << 20, "log_every": 10, "device": "auto", "prefetch": 4, "peak_flops": H100_BF16_PEAK_FLOPS,
}
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"steps": 300, "batch_size": 16, "eval_every": 100},
    # 32 x 1024 tokens x 16 micro-steps = 0.5M tokens per step on one GPU (nanoGPT's batch); torchrun with N
    # GPUs multiplies it by N unless --grad-accum is lowered.
    "gpt2-small": {"steps": 5000, "batch_size": 32, "grad_accum": 16, "eval_every": 250},
}
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
    if out["data"] is not None:  # absolute, so a resume from another working directory finds the shards
        out["data"] = str(Path(out["data"]).resolve())
    for k in ("steps", "batch_size", "grad_accum", "eval_every", "log_every", "eval_tokens"):
        if not isinstance(out[k], int) or out[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be a positive integer, got {out[k]!r}")
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
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        device = f"cuda:{d.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return d, device


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


def evaluate(model: torch.nn.Module, windows, lengths, token_bytes, device: str, batch_size: int, d: Dist) -> Score:
    """Validation BPB on this rank's share of the fixed windows, summed over ranks."""
    was_training = model.training
    model.eval()
    s = score_windows(model, windows[d.rank :: d.world], token_bytes, device=device, batch_size=batch_size,
                      lengths=lengths[d.rank :: d.world])
    model.train(was_training)
    if d.world > 1:
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


def _agree(local: bool, d: Dist, device: str) -> bool:
    if d.world == 1:
        return local
    t = torch.tensor([float(local)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def train(cfg: TrainConfig, resume: bool = False, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary (final step, val BPB, paths, throughput)."""
    if cfg.out is None:
        raise ValueError("--out RUNDIR is required")
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    state: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: {ckpt_path} does not exist; start the run without --resume")
        state = checkpoint.load_training(ckpt_path)
    elif ckpt_path.is_file():
        raise ValueError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it or choose "
                         "another --out")
    if state is None and cfg.data is None:
        raise ValueError("--data OUTDIR (the output of `tokshard encode`) is required")
    c = resolve(cfg, state["train_config"] if state else None)
    device = pick_device(c["device"])
    d, device = init_distributed(device)
    echo = echo or (lambda s: print(s, flush=True))
    say = echo if d.main else (lambda s: None)
    is_cuda = device.startswith("cuda")

    ds = open_dataset(c["data"])
    if state is not None and state["tokenizer_sha256"] != ds.tokenizer_sha256:
        raise ValueError(f"{ckpt_path} was trained with tokenizer {state['tokenizer_sha256'][:12]}…, but "
                         f"{c['data']} holds shards of tokenizer {ds.tokenizer_sha256[:12]}…")
    if not ds.complete:
        say(f"warning: {c['data']}/manifest.json says the encode run was incomplete; training on what is there")
    model_cfg = (GPTConfig.from_dict(state["config"]) if state else
                 GPTConfig.preset(c["preset"], ds.vocab_size, seq_len=c["seq_len"], n_layer=c["n_layer"],
                                  n_head=c["n_head"], n_embd=c["n_embd"]))
    c["seq_len"], c["n_layer"], c["n_head"], c["n_embd"] = (model_cfg.seq_len, model_cfg.n_layer, model_cfg.n_head,
                                                            model_cfg.n_embd)
    name = c["name"] or out.resolve().name
    c["name"] = name
    if is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(c["seed"])
    with torch.device(device):
        model = GPT(model_cfg)
    optimizers = optim.build_optimizers(model, matrix_lr=c["matrix_lr"], embed_lr=c["embed_lr"],
                                        head_lr=c["head_lr"], scalar_lr=c["scalar_lr"],
                                        weight_decay=c["weight_decay"], muon=c["muon"])
    start_step, position = 0, 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        for opt, s in zip(optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        torch.set_rng_state(state["torch_rng"])
        start_step, position = int(state["step"]), int(state["data_position"])
        del state
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        from tokshard.pipeline.tokenizer import copy_tokenizer

        copy_tokenizer(ds.tokenizer_dir, out / TOKENIZER)
        atomic.write_json(out / CONFIG_JSON, {"train": c, "model": model_cfg.to_dict(),
                                              "tokenizer_sha256": ds.tokenizer_sha256,
                                              "data": str(Path(c["data"]).resolve())})

    train_model: torch.nn.Module = model
    if d.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if is_cuda else None)

    def forward_loss(w: torch.Tensor) -> torch.Tensor:
        if is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = train_model(w[:, :-1])
        else:
            logits = train_model(w[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())

    use_compile = c["compile"] if c["compile"] is not None else is_cuda
    # Compiling the loss with the model fuses the soft cap, log-softmax and gather over the [B, T, vocab] logits.
    loss_fn = torch.compile(forward_loss) if use_compile else forward_loss

    stream = WindowStream(ds.train, model_cfg.seq_len, c["seed"])
    loader = BatchLoader(stream, c["batch_size"], position=position, rank=d.rank, world=d.world,
                         prefetch=c["prefetch"], pin=is_cuda)
    vwin, vlen = val_windows(ds.val, model_cfg.seq_len, c["eval_tokens"])
    log = RunLog(out / LOG, keep_until=start_step if resume else None) if d.main else None
    flops_per_token = model.flops_per_token()
    tokens_per_step = c["batch_size"] * model_cfg.seq_len * c["grad_accum"] * d.world
    steps = c["steps"]
    say(f"{name}: {model.num_params():,} parameters ({model.num_params(non_embedding=True):,} non-embedding), "
        f"{model_cfg.n_layer}x{model_cfg.n_embd}, seq {model_cfg.seq_len}, vocab {model_cfg.vocab_size:,}; "
        f"{tokens_per_step:,} tokens/step; {stream.n_windows:,} train windows "
        f"({stream.n_windows * model_cfg.seq_len:,} tokens/epoch); {len(vwin)} val windows; device {device}"
        f"{' x' + str(d.world) if d.world > 1 else ''}{', compiled' if use_compile else ''}"
        + (f"; resuming at step {start_step}" if start_step else ""))

    def do_eval(step: int) -> Score:
        s = evaluate(model, vwin, vlen, ds.token_bytes, device, c["batch_size"], d)
        if log is not None:
            log.write({"kind": "val", "step": step, "val_bpb": s.bpb, "val_loss": s.loss, "val_tokens": s.tokens,
                       "val_bytes": s.bytes})
            say(f"step {step}/{steps} | val bpb {_fmt(s.bpb)} | val loss {_fmt(s.loss)}")
        return s

    def save(step: int) -> None:
        if d.main:
            checkpoint.save_training(ckpt_path, model=model, optimizers=optimizers, config=model_cfg,
                                     train_config=c, step=step, data_position=loader.position,
                                     tokenizer_sha256=ds.tokenizer_sha256, name=name)
            checkpoint.export_inference(out / MODEL, model, model_cfg, tokenizer_sha256=ds.tokenizer_sha256,
                                        step=step, name=name)
            log.write({"kind": "ckpt", "step": step, "data_position": loader.position})  # type: ignore[union-attr]
            _plot(out)

    last_val = do_eval(0) if start_step == 0 else None
    step = start_step
    t_run, tokens_run = time.perf_counter(), 0
    stop_at = c["stop_at"] if c["stop_at"] is not None else steps
    interrupted = False
    model.train()
    try:
        with _StopFlag() as flag:
            while step < min(steps, stop_at):
                if _agree(flag.set, d, device):  # every rank stops at the same step boundary
                    interrupted = True
                    break
                t0 = time.perf_counter()
                wait0 = loader.wait_s
                optim.set_lr(optimizers, optim.lr_multiplier(step, steps, c["warmup_steps"], c["cooldown_frac"]))
                loss_sum = torch.zeros((), device=device)
                copy_s = 0.0
                for micro in range(c["grad_accum"]):
                    tc = time.perf_counter()
                    w = loader.next().to(device, non_blocking=True)
                    copy_s += time.perf_counter() - tc
                    sync = d.world == 1 or micro == c["grad_accum"] - 1
                    ctx = contextlib.nullcontext() if sync else train_model.no_sync()  # type: ignore[operator]
                    with ctx:
                        loss = loss_fn(w)
                        (loss / c["grad_accum"]).backward()
                    loss_sum += loss.detach()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c["clip"])
                for opt in optimizers:
                    opt.step()
                model.zero_grad(set_to_none=True)
                if d.world > 1:
                    dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
                train_loss = loss_sum.item() / c["grad_accum"]  # also waits for the GPU: honest step times
                step += 1
                dt = time.perf_counter() - t0
                tokens_run += tokens_per_step
                if not math.isfinite(train_loss):
                    raise FloatingPointError(f"train loss is {train_loss} at step {step}; lower the learning rates "
                                             "or check the data")
                if log is not None:
                    data_s = loader.wait_s - wait0 + copy_s
                    rec = {"kind": "train", "step": step, "loss": train_loss,
                           "lr_mult": optimizers[0].param_groups[0]["lr"] / optimizers[0].param_groups[0]["initial_lr"],
                           "grad_norm": float(grad_norm), "step_ms": 1000 * dt, "data_ms": 1000 * data_s,
                           "tokens_per_s": tokens_per_step / dt}
                    if is_cuda:
                        rec["mfu"] = flops_per_token * tokens_per_step / dt / (c["peak_flops"] * d.world)
                    log.write(rec)
                    if step % c["log_every"] == 0 or step == start_step + 1:
                        say(f"step {step}/{steps} | loss {train_loss:.4f} | lr x{rec['lr_mult']:.3f} | "
                            f"{rec['tokens_per_s']:,.0f} tok/s | {rec['step_ms']:.0f} ms (data "
                            f"{100 * data_s / dt:.1f}%)" + (f" | mfu {100 * rec['mfu']:.1f}%" if is_cuda else ""))
                if step % c["eval_every"] == 0 or step == steps:
                    last_val = do_eval(step)
                if step in (steps, stop_at) or (c["ckpt_every"] and step % c["ckpt_every"] == 0):
                    save(step)
            if interrupted:
                say(f"stopped at step {step}: checkpoint saved, continue with --resume")
                save(step)
    finally:
        loader.close()
        if log is not None:
            log.close()
        ds.close()
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    elapsed = time.perf_counter() - t_run
    return {"name": name, "out": str(out), "step": step, "steps": steps, "finished": step >= steps,
            "interrupted": interrupted, "val_bpb": last_val.bpb if last_val else None,
            "val_loss": last_val.loss if last_val else None,
            "tokens_per_s": tokens_run / elapsed if tokens_run else None,
            "checkpoint": str(ckpt_path), "model": str(out / MODEL), "log": str(out / LOG)}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _plot(out: Path) -> None:
    from tokshard.trainer.plot import plot_run

    plot_run(out / LOG, out / PLOT)
