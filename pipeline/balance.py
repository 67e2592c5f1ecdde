"""Balanced training samples: each group (language, domain, source) gets a chosen share of the tokenizer's sample.

A uniform sample of a skewed corpus serves its majority group and taxes the others (more tokens for the same
content). Temperature sampling, as multilingual models draw their training data, fixes the shares instead:

    share(g) = w(g) * size(g)^alpha / sum over h of w(h) * size(h)^alpha

`size` is a group's text in bytes (each document capped as the trainer caps it), alpha = 1 keeps the corpus'
proportions, alpha = 0 gives every group the same share, `w` (default 1) steers single groups (0 drops one). A
group's sampling rate is share * sample / size; where it is above 1 (a small group given a large share) documents
are repeated: floor(rate) copies each, plus one more for a stable hash fraction of them. The draw is a hash of
(seed, document id), the uniform sample's: deterministic, and at alpha = 1 the documents a uniform sample of the
same fraction draws.

Two passes over the slices run as Ray tasks: `measure_slice` sums the bytes per group, `sample_slice` draws.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from tokshard.pipeline import sources

DEFAULT_ALPHA = 0.3
NULL_GROUP = "(none)"  # rows whose group column is null form a group of their own (weight it 0 to drop them)


def resolve_sources(source: str | None) -> list[str]:
    """The parquet files of one source or of several joined by commas (e.g. an English and a multilingual
    corpus), each resolved as `--source` is; a file named twice is read once."""
    if source is None or "," not in source:
        return sources.resolve_files(source)
    files: list[str] = []
    for part in source.split(","):
        if not part.strip():
            raise sources.SourceError(f"--source {source!r} has an empty entry between commas")
        files += [f for f in sources.resolve_files(part.strip()) if f not in files]
    return files


def parse_weights(spec: str | None) -> dict[str, float]:
    """`g=w,h=v` -> {g: w, h: v}; every weight a finite number >= 0."""
    if not spec:
        return {}
    weights: dict[str, float] = {}
    for item in spec.split(","):
        group, sep, value = item.partition("=")
        group = group.strip()
        if not sep or not group:
            raise ValueError(f"--balance-weights entry {item!r} is not GROUP=WEIGHT (e.g. en=2,ja=0.5)")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"--balance-weights: the weight of {group!r} is {value!r}, not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"--balance-weights: the weight of {group!r} must be a finite number >= 0, got {value}")
        if group in weights:
            raise ValueError(f"--balance-weights names {group!r} twice")
        weights[group] = weight
    return weights


def check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"--balance-alpha must be between 0 (equal shares) and 1 (the corpus' proportions), "
                         f"got {alpha}")


def target_shares(sizes: dict[str, int], alpha: float, weights: dict[str, float] | None = None) -> dict[str, float]:
    """Each group's share of the sample (summing to 1). Weights for groups the corpus does not have are refused:
    a misspelt group would otherwise silently keep its default share."""
    check_alpha(alpha)
    weights = weights or {}
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
        raise ValueError(f"--balance-weights names groups the source does not have: {', '.join(unknown)} "
                         f"(groups: {', '.join(sorted(sizes))})")
    raw = {g: weights.get(g, 1.0) * (size ** alpha if size > 0 else 0.0) for g, size in sizes.items()}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("every group has weight 0 or no text: nothing to sample")
    return {g: v / total for g, v in raw.items()}


def sampling_rates(sizes: dict[str, int], shares: dict[str, float], sample_bytes: int) -> dict[str, float]:
    """Documents drawn per document of each group (above 1: repeated). The sample holds `sample_bytes` or, when
    the corpus is smaller, as many bytes as the corpus (repeating everything would add nothing)."""
    budget = min(sample_bytes, sum(sizes.values()))
    return {g: (shares[g] * budget / sizes[g] if sizes[g] else 0.0) for g in sizes}


def check_column(paths: list[str], balance_by: str) -> None:
    """Refuse, before any task runs, files without the group column (each named, with its columns)."""
    missing = []
    for path in paths:
        names = sources.open_parquet(path).schema_arrow.names
        if balance_by not in names:
            missing.append(f"{path} (columns: {', '.join(names)})")
    if missing:
        raise sources.SourceError(f"no column {balance_by!r} to balance by in {'; '.join(missing)}; pass "
                                  "--balance-by with a column every source has")


def _group_table(piece: sources.Slice, text_column: str, id_column: str | None, balance_by: str
                 ) -> Iterator[tuple[pa.Table, int]]:
    """The slice's row groups with the text, group (and id) columns, and each one's first file-level row."""
    pf = sources.open_parquet(piece.path)
    schema = pf.schema_arrow
    sources.check_text_column(piece.path, schema, text_column)
    if balance_by not in schema.names:
        raise sources.SourceError(f"{piece.path}: no column {balance_by!r} to balance by "
                                  f"(columns: {', '.join(schema.names)})")
    columns = [text_column, balance_by] + ([id_column] if id_column and id_column in schema.names else [])
    row = piece.row_start
    for rg in range(piece.rg_start, piece.rg_end):
        try:
            table = pf.read_row_group(rg, columns=columns)
        except (OSError, pa.ArrowInvalid) as e:
            raise sources.SourceError(f"{piece.path}: row group {rg} cannot be read ({e})") from e
        if row + table.num_rows > piece.row_end:
            table = table.slice(0, piece.row_end - row)
        yield table, row
        row += table.num_rows


def _groups(column: pa.ChunkedArray) -> list[str]:
    return [NULL_GROUP if v is None else str(v) for v in column.to_pylist()]


def measure_slice(piece: sources.Slice, text_column: str, balance_by: str, max_chars: int) -> dict[str, int]:
    """Bytes of text per group in one slice, each document capped at `max_chars` characters (as sampled)."""
    import pyarrow.compute as pc  # here, not at the top: ~35 ms to import, and `tokshard encode` never needs it

    sizes: dict[str, int] = {}
    for table, row in _group_table(piece, text_column, None, balance_by):
        texts = table.column(text_column)
        try:
            lengths = pc.binary_length(pc.utf8_slice_codeunits(texts, 0, max_chars)).to_pylist()
        except pa.ArrowInvalid:
            raise sources.SourceError(sources.invalid_utf8_message(piece.path, texts, row, text_column)) from None
        for group, n in zip(_groups(table.column(balance_by)), lengths, strict=True):
            if n is None:
                raise sources.SourceError(f"{piece.path}: a row from {row} has a null {text_column!r}; drop or fill it")
            sizes[group] = sizes.get(group, 0) + n
    return sizes


def sample_slice(piece: sources.Slice, rates: dict[str, float], seed: int, text_column: str, id_column: str,
                 balance_by: str, max_chars: int) -> tuple[list[str], dict[str, list[int]]]:
    """The slice's documents drawn at their group's rate, each capped at `max_chars` characters, and per group
    [documents, bytes] drawn (copies counted)."""
    out: list[str] = []
    drawn: dict[str, list[int]] = {}
    name = os.path.basename(piece.path)
    salt = f"tokshard-sample-{seed}:"
    for table, row in _group_table(piece, text_column, id_column, balance_by):
        try:
            texts = table.column(text_column).to_pylist()
        except UnicodeDecodeError:
            raise sources.SourceError(sources.invalid_utf8_message(piece.path, table.column(text_column), row,
                                                                   text_column)) from None
        if id_column in table.column_names:
            ids = [f"{name}#{row + i}" if x is None else str(x)
                   for i, x in enumerate(table.column(id_column).to_pylist())]
        else:
            ids = [f"{name}#{row + i}" for i in range(len(texts))]
        for i, (group, doc_id, text) in enumerate(zip(_groups(table.column(balance_by)), ids, texts, strict=True)):
            rate = rates.get(group, 0.0)
            if rate <= 0:
                continue
            if text is None:
                raise sources.SourceError(f"{piece.path}: row {row + i} has a null {text_column!r}; drop or fill it")
            copies = int(rate) + (sources.id_fraction(doc_id, salt) < rate - int(rate))
            if copies:
                text = text[:max_chars]
                out.extend([text] * copies)
                stats = drawn.setdefault(group, [0, 0])
                stats[0] += copies
                stats[1] += copies * len(text.encode("utf-8", "surrogatepass"))
    return out, drawn


def merge_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-group numbers (ints, or lists of ints element-wise) over slices."""
    total: dict[str, Any] = {}
    for part in parts:
        for group, value in part.items():
            if isinstance(value, list):
                total[group] = [a + b for a, b in zip(total.get(group, [0] * len(value)), value, strict=True)]
            else:
                total[group] = total.get(group, 0) + value
    return total


def record(balance_by: str, alpha: float, weights: dict[str, float], sizes: dict[str, int],
           shares: dict[str, float], rates: dict[str, float], drawn: dict[str, list[int]]) -> dict[str, Any]:
    """What tokshard.json keeps about a balanced sample: the settings and, per group, the corpus size, the target
    share, the rate (above 1: repeated documents) and what was drawn."""
    sample_total = sum(b for _, b in drawn.values()) or 1
    groups = {}
    for g in sorted(sizes, key=lambda g: (-shares[g], g)):
        docs, n_bytes = drawn.get(g, [0, 0])
        groups[g] = {"corpus_bytes": sizes[g], "target_share": round(shares[g], 6), "rate": round(rates[g], 6),
                     "sample_documents": docs, "sample_bytes": n_bytes, "share": round(n_bytes / sample_total, 6)}
    return {"by": balance_by, "alpha": alpha, "weights": weights, "groups": groups}


def summary_lines(balance: dict[str, Any]) -> list[str]:
    """The shares as printed by `train-tokenizer`."""
    lines = [f"balanced by {balance['by']!r}, alpha {balance['alpha']:g}"
             + (f", weights {balance['weights']}" if balance["weights"] else "") + ":",
             f"  {'group':<12s} {'corpus MB':>10s} {'share':>7s} {'target':>7s} {'rate':>7s}"]
    for g, s in balance["groups"].items():
        lines.append(f"  {g[:12]:<12s} {s['corpus_bytes'] / 1e6:>10.2f} {s['share']:>7.1%} {s['target_share']:>7.1%}"
                     f" {s['rate']:>7.3g}")
    return lines
