"""What a running service holds between requests, and where CPU work runs.

Loaded once per process at start-up: the tokenizer (as an `Engine`), the optional model (as a `Scorer`), the
metrics. Where a request's CPU work happens depends on its size (`ServiceConfig.inline_chars`): small requests
are encoded on the event loop, together with the other small requests ready at the same moment (service/
batching.py; a thread hop would cost more than the encode), larger ones in a thread pool, where the Rust encoder
releases the GIL so other requests keep being served. Model scoring always runs on one dedicated thread: torch
already spreads one forward pass over every core, and two at once would only fight for them.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tokshard.pipeline.tokenizer import Tokenizer
from tokshard.service.batching import Coalescer
from tokshard.service.config import ServiceConfig
from tokshard.service.engine import Engine
from tokshard.service.metrics import Metrics
from tokshard.service.scoring import Scorer, load_scorer

T = TypeVar("T")


@dataclass
class ServiceState:
    config: ServiceConfig
    engine: Engine
    scorer: Scorer | None
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False
    _pool: ThreadPoolExecutor | None = None
    _model_pool: ThreadPoolExecutor | None = None
    coalescer: Coalescer = field(init=False)

    def __post_init__(self) -> None:
        # A flush of coalesced small requests holds at most 8 of the largest ones: bounded time on the loop.
        self.coalescer = Coalescer(self.engine, max_chars=8 * max(self.config.inline_chars, 1),
                                   on_flush=lambda n: self.metrics.coalesced.observe(n))

    @property
    def max_model_len(self) -> int:
        return self.scorer.context_len if self.scorer else self.config.limits.max_text_bytes + 1

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="tokshard-cpu")
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokshard-model")
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        for pool in (self._pool, self._model_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._model_pool = None

    def small(self, chars: int) -> bool:
        return chars <= self.config.inline_chars or self._pool is None

    async def run(self, chars: int, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) inline when the request holds at most `inline_chars` characters, else in the pool."""
        if self.small(chars):
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def tokenize(self, texts: list[str], *, bos: bool, token_strs: bool, pieces: bool, batched: bool,
                       name: str = "prompt") -> tuple[list[dict[str, Any]], int]:
        """Response objects for `texts` and their UTF-8 byte total; small requests are coalesced."""
        options = {"bos": bos, "token_strs": token_strs, "pieces": pieces, "max_model_len": self.max_model_len}
        if not self.small(sum(map(len, texts))):
            work = functools.partial(self.engine.tokenize, texts, batched=batched, name=name, **options)
            return await asyncio.get_running_loop().run_in_executor(self._pool, work)
        data = self.engine.utf8(texts, name, batched)
        if self.config.coalesce:
            ids = await self.coalescer.encode(texts)
        else:
            ids = self.engine.encode_checked(texts)
        return self.engine.results(ids, **options), sum(map(len, data))

    async def run_model(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._model_pool is not None, "the service is not started"
        return await asyncio.get_running_loop().run_in_executor(self._model_pool, fn, *args)


def load_state(config: ServiceConfig) -> ServiceState:
    """Load the tokenizer and the checkpoint; ValueError / FileNotFoundError say what is wrong with either."""
    tokenizer = Tokenizer.load(config.tokenizer)
    scorer = load_scorer(config.checkpoint, tokenizer) if config.checkpoint else None
    return ServiceState(config=config, engine=Engine(tokenizer, config.limits), scorer=scorer)
