"""Refusals that happen before any route runs: the API key (401) and the request body size (413).

Both are plain ASGI middleware so a refused request costs no JSON parsing and no validation. The body limit
trusts Content-Length when there is one (the server enforces that the body matches it) and otherwise counts the
chunks as they arrive, so a chunked upload is cut off at the limit instead of being buffered whole.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokshard.service.errors import ServiceError, error_response

# Open without a key: probes must work for orchestrators that hold no secrets, and the API description is public.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/health", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


class ApiKeyMiddleware:
    """`Authorization: Bearer KEY` on every path except OPEN_PATHS; compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if given is not None and hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        reason = "no Authorization header" if given is None else "the API key does not match"
        response = error_response(401, f"{reason}: send `Authorization: Bearer <key>` with the key the server "
                                  "was started with", "unauthorized", None, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    def _refusal(self, size: str) -> ServiceError:
        return ServiceError(413, f"the request body is {size} bytes; the limit is {self.limit:,}: send fewer or "
                            "shorter texts per request", "body_too_large", None, {"Connection": "close"})

    async def _refuse(self, error: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(error.status, error.message, error.type, None, error.headers)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit():
            if int(length) > self.limit:
                await self._refuse(self._refusal(f"{int(length):,}"), scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._refusal(f"more than {self.limit:,}")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except ServiceError as error:  # normally the app's handler answers it; this is the fallback
            if started or error.status != 413:
                raise
            await self._refuse(error, scope, receive, send)
