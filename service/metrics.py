"""Prometheus metrics: requests and errors by route and status, latency histograms, tokens and bytes processed.

Counted in an ASGI middleware (outside the routes, so 401/413 refusals and 404s count too) plus explicit
`tokens`/`text_bytes` increments from the routes. Routes are labelled by their template, never by the raw path,
so a scanner probing random URLs adds one `<unmatched>` series, not thousands.

With `tokshard serve --workers N > 1` every uvicorn worker is its own process; prometheus_client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set by the CLI before any worker starts) makes each one write its values to
memory-mapped files in that directory, and /metrics, whichever worker answers it, sums all of them. In that mode
the per-process collectors (process_resident_memory_bytes, CPU seconds) are not available.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# From sub-millisecond single-text tokenizes to multi-second bits-per-byte batches.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's metric objects, in a registry of their own (several apps can live in one test process)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)
        self.requests = Counter("tokshard_http_requests", "HTTP requests answered, by route template, method and "
                                "status", ["route", "method", "status"], registry=self.registry)
        self.errors = Counter("tokshard_http_errors", "Error responses by status and error type (the `type` of "
                              "the error envelope)", ["status", "type"], registry=self.registry)
        self.latency = Histogram("tokshard_http_request_duration_seconds", "Time from request to the last byte "
                                 "of the response, by route template", ["route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.tokens = Counter("tokshard_tokens", "Token ids produced (tokenize), decoded (detokenize) or scored "
                              "(bpb)", ["endpoint"], registry=self.registry)
        self.coalesced = Histogram("tokshard_coalesced_batch_texts", "Texts per engine call made for small "
                                   "requests encoded together (service/batching.py)",
                                   buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.text_bytes = Counter("tokshard_text_bytes", "UTF-8 bytes of text tokenized, decoded or scored",
                                  ["endpoint"], registry=self.registry)

    def count(self, endpoint: str, tokens: int, text_bytes: int) -> None:
        self.tokens.labels(endpoint).inc(tokens)
        self.text_bytes.labels(endpoint).inc(text_bytes)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Times every HTTP request and counts it by route, method and status; error bodies give the error type."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)
        # labels() takes a lock and hashes its arguments on every call; the set of label values is small.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = self._children[key] = (m.requests.labels(route, method, str(status)), m.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None) or scope.get("path", "")
        return path if path in self.routes else UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        error_body: list[bytes] = []

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400:
                error_body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # bounded label values
            self._observe(self._route(scope), method, status, time.perf_counter() - start)
            if status >= 400:
                self.metrics.errors.labels(str(status), _error_type(b"".join(error_body))).inc()


def _error_type(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "unknown"
