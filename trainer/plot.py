"""The run's figure: train loss and validation bits-per-byte against the step, from log.jsonl.

Drawn with matplotlib's Agg backend (no display needed) and written atomically, after every checkpoint.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from tokshard.pipeline import atomic


def plot_run(log_path: str | Path, png_path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            train.append((rec["step"], rec["loss"]))
        elif rec["kind"] == "val" and rec["val_bpb"] is not None:
            val.append((rec["step"], rec["val_bpb"]))
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=True), lw=0.8, color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="train loss (nats/token)", title="train loss")
    if val:
        ax_bpb.plot(*zip(*val, strict=True), marker="o", color="tab:orange")
    ax_bpb.set(xlabel="step", ylabel="bits per byte", title="validation BPB")
    for ax in (ax_loss, ax_bpb):
        ax.grid(alpha=0.3)
    fig.suptitle(Path(log_path).parent.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic.write_bytes(png_path, buf.getvalue())
    return Path(png_path)
