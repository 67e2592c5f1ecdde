"""What a service instance is configured with: the tokenizer, the optional checkpoint, the API key and the limits.

One plain dataclass, so the CLI, the tests and the uvicorn worker processes (which rebuild the app from an
environment variable, see `from_env`) all describe a server the same way. Stdlib only: service.cli imports it
while building `tokshard --help`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

# uvicorn's worker processes are spawned fresh; they read the parent's configuration from here.
CONFIG_ENV = "TOKSHARD_SERVICE_CONFIG"
# The API key is read from this variable when no --api-key is given (a flag shows in `ps`, the environment does not).
API_KEY_ENV = "TOKSHARD_API_KEY"


@dataclass(frozen=True)
class Limits:
    """Per-request limits; a request over any of them is refused with 413 before any tokenizing happens.

    Defaults are sized so a 1 MB batch of documents fits comfortably and a single request cannot hold a worker
    for more than about a second of CPU.
    """

    max_body_bytes: int = 16 << 20  # the HTTP request body, as sent
    max_batch: int = 4096  # texts in one tokenize/bpb request, sequences in one detokenize request
    max_text_bytes: int = 4 << 20  # UTF-8 bytes of one text
    max_tokens: int = 4 << 20  # ids in one detokenize sequence
    max_bpb_bytes: int = 256 << 10  # UTF-8 bytes of all texts of one /v1/bpb request (the model is the slow part)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {f.name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ServiceConfig:
    tokenizer: str  # tokenizer directory (pipeline.Tokenizer.load)
    checkpoint: str | None = None  # inference checkpoint for /v1/bpb (trainer.checkpoint.load_inference)
    api_key: str | None = None  # when set, every route except the health probes and the docs needs `Bearer KEY`
    limits: Limits = field(default_factory=Limits)
    # Requests with at most this many characters of text are encoded on the event loop, coalesced with the other
    # small requests ready at the same moment (service/batching.py): for them a thread hop costs more than the
    # encode itself (measured in docs/benchmarks.md). Larger ones go to a thread pool.
    inline_chars: int = 8192
    coalesce: bool = True  # off: each small request is its own engine call (for comparison; see the benchmark)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServiceConfig:
        raw = (environ if environ is not None else os.environ).get(CONFIG_ENV)
        if not raw:
            raise ValueError(f"{CONFIG_ENV} is not set: start the service with `tokshard serve`")
        data = json.loads(raw)
        return cls(**{**data, "limits": Limits(**data["limits"])})
