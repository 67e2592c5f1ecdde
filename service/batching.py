"""Small tokenize requests that arrive together are encoded together, in one engine call.

Each engine call has a fixed cost next to the text's own: for one 1 KB text through `Tokenizer.encode_batch`,
18 us of CPU with gigatoken and 36 us with fastokens, against 8 and 33 us per text when eight texts share a call
(measured in docs/benchmarks.md, "Encoder engines"). Under concurrent load many requests are ready in the same
event-loop iteration, so each small request parks its (already validated) texts here and awaits a future; the first
one schedules a flush with `call_soon`, which runs after every request task already queued in that iteration has
added its texts. The flush is one `encode_batch` on the event loop: only requests under `inline_chars` come here,
and a flush never holds more than `max_chars` (reaching it flushes at once), so the loop is never blocked for long.
A request that is cancelled while waiting (its client went away) just has its result dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from tokshard.service.engine import Engine


class Coalescer:
    def __init__(self, engine: Engine, max_chars: int, on_flush: Callable[[int], None] | None = None) -> None:
        self.engine = engine
        self.max_chars = max_chars
        self.on_flush = on_flush  # called with the number of texts of each engine call (a metric)
        self._pending: list[tuple[Sequence[str], asyncio.Future[list[np.ndarray]]]] = []
        self._chars = 0

    async def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids (`<|bos|>` first, numpy views: `Engine.encode_checked`) of `texts`, which the caller has already
        checked (`Engine.utf8`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._pending.append((texts, future))
        self._chars += sum(map(len, texts))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        if self._chars >= self.max_chars:
            self._flush()
        return await future

    def _flush(self) -> None:
        pending, self._pending, self._chars = self._pending, [], 0
        if not pending:
            return
        texts = [t for p in pending for t in p[0]]
        if self.on_flush is not None:
            self.on_flush(len(texts))
        try:
            ids = self.engine.encode_checked(texts)
        except Exception as e:  # not a client error (inputs were checked): every waiting request gets the 500
            for _, future in pending:
                if not future.done():
                    future.set_exception(e)
            return
        pos = 0
        for batch, future in pending:
            if not future.done():
                future.set_result(ids[pos : pos + len(batch)])
            pos += len(batch)
