"""tokshard's core: BPE tokenizer, Arrow token shards, corpus sources, Ray jobs and the `tokshard` CLI.

The public surface is small: `Tokenizer` (load/encode/decode), `ShardReader` (zero-copy view of a shard),
`Manifest`, and the two jobs `train_tokenizer` and `encode`. `service/` and `trainer/` build on it; it never
imports them.
"""

from pipeline.manifest import Manifest
from pipeline.shards import ShardReader, write_shard
from pipeline.tokenizer import BOS, SPECIAL_TOKENS, Tokenizer

__all__ = ["BOS", "SPECIAL_TOKENS", "Manifest", "ShardReader", "Tokenizer", "write_shard"]
