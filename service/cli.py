"""`tokshard serve`: run the HTTP service under uvicorn.

Registered through the `tokshard.commands` entry point. Only argparse and the stdlib config are imported here;
FastAPI, uvicorn (and torch, with --checkpoint) load when the command runs, so `tokshard --help` stays fast and
works without the service extra.

The tokenizer and checkpoint are loaded before uvicorn starts, so a wrong path or a checkpoint of another tokenizer
is a one-line error and exit status 2 instead of a worker traceback. With --workers N > 1 uvicorn spawns N
processes that each load them again from the configuration passed in TOKSHARD_SERVICE_CONFIG, and the metrics
switch to prometheus_client's multiprocess mode in a private temporary directory (removed at exit).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
import tempfile

from tokshard.service.config import API_KEY_ENV, CONFIG_ENV, Limits, ServiceConfig

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # service.metrics reads the same variable (not imported: no FastAPI here)
DEFAULT_HOST = "127.0.0.1"  # loopback only: exposing the service is a choice (--host 0.0.0.0, with an API key)
DEFAULT_PORT = 8000


def register(sub: argparse._SubParsersAction) -> None:
    defaults = Limits()
    p = sub.add_parser("serve", help="serve tokenize / detokenize / bits-per-byte over HTTP (FastAPI)",
                       description="Serve a tokenizer (and optionally a trained checkpoint for /v1/bpb) over HTTP. "
                       "OpenAPI docs at /docs.")
    p.set_defaults(func=cmd_serve)
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (from `tokshard train-tokenizer`)")
    p.add_argument("--checkpoint", default=None, help="inference checkpoint for /v1/bpb (needs the trainer extra)")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (loopback only unless you choose otherwise)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port to listen on")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer KEY` (default: ${API_KEY_ENV} "
                   "when set; prefer the variable, a flag is visible in `ps`)")
    limits = p.add_argument_group("limits (413 when exceeded; reported by /v1/info)")
    limits.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, help="HTTP request body")
    limits.add_argument("--max-batch", type=int, default=defaults.max_batch, help="texts or sequences per request")
    limits.add_argument("--max-text-bytes", type=int, default=defaults.max_text_bytes, help="UTF-8 bytes per text")
    limits.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="ids per detokenize sequence")
    limits.add_argument("--max-bpb-bytes", type=int, default=defaults.max_bpb_bytes,
                        help="UTF-8 bytes of text per /v1/bpb request")
    p.add_argument("--inline-chars", type=int, default=ServiceConfig.inline_chars,
                   help="requests with at most this many characters are encoded on the event loop, together with "
                   "the other small requests ready at that moment; larger ones in a thread pool (0: always the pool)")
    p.add_argument("--coalesce", action=argparse.BooleanOptionalAction, default=True,
                   help="encode small requests that arrive together in one engine call")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False,
                   help="log every request (off by default: a log line per request costs throughput)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.inline_chars < 0:
        raise ValueError(f"--inline-chars must be >= 0, got {args.inline_chars}")
    limits = Limits(max_body_bytes=args.max_body_bytes, max_batch=args.max_batch, max_text_bytes=args.max_text_bytes,
                    max_tokens=args.max_tokens, max_bpb_bytes=args.max_bpb_bytes)
    return ServiceConfig(tokenizer=args.tokenizer, checkpoint=args.checkpoint,
                         api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, limits=limits,
                         inline_chars=args.inline_chars, coalesce=args.coalesce)


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    own_metrics_dir = None
    if args.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Must be set before prometheus_client is imported anywhere (it picks its storage at import time).
        own_metrics_dir = tempfile.mkdtemp(prefix="tokshard-metrics-")
        os.environ[MULTIPROC_ENV] = own_metrics_dir
    try:
        try:
            import uvicorn

            from tokshard.service.app import create_app
            from tokshard.service.state import load_state
        except ModuleNotFoundError as e:
            raise ValueError(f"tokshard serve needs the service extra ({e.name} is not installed): "
                             "pip install 'tokshard[service]'") from None
        state = load_state(config)
        tok = state.engine.tokenizer
        model = f", model {state.scorer.name} step {state.scorer.step}" if state.scorer else ""
        print(f"tokshard serve: tokenizer {args.tokenizer} ({tok.vocab_size:,} ids, sha256 {tok.sha256[:12]}){model}"
              f" on http://{args.host}:{args.port} with {args.workers} worker(s); API key "
              f"{'required' if config.api_key else 'not required'}", file=sys.stderr)
        if not config.api_key and not _is_loopback(args.host):
            print(f"tokshard serve: warning: binding {args.host} without an API key: anyone who can reach this "
                  f"port can use the service (set ${API_KEY_ENV})", file=sys.stderr)
        common = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": args.access_log,
                  "server_header": False}
        if args.workers == 1:
            uvicorn.run(create_app(config, state), **common)
        else:
            del state  # each worker loads its own
            os.environ[CONFIG_ENV] = config.to_env()
            uvicorn.run("tokshard.service.app:app_from_env", factory=True, workers=args.workers, **common)
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
    return 0
