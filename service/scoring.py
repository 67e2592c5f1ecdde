"""Bits-per-byte of texts under a trained checkpoint: the trainer's own scorer, behind the service's limits.

torch and trainer/ are imported only here and only when a checkpoint is configured, so `tokshard serve` without
`--checkpoint` runs on an installation without the trainer extra. A checkpoint trained with another tokenizer is
refused at start-up: its ids would mean different text and every score would be silently wrong.

Bits-per-byte has one definition, the trainer's `Score` (trainer/bpb.py): per text we return its raw sums
(nats, bytes, tokens) next to its `bpb`, and the request's aggregate is the `Score` of those sums added up, so a
client can combine any number of requests exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tokshard.pipeline.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch is imported only when a checkpoint is configured
    from tokshard.trainer.bpb import Score


@dataclass
class Scorer:
    model: Any  # trainer.model.GPT in eval mode
    context_len: int
    name: str
    step: int
    tokenizer_sha256: str
    vocab_size: int

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "step": self.step, "context_len": self.context_len,
                "vocab_size": self.vocab_size, "tokenizer_sha256": self.tokenizer_sha256}

    def score(self, sequences: Sequence[np.ndarray | list[int]], token_bytes: Any) -> list[Score]:
        """One Score per sequence (each starts with <|bos|>), via trainer.bpb."""
        from tokshard.trainer.bpb import score_sequences

        return score_sequences(self.model, sequences, token_bytes, self.context_len, device="cpu")


def total(scores: list[Score]) -> Score:
    """The Score of all the texts together (Score's own sum: nats, bytes and tokens added, then the ratio)."""
    from tokshard.trainer.bpb import Score

    return sum(scores, Score(0.0, 0, 0))


def as_json(score: Score) -> dict[str, Any]:
    """A Score as the API's BpbScore object."""
    return {"bpb": score.bpb, "nats": score.nats, "bytes": score.bytes, "tokens": score.tokens}


def load_scorer(path: str, tokenizer: Tokenizer) -> Scorer:
    """Load CKPT for scoring; ValueError (a clear start-up error) when it cannot serve this tokenizer."""
    try:
        from tokshard.trainer.checkpoint import load_inference
    except ModuleNotFoundError as e:
        if e.name not in ("torch", "tokshard.trainer", "tokshard.trainer.checkpoint"):
            raise
        raise ValueError(f"--checkpoint needs the trainer extra ({e.name} is not installed): "
                         "pip install 'tokshard[trainer]', or serve without --checkpoint") from None
    inference = load_inference(path, device="cpu")
    if inference.tokenizer_sha256 != tokenizer.sha256:
        raise ValueError(f"checkpoint {path} was trained with tokenizer sha256 {inference.tokenizer_sha256}, but "
                         f"--tokenizer has sha256 {tokenizer.sha256}: serve it with the tokenizer it was trained "
                         "on (the run's data directory has it under tokenizer/)")
    if inference.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"checkpoint {path} has a vocabulary of {inference.config.vocab_size} ids but the "
                         f"tokenizer has {tokenizer.vocab_size}")
    return Scorer(model=inference.model, context_len=inference.config.seq_len, name=inference.name,
                  step=inference.step, tokenizer_sha256=inference.tokenizer_sha256,
                  vocab_size=inference.config.vocab_size)
