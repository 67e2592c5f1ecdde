"""tokshard's HTTP service: tokenize, detokenize and bits-per-byte over JSON, for people and programs without Python.

`service.app.create_app(ServiceConfig(...))` builds the FastAPI app; `tokshard serve` (service/cli.py) runs it under
uvicorn. The tokenizer is pipeline's `Tokenizer` (ids equal `tokenizer.json`'s); the optional model for /v1/bpb
comes from trainer/ and is imported only when a checkpoint is configured, so the service runs without the trainer
extra. Nothing is imported here: `tokshard --help` loads service.cli and must not pay for FastAPI.
"""
