"""Live progress of an encode run: tasks report per row group to a tiny Ray actor, the driver displays it.

In a terminal the driver shows a tqdm bar over text bytes (documents, tokens, MB, tok/s, ETA); when stderr is
not a terminal (CI, `ray job submit` logs) it prints one plain line every `LOG_EVERY_S` seconds instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any

LOG_EVERY_S = 10.0


class _Counter:
    def __init__(self) -> None:
        self.documents = self.tokens = self.bytes = 0

    def add(self, documents: int, tokens: int, nbytes: int) -> None:
        self.documents += documents
        self.tokens += tokens
        self.bytes += nbytes

    def totals(self) -> tuple[int, int, int]:
        return self.documents, self.tokens, self.bytes


class Progress:
    """Driver side: owns the counter actor and renders it. Call `update()` often and `close()` once."""

    def __init__(self, total_bytes: int, show: bool | None = None) -> None:
        import ray

        self.actor: Any = ray.remote(num_cpus=0)(_Counter).remote()
        self.total_bytes = max(total_bytes, 1)
        self.start = self._last_log = time.time()
        self._pending: Any = None
        self.documents = self.tokens = self.bytes = 0
        interactive = sys.stderr.isatty() if show is None else show
        self._bar = None
        if interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                             desc="encode", file=sys.stderr, dynamic_ncols=True)
        self.quiet = show is False

    def update(self) -> None:
        import ray

        if self._pending is None:
            self._pending = self.actor.totals.remote()
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return
        self.documents, self.tokens, self.bytes = ray.get(self._pending)
        self._pending = None
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.tokens / elapsed
        if self._bar is not None:
            self._bar.n = min(self.bytes, self.total_bytes)
            self._bar.set_postfix_str(f"{self.documents:,} docs, {self.tokens:,} tok, {rate / 1e6:.2f} Mtok/s",
                                      refresh=True)
        elif not self.quiet and time.time() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.time()
            done = self.bytes / self.total_bytes
            eta = elapsed * (1 - done) / done if done > 0 else float("nan")
            print(f"encode: {done:6.1%} {self.documents:,} docs {self.tokens:,} tokens "
                  f"{self.bytes / 1e6:,.1f} MB {rate / 1e6:.2f} Mtok/s ETA {eta:,.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
