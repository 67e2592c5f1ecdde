"""The report of `tokshard eval-tokenizer`: REPORTDIR/report.json, its PNG plots and the human summary.

evaluate.py measures; this module only presents what it measured, so a change of layout, plot or wording never
touches a number. REPORTDIR holds one report: running again with the same settings refreshes it, other settings
are refused with the differences spelled out unless `force` (like encode's OUT). report.json is written last,
atomically, after the plots, so a report on disk has its plots. Plots use matplotlib's Agg canvas directly,
without pyplot's global state.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tokshard.pipeline import atomic, premium

FORMAT = "tokshard-tokenizer-eval/1"
REPORT_JSON = "report.json"
PLOTS = ("bytes_per_token.png", "premium.png", "sweep.png", premium.PLOT)


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _bars_width(categories: int, series: int) -> float:
    return min(18.0, max(6.0, 0.3 * categories * series + 2.5))


def _grouped_bars(ax: Any, categories: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
        if len(categories) * len(series) <= 40:  # beyond that the labels overlap
            ax.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, categories, rotation=30 if len(categories) > 4 else 0, ha="right" if len(categories) > 4
                  else "center")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def plot_report(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes per plot name: bytes/token (per group when grouped), premiums when parallel, the sweep."""
    toks = report["tokenizers"]
    plots: dict[str, bytes] = {}
    groups = list(report.get("groups", {}))
    categories = ["all", *groups]
    fig, (ax,) = _figure(_bars_width(len(categories), len(toks)), 5)
    _grouped_bars(ax, categories, {t["name"]: [t["overall"]["bytes_per_token"],
                                                *(t["groups"][g]["bytes_per_token"] for g in groups)]
                                   for t in toks}, "UTF-8 bytes / token (higher = better compression)")
    ax.set_title("bytes per token" + (f" by {report['source']['group_by']}" if groups else ""))
    plots["bytes_per_token.png"] = _png(fig)
    if "parallel" in report:
        ref = report["parallel"]["reference"]
        others = [g for g in groups if g != ref]
        fig, (ax,) = _figure(_bars_width(len(others), len(toks)), 5)
        _grouped_bars(ax, others, {t["name"]: [t["premium"][g]["premium"] for g in others] for t in toks},
                      f"tokens relative to {ref} (same content)")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(f"token premium vs {ref} over parallel keys")
        plots["premium.png"] = _png(fig)
    if "sweep" in report:
        plots["sweep.png"] = _plot_sweep(report)
    plots.update(premium.plot(report, _figure, _png))  # worst/mean premium vs bytes/token, the alpha sweep
    return plots


def _plot_sweep(report: dict[str, Any]) -> bytes:
    sweep = report["sweep"]
    by_name = {t["name"]: t for t in report["tokenizers"]}
    points = [by_name[p["name"]] for p in sweep["points"]]
    others = [t for t in report["tokenizers"] if t["name"] not in {p["name"] for p in sweep["points"]}]
    fig, axes = _figure(11, 4.5, ncols=2)
    for ax, metric, label in ((axes[0], "bytes_per_token", "UTF-8 bytes / token"),
                              (axes[1], "tokens_per_word", "tokens / word")):
        x = [t["vocab_size_total"] for t in points]
        ax.plot(x, [t["overall"][metric] for t in points], marker="o", color="C0", label="sweep (all text)")
        groups = list(report.get("groups", {}))
        if 1 < len(groups) <= 8:
            for g in groups:
                ax.plot(x, [t["groups"][g][metric] for t in points], lw=0.8, ls="--", marker=".", label=g)
        for i, t in enumerate(others):  # colours after the sweep's own
            ax.scatter([t["vocab_size_total"]], [t["overall"][metric]], marker="s", zorder=3, color=f"C{i + 1}")
            ax.annotate(t["name"], (t["vocab_size_total"], t["overall"][metric]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("vocabulary size (ids, incl. special tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"compression vs vocabulary size (trained on {Path(str(sweep['train_source'])).name})")
    axes[1].set_title("tokens per word vs vocabulary size")
    return _png(fig)


def check_out_dir(out: Path, settings: dict[str, Any], force: bool) -> None:
    """Refuse to replace a report made with other settings unless `force` (see the module docstring)."""
    path = out / REPORT_JSON
    if force or not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("settings", {})
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{path} exists and is not a tokshard evaluation report; choose another --out or pass "
                         "--force to replace it") from None
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        raise ValueError(f"{path} holds a report made with other settings ({', '.join(diff)} differ); choose "
                         "another --out or pass --force to replace it")


def write_report(out: Path, report: dict[str, Any]) -> None:
    """The plots, then report.json, each atomically; plots of an earlier report that this one lacks go."""
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(out)
    plots = plot_report(report)
    for name, data in plots.items():
        atomic.write_bytes(out / name, data)
    for name in PLOTS:
        if name not in plots:
            (out / name).unlink(missing_ok=True)
    report["plots"] = sorted(plots)
    atomic.write_json(out / REPORT_JSON, report)


def summary_lines(report: dict[str, Any], out: str | os.PathLike[str]) -> list[str]:
    """The human summary `tokshard eval-tokenizer` prints: one row per tokenizer, then per group, premiums and
    the sweep when the report has them."""
    src = report["source"]
    lines = [f"evaluated {len(report['tokenizers'])} tokenizer(s) on {src['documents']:,} documents "
             f"({src['text_bytes'] / 1e6:,.1f} MB, {src['words']:,} words) of {src['source']}",
             *_tokenizer_rows(report)]
    lines += _group_rows(report)
    if "sweep" in report:
        lines += _sweep_rows(report["sweep"])
    lines += premium.summary_lines(report)
    lines.append(f"-> {Path(out) / REPORT_JSON} (+ {', '.join(report['plots'])})")
    return lines


def _tokenizer_rows(report: dict[str, Any]) -> list[str]:
    lines = [f"{'tokenizer':24s} {'vocab':>8s} {'bytes/tok':>9s} {'tok/word':>8s} {'>=3 tok':>7s} "
             f"{'vocab used':>10s} {'tok B vocab/text':>16s} {'MB/cpu-s':>8s}  engine"]
    for t in report["tokenizers"]:
        o = t["overall"]
        vocab_mean = "-" if t["mean_token_bytes_vocab"] is None else f"{t['mean_token_bytes_vocab']:.2f}"
        lines.append(f"{t['name'][:24]:24s} {t['vocab_size']:>8,} {_fmt(o['bytes_per_token'], 3):>9s} "
                     f"{_fmt(o['tokens_per_word'], 3):>8s} {_pct(o['words_3plus_fraction']):>7s} "
                     f"{_pct(o['vocab_used_fraction']):>10s} "
                     f"{vocab_mean + ' / ' + _fmt(o['mean_token_bytes_text'], 2):>16s} "
                     f"{t['throughput']['mb_per_cpu_s']:>8.2f}  {t['throughput']['engine_short']}")
    return lines


def _group_rows(report: dict[str, Any]) -> list[str]:
    """Bytes/token and premiums: one row per group (there may be many), one column per tokenizer."""
    groups = list(report.get("groups", {}))
    if not groups:
        return []
    toks = report["tokenizers"]
    width = max(10, *(min(len(t["name"]), 16) for t in toks))
    gw = min(32, max([22, *map(len, groups)]))  # group column
    header = " ".join(f"{t['name'][:16]:>{width}s}" for t in toks)

    def row(g: str, values: list[float | None]) -> str:
        return f"  {g[:gw]:{gw}s}" + " ".join(f"{_fmt(v, 3):>{width}s}" for v in values)

    lines = [f"bytes/token by {report['source']['group_by']}:".ljust(gw + 2) + header]
    lines += [row(g, [t["groups"][g]["bytes_per_token"] for t in toks]) for g in groups]
    if "parallel" in report:
        lines.append(f"premium vs {report['parallel']['reference']}:".ljust(gw + 2) + header + "  keys  bytes_ratio")
        for g in groups:
            p = report["parallel"]["groups"][g]
            lines.append(row(g, [t["premium"][g]["premium"] for t in toks])
                         + f"  {p['keys']:>4,}  {_fmt(p['bytes_ratio'], 3):>11s}")
    return lines


def _sweep_rows(s: dict[str, Any]) -> list[str]:
    lines = [f"sweep: trained {s['trained']} on {s['sample_documents']:,} documents "
             f"({s['sample_bytes'] / 1e6:,.1f} MB) of {s['train_source']}"
             + (" (reused)" if s["reused"] else f" in {s['seconds']:.1f} s")
             + (" -- the evaluation text itself" if s["in_sample"] else "")]
    return lines + [f"  {p['vocab_size']:>7,}: {_fmt(p['bytes_per_token'], 3)} bytes/token, "
                    f"{_fmt(p['tokens_per_word'], 3)} tokens/word" for p in s["points"]]


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
