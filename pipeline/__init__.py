"""tokshard's core: BPE tokenizer, Arrow token shards, corpus sources, Ray jobs and the `tokshard` CLI.

Installed as `tokshard.pipeline`. The public surface is small: `Tokenizer` (load/encode/decode), `ShardReader`
(zero-copy view of a shard), `Manifest`, and the two jobs `train_tokenizer` and `encode`. `service/` and
`trainer/` build on it; it never imports them.
"""

from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.shards import ShardReader, write_shard
from tokshard.pipeline.tokenizer import BOS, SPECIAL_TOKENS, Tokenizer

__all__ = ["BOS", "SPECIAL_TOKENS", "Manifest", "ShardReader", "Tokenizer", "write_shard"]
