"""One error shape for every failure: `{"error": {"message", "type", "param", "code"}}`.

`code` is the HTTP status (as vLLM's ErrorResponse has it), `type` a stable machine-readable reason
(`invalid_json`, `token_id_out_of_range`, `batch_too_large`, ...), `param` the offending request field with its
index (`prompt[3]`, `tokens[0][17]`) or null, and `message` says what was wrong and what to do. FastAPI's own
errors (malformed JSON, schema validation, 404, 405) are rewritten into this shape here, so no client ever sees
`{"detail": ...}` or an HTML page; anything unexpected becomes a logged 500 with the same shape.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("tokshard.service")

# The reason for each status FastAPI/Starlette can raise on its own (404, 405...); ours pass their own `type`.
_DEFAULT_TYPES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                  413: "too_large", 415: "unsupported_media_type", 422: "invalid_request", 503: "not_ready"}
# pydantic puts union branches in the error location ("prompt", "list[str]", 3); they are not request fields.
_UNION_TAG = re.compile(r"^(str|int|bool|float|list\[.*\]|dict\[.*\]|[A-Za-z_]+\[.*\])$")


class ServiceError(StarletteHTTPException):
    """A client error with its status, reason and the request field it concerns.

    An HTTPException so that FastAPI re-raises it untouched when it happens while the body is being read
    (the body-size guard), instead of turning it into a generic 400.
    """

    def __init__(self, status: int, message: str, type_: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.status, self.message, self.type, self.param = status, message, type_, param


def envelope(status: int, message: str, type_: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_ or _DEFAULT_TYPES.get(status, "error"), "param": param,
                      "code": status}}


def error_response(status: int, message: str, type_: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(envelope(status, message, type_, param), ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def param_path(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """("body", "prompt", "list[str]", 3) -> "prompt[3]"."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header") and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _UNION_TAG.match(part):
            out += f".{part}" if out else part
    return out or None


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    kind = err.get("type", "")
    if kind == "missing" and param is None:
        return "the request has no body: send a JSON object (Content-Type: application/json)"
    if kind == "missing":
        return f"{param} is required"
    if kind == "extra_forbidden":
        return f"unknown field {param!r}: see /docs for this endpoint's fields"
    if kind == "model_attributes_type" and param is None:
        return "the request body must be a JSON object (Content-Type: application/json)"
    return f"{param or 'body'}: {err.get('msg', 'invalid value')}"


async def _on_validation_error(request: Request, exc: RequestValidationError) -> Response:
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and content_type and "json" not in content_type.lower():
        return error_response(415, f"the request body is {content_type.split(';')[0]}; send JSON with "
                              "Content-Type: application/json", "unsupported_media_type")
    errors = list(exc.errors())
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        detail = (bad_json.get("ctx") or {}).get("error", "")
        pos = bad_json["loc"][-1] if bad_json.get("loc") else "?"
        return error_response(400, f"the request body is not valid JSON: {detail} at character {pos}", "invalid_json")
    # Report the deepest error: for `prompt: ["a", 3]` that is prompt[1], not the str branch of the union.
    err = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {}
    param = param_path(err.get("loc", ()))
    message = _validation_message(err, param)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, message, "invalid_request", param)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    status = exc.status_code
    if status == 404:
        message = f"no route {request.url.path}: see /docs for the endpoints"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}; use {exc.headers.get('Allow', '?')}" \
            if exc.headers else f"{request.method} is not allowed on {request.url.path}"
    elif status == 400:  # FastAPI could not read the body at all (e.g. bytes that are not UTF-8)
        return error_response(400, f"the request body could not be read as JSON ({exc.detail}): send UTF-8 JSON",
                              "invalid_json", headers=exc.headers)
    else:
        message = str(exc.detail) if exc.detail else HTTPStatus(status).phrase
    return error_response(status, message, headers=exc.headers)


async def _on_service_error(request: Request, exc: ServiceError) -> Response:
    return error_response(exc.status, exc.message, exc.type, exc.param, exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error: the server failed on this request; its log has the traceback",
                          "internal_error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(Exception, _on_unexpected)
