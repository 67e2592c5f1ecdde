"""Live progress on the driver: of an encode run (`Progress`), and of a loop of known length (`Steps`: SuperBPE's
stage-2 merges, which can run for minutes after stage 1).

An encode run's tasks stream one count per row group to the driver, which displays them.

The counts travel as items of Ray streaming generators: `encode_slice` yields a `RowsDone` after each row group
and its result last, and the driver takes them as they arrive while it waits for results. So progress needs no
actor: an actor costs a new Ray worker process on every `encode` (~1.5 s of CPU, 11-13% of a 125 MB run, measured
in docs/benchmarks.md), and would be state that concurrent runs must not mix and that a dead process can lose.

In a terminal the driver shows a tqdm bar over text bytes (documents, tokens, MB, tok/s, ETA); when stderr is
not a terminal (CI, `ray job submit` logs) it prints one plain line every `LOG_EVERY_S` seconds instead.
"""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

LOG_EVERY_S = 10.0
DRAW_EVERY_S = 0.2  # the bar: reports arrive per row group per worker, far more often on a cluster


class RowsDone(NamedTuple):
    """What a task reports after each row group it encoded (or once for a slice kept from an earlier run)."""

    documents: int
    tokens: int
    text_bytes: int


class Progress:
    """Driver side: sums the tasks' `RowsDone` and renders them. Call `add()` per report, `close()` once."""

    def __init__(self, total_bytes: int, show: bool | None = None) -> None:
        self.total_bytes = max(total_bytes, 1)
        self.start = self._last_log = self._last_draw = time.time()
        self.documents = self.tokens = self.bytes = 0
        interactive = sys.stderr.isatty() if show is None else show
        self._bar = None
        if interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                             desc="encode", file=sys.stderr, dynamic_ncols=True)
        self.quiet = show is False

    def add(self, done: RowsDone) -> None:
        self.documents += done.documents
        self.tokens += done.tokens
        self.bytes += done.text_bytes
        self.update()

    def update(self, force: bool = False) -> None:
        now = time.time()
        elapsed = max(now - self.start, 1e-9)
        rate = self.tokens / elapsed
        if self._bar is not None:
            if not force and now - self._last_draw < DRAW_EVERY_S:
                return
            self._last_draw = now
            self._bar.n = min(self.bytes, self.total_bytes)
            self._bar.set_postfix_str(f"{self.documents:,} docs, {self.tokens:,} tok, {rate / 1e6:.2f} Mtok/s",
                                      refresh=True)
        elif not self.quiet and now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            done = self.bytes / self.total_bytes
            eta = elapsed * (1 - done) / done if done > 0 else float("nan")
            print(f"encode: {done:6.1%} {self.documents:,} docs {self.tokens:,} tokens "
                  f"{self.bytes / 1e6:,.1f} MB {rate / 1e6:.2f} Mtok/s ETA {eta:,.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self.update(force=True)
            self._bar.close()


class Steps:
    """Progress of a loop of `total` steps on the driver: a tqdm bar in a terminal, one plain line every
    `LOG_EVERY_S` seconds otherwise (CI, `ray job submit` logs), nothing when `show` is False."""

    def __init__(self, total: int, desc: str, unit: str, show: bool | None = None) -> None:
        self.total, self.desc, self.unit = max(total, 1), desc, unit
        self.done = 0
        self.start = self._last_log = time.time()
        self.quiet = show is False
        self._bar = None
        if sys.stderr.isatty() if show is None else show:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True,
                             mininterval=DRAW_EVERY_S)

    def note(self, message: str) -> None:
        """A line about what happens before the steps start (unless quiet)."""
        if self._bar is not None:
            self._bar.write(f"{self.desc}: {message}", file=sys.stderr)  # above the bar, not through it
        elif not self.quiet:
            print(f"{self.desc}: {message}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.time()
        if not self.quiet and now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            elapsed = now - self.start
            eta = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
            print(f"{self.desc}: {self.done / self.total:6.1%} {self.done:,} / {self.total:,} {self.unit}s "
                  f"{elapsed:,.0f}s ETA {eta:,.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
