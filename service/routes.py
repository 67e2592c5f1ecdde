"""The endpoints: /v1/tokenize, /v1/detokenize, /v1/bpb, /v1/info, vLLM's /tokenize and /detokenize, health, metrics.

Handlers are thin: validate the batch size, hand the CPU work to `ServiceState` (small requests on the event loop,
coalesced; large ones in its thread pool; the model on its own thread), count tokens and bytes, and write the JSON
with pydantic-core (a Rust writer: a 1 MB batch answers with ~250k ids, ~10 ms to serialize, so large answers are
serialized in the pool too). A single text answers with one result object; a list answers with
`{"data": [{"index": i, ...}]}`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from tokshard.service import schemas, scoring
from tokshard.service.errors import ServiceError
from tokshard.service.state import ServiceState

if TYPE_CHECKING:  # /v1/bpb runs only with a checkpoint, i.e. with the trainer extra installed
    from tokshard.trainer.bpb import Score

VERSION = "0.1.0"
# Every error any route can answer, for /docs (the body is always schemas.ErrorResponse).
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse, "description": what}
    for status, what in [(400, "malformed JSON"), (401, "missing or wrong API key (when the server has one)"),
                         (413, "over a limit (body size, batch size, text length); see /v1/info"),
                         (415, "the body is not JSON (Content-Type)"),
                         (422, "invalid request: wrong field type, lone surrogate in a text, unknown token id")]
}

router = APIRouter()


def state(request: Request) -> ServiceState:
    return request.app.state.service


def to_json(content: Any) -> bytes:
    """orjson, with numpy arrays written directly: token ids stay numpy views from the engine to the socket (for a
    1 MB batch 2 ms, against 4.4 ms for pydantic_core on lists plus 6 ms to make those lists; docs/benchmarks.md)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(content: Any, status: int = 200) -> Response:
    return Response(to_json(content), status_code=status, media_type="application/json")


async def large_json_response(st: ServiceState, content: Any, chars: int) -> Response:
    """json_response, serialized in the thread pool when the request was large."""
    return Response(await st.run(chars, to_json, content), media_type="application/json")


def check_batch(st: ServiceState, n: int, param: str) -> None:
    if n > st.config.limits.max_batch:
        raise ServiceError(413, f"{param} holds {n:,} items; the limit is {st.config.limits.max_batch:,} per request: "
                           "split the batch", "batch_too_large", param)


def _as_batch(value: str | list[Any]) -> tuple[list[Any], bool]:
    return (value, True) if isinstance(value, list) else ([value], False)


def _batched(items: list[dict[str, Any]], batched: bool) -> dict[str, Any]:
    return {"data": [{"index": i, **item} for i, item in enumerate(items)]} if batched else items[0]


# -- tokenize / detokenize ----------------------------------------------------------------------------------
@router.post("/v1/tokenize", response_model=schemas.TokenizeResult | schemas.TokenizeBatchResult,
             responses=_ERRORS, tags=["tokens"])
async def tokenize(body: schemas.TokenizeRequest, request: Request) -> Response:
    """Text to ids (with <|bos|> first unless add_special_tokens is false); optionally token strings and pieces."""
    st = state(request)
    texts, batched = _as_batch(body.prompt)
    check_batch(st, len(texts), "prompt")
    items = await _tokenize(st, texts, body.add_special_tokens, body.return_token_strs, body.return_pieces, batched)
    return await large_json_response(st, _batched(items, batched), sum(map(len, texts)))


async def _tokenize(st: ServiceState, texts: list[str], bos: bool, strs: bool, pieces: bool, batched: bool
                    ) -> list[dict[str, Any]]:
    items, nbytes = await st.tokenize(texts, bos=bos, token_strs=strs, pieces=pieces, batched=batched)
    st.metrics.count("tokenize", sum(i["count"] for i in items), nbytes)
    return items


@router.post("/v1/detokenize", response_model=schemas.DetokenizeResult | schemas.DetokenizeBatchResult,
             responses=_ERRORS, tags=["tokens"])
async def detokenize(body: schemas.DetokenizeRequest, request: Request) -> Response:
    """Ids to text; `lossless` is false when the ids' bytes were not valid UTF-8 (U+FFFD replaced them)."""
    st = state(request)
    tokens = body.tokens
    batched = bool(tokens) and isinstance(tokens[0], list)
    seqs = tokens if batched else [tokens]
    check_batch(st, len(seqs), "tokens")
    work = 4 * sum(map(len, seqs))  # ~4 characters per id
    decoded = await st.run(work, _detokenize, st, seqs, body.skip_special_tokens, batched)
    return await large_json_response(st, _batched([{"prompt": d.text, "lossless": d.lossless} for d in decoded],
                                                  batched), work)


def _detokenize(st: ServiceState, seqs: list[list[int]], skip: bool, batched: bool) -> list[Any]:
    decoded = st.engine.detokenize(seqs, skip_special=skip, batched=batched)
    st.metrics.count("detokenize", sum(map(len, seqs)), sum(d.nbytes for d in decoded))
    return decoded


# -- vLLM-compatible ----------------------------------------------------------------------------------------
@router.post("/tokenize", response_model=schemas.VllmTokenizeResponse, responses=_ERRORS, tags=["vLLM-compatible"])
async def vllm_tokenize(body: schemas.VllmTokenizeRequest, request: Request) -> Response:
    """vLLM's /tokenize: `{"prompt", "add_special_tokens", "return_token_strs"}` -> count, max_model_len, tokens."""
    st = state(request)
    if body.messages is not None:
        raise ServiceError(422, "this tokenizer has no chat template, so `messages` cannot be rendered: send the "
                           "text as `prompt`", "chat_template_missing", "messages")
    if body.prompt is None:
        raise ServiceError(422, "prompt is required (a string)", "invalid_request", "prompt")
    bos = True if body.add_special_tokens is None else body.add_special_tokens
    strs = bool(body.return_token_strs)
    [item] = await _tokenize(st, [body.prompt], bos, strs, False, False)
    item.setdefault("token_strs", None)  # vLLM always has the key
    return json_response(item)


@router.post("/detokenize", response_model=schemas.VllmDetokenizeResponse, responses=_ERRORS,
             tags=["vLLM-compatible"])
async def vllm_detokenize(body: schemas.VllmDetokenizeRequest, request: Request) -> Response:
    """vLLM's /detokenize: `{"tokens": [ids]}` -> `{"prompt"}` (special tokens written as their text)."""
    st = state(request)
    [decoded] = await st.run(4 * len(body.tokens), _detokenize, st, [body.tokens], False, False)
    return json_response({"prompt": decoded.text})


# -- bits per byte ------------------------------------------------------------------------------------------
@router.post("/v1/bpb", response_model=schemas.BpbResponse,
             responses={**_ERRORS, 503: {"model": schemas.ErrorResponse, "description": "no model loaded"}},
             tags=["model"])
async def bpb(body: schemas.BpbRequest, request: Request) -> Response:
    """Bits per byte of each text under the loaded model, plus the aggregate over the raw sums."""
    st = state(request)
    if st.scorer is None:
        raise ServiceError(503, "no model is loaded: start the server with `tokshard serve --checkpoint CKPT` to "
                           "score text", "model_not_loaded")
    texts, batched = _as_batch(body.texts)
    check_batch(st, len(texts), "texts")
    scores = await st.run_model(_score, st, texts, batched)
    return json_response({"model": st.scorer.info(),
                          "data": [{"index": i, **scoring.as_json(s)} for i, s in enumerate(scores)],
                          "aggregate": scoring.as_json(scoring.total(scores))})


def _score(st: ServiceState, texts: list[str], batched: bool) -> list[Score]:
    assert st.scorer is not None
    ids, data = st.engine.encode(texts, name="texts", batched=batched)
    total = sum(map(len, data))
    if total > st.config.limits.max_bpb_bytes:
        raise ServiceError(413, f"texts hold {total:,} bytes of UTF-8; /v1/bpb scores at most "
                           f"{st.config.limits.max_bpb_bytes:,} per request: split them", "bpb_too_large", "texts")
    scores = st.scorer.score(ids, st.engine.tokenizer.token_bytes)
    st.metrics.count("bpb", sum(s.tokens for s in scores), total)
    return scores


# -- info, health, metrics ----------------------------------------------------------------------------------
@router.get("/v1/info", response_model=schemas.InfoResponse, tags=["service"])
async def info(request: Request) -> Response:
    """The tokenizer, the model (if any) and the limits this server enforces."""
    st = state(request)
    tok = st.engine.tokenizer
    return json_response({
        "version": VERSION,
        "tokenizer": {"vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "special_tokens": tok.special_tokens,
                      "pattern_name": tok.pattern_name, "pattern": tok.pattern, "sha256": tok.sha256,
                      "engine": tok.engine},
        "model": st.scorer.info() if st.scorer else None,
        "limits": asdict(st.config.limits),
        "auth": st.config.api_key is not None,
    })


@router.get("/livez", response_model=schemas.HealthResponse, tags=["service"])
async def livez() -> Response:
    """The process is up and its event loop answers (never needs the API key)."""
    return json_response({"status": "ok"})


@router.get("/readyz", response_model=schemas.HealthResponse,
            responses={503: {"model": schemas.ErrorResponse, "description": "not ready"}}, tags=["service"])
@router.get("/health", response_model=schemas.HealthResponse,
            responses={503: {"model": schemas.ErrorResponse, "description": "not ready"}}, tags=["service"])
async def readyz(request: Request) -> Response:
    """200 once the tokenizer (and the model, if configured) is loaded; 503 while starting or stopping."""
    if not state(request).ready:
        raise ServiceError(503, "the service is starting or stopping", "not_ready")
    return json_response({"status": "ready"})


@router.get("/metrics", tags=["service"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics (needs the API key when the server has one)."""
    body, content_type = state(request).metrics.render()
    return Response(body, media_type=content_type)
