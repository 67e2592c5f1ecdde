"""The FastAPI app factory: routes, error handlers, guards and metrics around one `ServiceState`.

`create_app(config)` loads the tokenizer and the checkpoint in the lifespan (once per process, before the first
request); `create_app(config, state)` takes a state loaded beforehand, which is how `tokshard serve` reports a
bad tokenizer or checkpoint as a plain error before uvicorn starts. `app_from_env` is the factory uvicorn's
worker processes call when `--workers > 1` (the CLI passes the configuration in TOKSHARD_SERVICE_CONFIG).

Middleware, outermost first: metrics (sees every response, refusals included), API key, body size, then
FastAPI's own routing and validation.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tokshard.service import errors
from tokshard.service.config import ServiceConfig
from tokshard.service.guards import ApiKeyMiddleware, BodyLimitMiddleware
from tokshard.service.metrics import Metrics, MetricsMiddleware
from tokshard.service.routes import VERSION, router
from tokshard.service.state import ServiceState, load_state

DESCRIPTION = """Tokenize and detokenize with a tokshard tokenizer (ids equal its `tokenizer.json`'s), and score
text in bits per byte under a trained checkpoint. Every error is `{"error": {"message", "type", "param", "code"}}`.
`/tokenize` and `/detokenize` accept vLLM's request and response shapes."""


def create_app(config: ServiceConfig, state: ServiceState | None = None) -> FastAPI:
    metrics = state.metrics if state is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st = state if state is not None else await asyncio.to_thread(load_state, config)
        st.metrics = metrics
        app.state.service = st
        st.start()
        # ~100k long-lived objects (tokenizer tables, FastAPI's models) would otherwise be traversed by every
        # full collection: 30-50 ms pauses that showed up as the p99.9 latency. Frozen, they are never scanned.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            st.stop()

    app = FastAPI(title="tokshard", version=VERSION, description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    app.include_router(router)
    routes = {path for r in [*app.routes, *router.routes] if (path := getattr(r, "path", None))}
    # add_middleware wraps what is already there: the last one added runs first.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.limits.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app


def app_from_env() -> FastAPI:
    return create_app(ServiceConfig.from_env())
