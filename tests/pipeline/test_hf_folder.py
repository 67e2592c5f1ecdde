"""Tokenizer directories load with transformers' AutoTokenizer, special tokens known, ids identical to ours."""

from __future__ import annotations

import json

import transformers

from tests.conftest import sample_texts
from tokshard.pipeline import hf_folder
from tokshard.pipeline.tokenizer import BOS, SPECIAL_TOKENS


def test_autotokenizer_loads_the_directory_with_special_tokens(small_tokenizer_dir, small_tokenizer):
    hf = transformers.AutoTokenizer.from_pretrained(str(small_tokenizer_dir))
    assert hf.bos_token == BOS and hf.bos_token_id == small_tokenizer.bos_id
    assert hf.pad_token == "<|pad|>" and hf.pad_token_id == small_tokenizer.special_tokens["<|pad|>"]
    assert set(hf.all_special_tokens) == set(SPECIAL_TOKENS)
    assert len(hf) == small_tokenizer.vocab_size


def test_autotokenizer_encodes_pads_and_decodes_like_tokshard(small_tokenizer_dir, small_tokenizer):
    hf = transformers.AutoTokenizer.from_pretrained(str(small_tokenizer_dir))
    texts = [*sample_texts(20), "Grüße, 世界 — ünïcödé", "tab\tand\r\nnewlines"]
    for text in texts:
        ids = hf(text)["input_ids"]
        assert ids == small_tokenizer.encode(text)  # <|bos|> first, from tokenizer.json's template
        assert hf.decode(ids, skip_special_tokens=True) == text
    batch = hf(["short", "a longer text here"], padding=True)
    pad = small_tokenizer.special_tokens["<|pad|>"]
    assert batch["input_ids"][0][-1] == pad and batch["attention_mask"][0][-1] == 0
    assert len(batch["input_ids"][0]) == len(batch["input_ids"][1])


def test_special_tokens_map_lists_every_special_token(small_tokenizer_dir, small_tokenizer):
    special_map = json.loads((small_tokenizer_dir / hf_folder.SPECIAL_TOKENS_MAP_JSON).read_text())
    named = {special_map["bos_token"]["content"], special_map["pad_token"]["content"]}
    named |= {t["content"] for t in special_map["additional_special_tokens"]}
    assert named == set(small_tokenizer.special_tokens)
    assert "eos_token" not in special_map  # documents are separated by <|bos|>: no end-of-document token exists


def test_the_copy_an_encode_run_keeps_loads_too(small_tokenizer_dir, small_tokenizer, tmp_path):
    from tokshard.pipeline import jobs

    jobs.copy_tokenizer(small_tokenizer_dir, tmp_path)  # what OUT/tokenizer gets
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.pad_token == "<|pad|>" and hf("a b")["input_ids"] == small_tokenizer.encode("a b")
