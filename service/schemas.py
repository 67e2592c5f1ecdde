"""Request and response shapes, as pydantic models: they validate requests and document every endpoint in /docs.

Our /v1 requests are strict (no "1" for true, no 3.0 for an id) and refuse unknown fields, so a typo such as
`add_bos` is an error rather than silently ignored. The unversioned /tokenize and /detokenize take vLLM's
shapes (TokenizeCompletionRequest / TokenizeChatRequest / DetokenizeRequest) and, like vLLM, ignore fields they
do not use (`model`, chat-template options). Response models are documentation: the routes serialize plain
dicts directly (pydantic-core's JSON writer), which costs a fraction of re-validating a 250k-id response.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", strict=True)
_VLLM = ConfigDict(extra="allow", strict=True)


# -- errors -------------------------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str = Field(description="what was wrong and what to do about it")
    type: str = Field(description="machine-readable reason, e.g. invalid_json, token_id_out_of_range, "
                      "batch_too_large, text_too_large, body_too_large, unauthorized, model_not_loaded")
    param: str | None = Field(description="the offending request field, with its index: prompt[3], tokens[0][17]")
    code: int = Field(description="the HTTP status")


class ErrorResponse(BaseModel):
    error: ErrorInfo


# -- /v1/tokenize -------------------------------------------------------------------------------------------
class TokenizeRequest(BaseModel):
    model_config = _STRICT
    prompt: str | list[str] = Field(description="one text, or a list of texts encoded in one batch",
                                    examples=["Hello, world!"])
    add_special_tokens: bool = Field(True, description="prepend <|bos|> (special-token text inside the prompt is "
                                     "always encoded as plain text)")
    return_token_strs: bool = Field(False, description="also return each id's HF token string (byte-level "
                                    "alphabet, e.g. 'Ġthe')")
    return_pieces: bool = Field(False, description="also return each id's text, bytes and UTF-8 byte span")


class Piece(BaseModel):
    id: int
    text: str | None = Field(description="the token's text, or null when its bytes are not valid UTF-8 on their "
                             "own (part of a multi-byte character)")
    bytes: list[int] = Field(description="the token's bytes in the input ([] for <|bos|>, which spans none)")
    special: bool
    start: int = Field(description="UTF-8 byte offset in the prompt where the token starts")
    end: int = Field(description="UTF-8 byte offset where it ends (exclusive); prompt_utf8[start:end] == bytes")


class TokenizeResult(BaseModel):
    count: int
    max_model_len: int = Field(description="the loaded model's context length; without a model, the most ids one "
                               "text may produce under the limits (max_text_bytes + 1)")
    tokens: list[int]
    token_strs: list[str] | None = Field(None, description="present when return_token_strs")
    pieces: list[Piece] | None = Field(None, description="present when return_pieces")


class TokenizeItem(TokenizeResult):
    index: int


class TokenizeBatchResult(BaseModel):
    data: list[TokenizeItem]


# -- /v1/detokenize -----------------------------------------------------------------------------------------
class DetokenizeRequest(BaseModel):
    model_config = _STRICT
    tokens: list[int] | list[list[int]] = Field(description="one sequence of ids, or a list of sequences",
                                                examples=[[32768, 15496, 11, 995, 0]])
    skip_special_tokens: bool = Field(False, description="drop special tokens instead of writing their text")


class DetokenizeResult(BaseModel):
    prompt: str
    lossless: bool = Field(description="false when the ids' bytes were not valid UTF-8 and U+FFFD replaced some")


class DetokenizeItem(DetokenizeResult):
    index: int


class DetokenizeBatchResult(BaseModel):
    data: list[DetokenizeItem]


# -- /v1/bpb ------------------------------------------------------------------------------------------------
class BpbRequest(BaseModel):
    model_config = _STRICT
    texts: str | list[str] = Field(description="one text or a list of texts", examples=[["The cat sat on the mat."]])


class BpbScore(BaseModel):
    bpb: float | None = Field(description="nats / (ln 2 * bytes); null for a text with no bytes")
    nats: float = Field(description="sum of -ln p(token) over the text's tokens (<|bos|> is context only)")
    bytes: int = Field(description="UTF-8 bytes of the text")
    tokens: int = Field(description="tokens scored")


class BpbItem(BpbScore):
    index: int


class ModelInfo(BaseModel):
    name: str
    step: int
    context_len: int
    vocab_size: int
    tokenizer_sha256: str


class BpbResponse(BaseModel):
    model: ModelInfo
    data: list[BpbItem]
    aggregate: BpbScore = Field(description="from the raw sums: sum(nats) / (ln 2 * sum(bytes))")


# -- vLLM-compatible /tokenize, /detokenize -----------------------------------------------------------------
class VllmTokenizeRequest(BaseModel):
    """vLLM's TokenizeCompletionRequest (prompt) or TokenizeChatRequest (messages; refused: no chat template)."""

    model_config = _VLLM
    model: str | None = None
    prompt: str | None = None
    messages: list[Any] | None = None
    add_special_tokens: bool | None = Field(None, description="default true (prepend <|bos|>)")
    return_token_strs: bool | None = False


class VllmTokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class VllmDetokenizeRequest(BaseModel):
    model_config = _VLLM
    model: str | None = None
    tokens: list[int]


class VllmDetokenizeResponse(BaseModel):
    prompt: str


# -- info and health ----------------------------------------------------------------------------------------
class TokenizerInfo(BaseModel):
    vocab_size: int
    bos_id: int
    special_tokens: dict[str, int]
    pattern_name: str
    pattern: str
    sha256: str
    engine: str


class LimitsInfo(BaseModel):
    max_body_bytes: int
    max_batch: int
    max_text_bytes: int
    max_tokens: int
    max_bpb_bytes: int


class InfoResponse(BaseModel):
    version: str
    tokenizer: TokenizerInfo
    model: ModelInfo | None
    limits: LimitsInfo
    auth: bool = Field(description="whether an API key is required")


class HealthResponse(BaseModel):
    status: str
