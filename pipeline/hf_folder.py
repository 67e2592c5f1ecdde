"""The files that make a tokenizer directory load with `transformers.AutoTokenizer.from_pretrained(DIR)`.

`tokenizer.json` alone loads as a tokenizer, but transformers then knows none of its special tokens: no
`bos_token`, no `pad_token` (batch padding fails), and `<|reserved_i|>` are not marked special. These two small
files name them; the fast tokenizer class reads everything else from tokenizer.json (which already prepends
`<|bos|>` through its post-processor). There is no end-of-document token: documents are separated by the next
document's `<|bos|>`, so `eos_token` is left unset rather than pointed at a token that means something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokshard.pipeline import atomic

TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_JSON = "special_tokens_map.json"
FILES = (TOKENIZER_CONFIG_JSON, SPECIAL_TOKENS_MAP_JSON)
PAD = "<|pad|>"


def _token_entry(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def hf_files(special_tokens: dict[str, int], bos: str) -> dict[str, dict[str, Any]]:
    """The JSON of tokenizer_config.json and special_tokens_map.json for a vocabulary's special tokens."""
    others = [t for t in sorted(special_tokens, key=special_tokens.__getitem__) if t not in (bos, PAD)]
    named = {"bos_token": bos, **({"pad_token": PAD} if PAD in special_tokens else {})}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **named,
        "additional_special_tokens": others,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": {str(i): _token_entry(t) for t, i in sorted(special_tokens.items(),
                                                                          key=lambda kv: kv[1])},
    }
    special_map = {**{k: _token_entry(v) for k, v in named.items()},
                   "additional_special_tokens": [_token_entry(t) for t in others]}
    return {TOKENIZER_CONFIG_JSON: config, SPECIAL_TOKENS_MAP_JSON: special_map}


def write_hf_files(directory: str | Path, special_tokens: dict[str, int], bos: str) -> None:
    """Write both files into a tokenizer directory, each atomically."""
    for name, content in hf_files(special_tokens, bos).items():
        atomic.write_json(Path(directory) / name, content)
