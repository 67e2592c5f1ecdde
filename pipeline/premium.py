"""Language premiums as a target: one number per tokenizer for the fairness/compression trade-off, and the alpha
sweep that draws it.

`eval-tokenizer --parallel-key K --reference R` measures, per group, how many more tokens the same content costs
than in R (the premium). This module condenses that into the worst and the mean premium over the groups that have
parallel text, next to R's bytes/token (for R = English: what a tokenizer gives up on the majority language), so
one table compares tokenizers; and `--sweep-alpha` trains one balanced tokenizer per temperature alpha
(pipeline/balance.py) at a fixed vocabulary, so the curve shows what each alpha buys and costs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokshard.pipeline import balance, jobs
from tokshard.pipeline.tokenizer import METADATA_JSON, resolve_pattern

SWEEP_ALPHA_DIR = "sweep-alpha"
DEFAULT_ALPHAS = (1.0, 0.5, 0.3, 0.0)
PLOT = "premium_tradeoff.png"


def parse_alphas(spec: str) -> list[float]:
    """"1,0.5,0.3,0" -> [1.0, 0.5, 0.3, 0.0] (distinct, in the given order)."""
    alphas: list[float] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            alpha = float(part)
        except ValueError:
            raise ValueError(f"--sweep-alpha: {part!r} is not a number (e.g. --sweep-alpha 1,0.5,0.3,0)") from None
        balance.check_alpha(alpha)
        if alpha not in alphas:
            alphas.append(alpha)
    if not alphas:
        raise ValueError("--sweep-alpha: no values given (e.g. --sweep-alpha 1,0.5,0.3,0)")
    return alphas


def alpha_dir(out: Path, alpha: float) -> Path:
    return out / SWEEP_ALPHA_DIR / f"alpha-{alpha:g}"


def _reusable(d: Path, wanted: dict[str, Any], vocab_size: int) -> bool:
    """Whether `d` holds a tokenizer trained with exactly these settings (training is deterministic)."""
    if not (d / METADATA_JSON).is_file():
        return False
    meta = json.loads((d / METADATA_JSON).read_text())
    t = meta.get("training") or {}
    b = t.get("balance") or {}
    have = {"source": t.get("source"), "sample_bytes_limit": t.get("sample_bytes_limit"), "seed": t.get("seed"),
            "text_column": t.get("text_column"), "id_column": t.get("id_column"), "by": b.get("by"),
            "alpha": b.get("alpha"), "weights": b.get("weights"), "pattern_name": meta.get("pattern_name")}
    return meta.get("vocab_size") == vocab_size and have == wanted


def sweep_settings(sweep_alpha: str, sweep: str | None, balance_by: str | None, balance_weights: str | None,
                   train_source: str | None, sample_bytes: int, pattern: str, seed: int,
                   parse_sizes: Callable[[str], list[int]]) -> dict[str, Any]:
    """Check `--sweep-alpha` and its companions; the sweep's settings (the report's, and `train_alpha_sweep`'s)."""
    alphas = parse_alphas(sweep_alpha)
    sizes = parse_sizes(sweep) if sweep else []
    if len(sizes) != 1:
        raise ValueError("--sweep-alpha trains every alpha at one vocabulary size: give it as --sweep SIZE "
                         "(e.g. --sweep 64k)")
    if balance_by is None:
        raise ValueError("--sweep-alpha needs --balance-by COLUMN (the groups to balance, e.g. language)")
    return {"alphas": alphas, "vocab_size": sizes[0], "balance_by": balance_by,
            "weights": balance.parse_weights(balance_weights), "train_source": train_source or "bundled-sample",
            "sample_bytes": sample_bytes, "pattern": pattern, "seed": seed}


def train_alpha_sweep(settings: dict[str, Any], out: Path, *, text_column: str, id_column: str,
                      address: str | None = None, workers: int | None = None,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One balanced tokenizer per alpha at the sweep's vocabulary size, each in `alpha_dir` (reused when trained
    before with the same settings: training is deterministic). Returns the report's "alpha_sweep" part."""
    t0 = time.time()
    reused = []
    source = None if settings["train_source"] == "bundled-sample" else settings["train_source"]
    for alpha in settings["alphas"]:
        d = alpha_dir(out, alpha)
        wanted = {"source": settings["train_source"], "sample_bytes_limit": settings["sample_bytes"],
                  "seed": settings["seed"], "text_column": text_column, "id_column": id_column,
                  "by": settings["balance_by"], "alpha": alpha, "weights": settings["weights"],
                  "pattern_name": resolve_pattern(settings["pattern"])[0]}
        if _reusable(d, wanted, settings["vocab_size"]):
            reused.append(alpha)
            if log:
                log(f"sweep-alpha: reusing {d}, trained before with these settings")
            continue
        if log:
            log(f"sweep-alpha: training alpha {alpha:g} ({settings['vocab_size']:,} tokens) -> {d}")
        jobs.train_tokenizer(source, d, vocab_size=settings["vocab_size"], sample_bytes=settings["sample_bytes"],
                             pattern=settings["pattern"], seed=settings["seed"], text_column=text_column,
                             id_column=id_column, address=address, workers=workers,
                             balance_by=settings["balance_by"], balance_alpha=alpha,
                             balance_weights=settings["weights"])
    return {**settings, "dirs": [str(alpha_dir(out, a)) for a in settings["alphas"]], "reused": reused,
            "seconds": round(time.time() - t0, 2)}


def add_to_report(report: dict[str, Any], out: Path, alpha_sweep: dict[str, Any] | None) -> None:
    """The premium summary (with parallel text) and the alpha sweep's points, into the report."""
    report["premium_summary"] = summary(report)
    if alpha_sweep is not None:
        report["alpha_sweep"] = alpha_sweep
        alpha_sweep["points"] = sweep_points(report, out)


def trained_groups(path: str) -> set[str] | None:
    """The groups a tokshard tokenizer's balanced sample drew from, or None when unknown."""
    meta_path = Path(path) / METADATA_JSON
    if not meta_path.is_file():
        return None
    b = (json.loads(meta_path.read_text()).get("training") or {}).get("balance")
    if not b:
        return None
    return {g for g, s in b["groups"].items() if s["sample_bytes"] > 0}


def summary(report: dict[str, Any]) -> dict[str, Any] | None:
    """Per tokenizer: worst and mean premium over the groups with parallel text (the reference excluded), and
    the reference group's bytes/token; None without parallel text."""
    if "parallel" not in report:
        return None
    ref = report["parallel"]["reference"]
    groups = [g for g, p in report["parallel"]["groups"].items() if g != ref and p["keys"] > 0]
    out: dict[str, Any] = {"reference": ref, "groups": groups, "tokenizers": {}}
    for t in report["tokenizers"]:
        values = {g: t["premium"][g]["premium"] for g in groups if t["premium"][g]["premium"] is not None}
        worst = max(values, key=values.__getitem__) if values else None
        trained = trained_groups(t["path"])
        out["tokenizers"][t["name"]] = {
            "worst_premium": values.get(worst) if worst else None, "worst_group": worst,
            "mean_premium": round(statistics.fmean(values.values()), 6) if values else None,
            "reference_bytes_per_token": t["groups"][ref]["bytes_per_token"],
            "groups_without_training_data": sorted(set(groups) - trained) if trained is not None else None}
    return out


def sweep_points(report: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The alpha sweep's tokenizers in the report, with their premium summary."""
    by_path = {t["path"]: t["name"] for t in report["tokenizers"]}
    s = report["premium_summary"]["tokenizers"] if report.get("premium_summary") else {}
    points = []
    for alpha in report["alpha_sweep"]["alphas"]:
        name = by_path[str(alpha_dir(out, alpha))]
        points.append({"alpha": alpha, "name": name, **{k: v for k, v in s.get(name, {}).items()
                                                         if k != "groups_without_training_data"}})
    return points


def summary_lines(report: dict[str, Any]) -> list[str]:
    s = report.get("premium_summary")
    if not s:
        return []
    ref = s["reference"]
    lines = [f"premiums over {len(s['groups'])} groups with parallel text (tokens vs {ref}), {ref} bytes/token:",
             f"  {'tokenizer':24s} {'worst':>7s} {'(group)':>9s} {'mean':>7s} {ref + ' B/tok':>10s}"]
    for name, t in s["tokenizers"].items():
        untrained = t["groups_without_training_data"]
        lines.append(f"  {name[:24]:24s} {_fmt(t['worst_premium']):>7s} {(t['worst_group'] or '-')[:9]:>9s} "
                     f"{_fmt(t['mean_premium']):>7s} {_fmt(t['reference_bytes_per_token']):>10s}"
                     + (f"  (no training data: {', '.join(untrained)})" if untrained else ""))
    sweep = report.get("alpha_sweep")
    if sweep:
        lines.append(f"sweep-alpha at {sweep['vocab_size']:,} tokens, balanced by {sweep['balance_by']!r}: "
                     + ", ".join(f"alpha {p['alpha']:g} -> {p['name']}" for p in sweep["points"]))
    return lines


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def plot(report: dict[str, Any], figure: Callable[..., tuple[Any, list[Any]]], png: Callable[[Any], bytes]
         ) -> dict[str, bytes]:
    """The trade-off: worst and mean premium against the reference's bytes/token, the sweep as a curve labelled
    by alpha, other tokenizers as points; with a sweep, also premiums and bytes/token against alpha. Premiums
    on a log axis: an unbalanced tokenizer's worst premium can be many times the others'."""
    s = report.get("premium_summary")
    if not s:
        return {}
    sweep = report.get("alpha_sweep")
    fig, axes = figure(12 if sweep else 6.5, 4.8, ncols=2 if sweep else 1)
    swept = {p["name"] for p in sweep["points"]} if sweep else set()
    others = [(n, t) for n, t in s["tokenizers"].items() if n not in swept and t["worst_premium"] is not None]
    _plot_tradeoff(axes[0], s["reference"], sweep, others)
    if sweep:
        _plot_alphas(axes[1], s["reference"], sweep, others)
    return {PLOT: png(fig)}


def _log_premium_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _plot_tradeoff(ax: Any, ref: str, sweep: dict[str, Any] | None, others: list[tuple[str, dict[str, Any]]]
                   ) -> None:
    if sweep:
        pts = sweep["points"]
        x = [p["reference_bytes_per_token"] for p in pts]
        ax.plot(x, [p["worst_premium"] for p in pts], marker="o", color="C0", label="balanced: worst")
        ax.plot(x, [p["mean_premium"] for p in pts], marker="o", ls="--", color="C0", alpha=0.5,
                label="balanced: mean")
        for p in pts:
            ax.annotate(f"α={p['alpha']:g}", (p["reference_bytes_per_token"], p["worst_premium"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
    for i, (name, t) in enumerate(others):
        ax.scatter([t["reference_bytes_per_token"]], [t["worst_premium"]], marker="s", color=f"C{i + 1}", zorder=3,
                   label=f"{name}: worst / mean")
        ax.scatter([t["reference_bytes_per_token"]], [t["mean_premium"]], marker="s", facecolors="none",
                   edgecolors=f"C{i + 1}", zorder=3)
    _log_premium_axis(ax)
    ax.set_xlabel(f"{ref} bytes/token (higher = better)")
    ax.set_ylabel(f"premium vs {ref}, log scale (lower = fairer)")
    ax.set_title("fairness vs compression (filled: worst group, open: mean)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def _plot_alphas(ax: Any, ref: str, sweep: dict[str, Any], others: list[tuple[str, dict[str, Any]]]) -> None:
    pts = sweep["points"]
    alphas = [p["alpha"] for p in pts]
    ax.plot(alphas, [p["worst_premium"] for p in pts], marker="o", color="C0", label="worst premium")
    ax.plot(alphas, [p["mean_premium"] for p in pts], marker="o", ls="--", color="C0", alpha=0.5,
            label="mean premium")
    for i, (name, t) in enumerate(others):
        ax.axhline(t["worst_premium"], color=f"C{i + 1}", lw=0.9, ls=":", label=f"{name}: worst")
    _log_premium_axis(ax)
    ax.set_xlabel(f"alpha (group share ~ bytes^alpha), {sweep['vocab_size']:,} tokens")
    ax.set_ylabel("premium, log scale")
    twin = ax.twinx()
    twin.plot(alphas, [p["reference_bytes_per_token"] for p in pts], marker="s", color="black",
              label=f"{ref} bytes/token (right)")
    twin.set_ylabel(f"{ref} bytes/token")
    ax.set_title(f"temperature sweep, balanced by {sweep['balance_by']}")
    ax.grid(alpha=0.3, which="both")
    lines, labels = ax.get_legend_handles_labels()
    lines2, labels2 = twin.get_legend_handles_labels()
    ax.legend(lines + lines2, labels + labels2, fontsize=7)
