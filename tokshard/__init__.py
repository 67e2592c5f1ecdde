"""tokshard: train a byte-level BPE tokenizer and turn pretraining corpora into Arrow token shards with Ray.

This package is the one import name the project installs. Its rooms keep their own folders in the repository and
are installed beneath it: `tokshard.pipeline` (the core: tokenizer, shards, sources, Ray jobs, CLI),
`tokshard.service` (the HTTP API) and `tokshard.trainer` (the PyTorch GPT trainer). The names below are the small
public API most users need; `tokshard.data` (packed training rows for any PyTorch trainer) is imported on its own,
since it needs torch and this package must not; everything else lives in the room that owns it.
"""

from __future__ import annotations

from pathlib import Path

# In a source checkout the rooms are folders beside this one, not beneath it. The installed package (wheel or
# editable) maps them here; this line covers the checkout itself on sys.path, e.g. a Ray job's working_dir, where
# this folder would otherwise shadow the installed package and hide its rooms.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "pipeline" / "__init__.py").is_file():
    __path__.append(str(_checkout))

from tokshard.pipeline.manifest import Manifest  # noqa: E402
from tokshard.pipeline.shards import ShardReader, write_shard  # noqa: E402
from tokshard.pipeline.tokenizer import BOS, SPECIAL_TOKENS, Tokenizer  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BOS", "SPECIAL_TOKENS", "Manifest", "ShardReader", "Tokenizer", "__version__", "write_shard"]
