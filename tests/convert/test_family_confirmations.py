"""Families that map onto existing tables, confirmed end to end through llama.cpp with the family harness:

* Phi-4-mini: ``phi3`` with partial rotary (0.75 of each head), long-rope factors, tied embeddings and a
  gpt-4o-style tokenizer;
* DeepSeek-R1-Distill-Qwen: ``qwen2`` with DeepSeek's tokenizer style (Qwen2's split, bos
  ``<｜begin▁of▁sentence｜>`` added, eos ``<｜end▁of▁sentence｜>``, ``<think>`` as a plain added token);
* Llama 3.2 1B/3B shape: ``llama`` with llama3 rope scaling (a ``rope_freqs`` tensor), tied embeddings
  and generation_config.json's three eos ids (end of text, end of message, end of turn), each of
  which must end generation in llama.cpp.
"""

from __future__ import annotations

import json

import pytest
from tests.factory import cached_hf_model, copy_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each

ROTARY = 48  # 0.75 x head_dim 64 (Phi-4-mini: 0.75 x 128)
PHI4_MINI = dict(arch="phi3", kquant=True, tied=True, tokenizer="bpe:gpt4o", max_position_embeddings=1024,
                 rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                  "long_factor": [1.0 + i / 8 for i in range(ROTARY // 2)],
                                  "short_factor": [1.0 + i / 32 for i in range(ROTARY // 2)],
                                  "original_max_position_embeddings": 256})
LLAMA32_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_phi4_mini_shape(tmp_path):
    hf = cached_hf_model(**PHI4_MINI)
    check_logits(hf, tmp_path)
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    assert info.metadata["phi3.rope.dimension_count"] == ROTARY and info.metadata["tokenizer.ggml.pre"] == "gpt-4o"
    names = {t.name for t in info.tensors}
    assert "output.weight" not in names and {"rope_factors_long.weight", "rope_factors_short.weight"} <= names
    check_tokenization(hf, f32)
    check_mixes(hf, tmp_path, f32=f32)
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_deepseek_r1_distill_qwen_shape(tmp_path):
    hf = cached_hf_model(arch="qwen2", kquant=True, tokenizer="bpe:deepseek-r1-qwen")
    check_logits(hf, tmp_path)  # with the bos DeepSeek's tokenizer adds
    f32 = tmp_path / "model-f32.gguf"
    meta = read_info(f32).metadata
    tokens = [bytes(t).decode() if not isinstance(t, str) else t for t in meta["tokenizer.ggml.tokens"]]
    assert meta["tokenizer.ggml.pre"] == "qwen2" and meta["tokenizer.ggml.add_bos_token"] is True
    assert tokens[meta["tokenizer.ggml.bos_token_id"]] == "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
    assert tokens[meta["tokenizer.ggml.eos_token_id"]] == "<\uff5cend\u2581of\u2581sentence\uff5c>"
    check_tokenization(hf, f32, samples=["<think>\nLet me see: 12 * 34 = 408.\n</think>\n\nThe answer is 408."])
    check_tokenization(hf, f32)
    check_mixes(hf, tmp_path, f32=f32)
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_llama32_shape_with_three_eos_ids(tmp_path):
    hf = copy_model(cached_hf_model(arch="llama", kquant=True, tied=True, tokenizer="bpe:llama32",
                                    rope_parameters=LLAMA32_ROPE), tmp_path / "llama32")
    vocab = json.loads((hf / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in vocab}
    eos = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    (hf / "generation_config.json").write_text(json.dumps({"bos_token_id": ids["<|begin_of_text|>"],
                                                           "eos_token_id": eos}))
    check_logits(hf, tmp_path)
    f32 = tmp_path / "model-f32.gguf"
    names = {t.name for t in read_info(f32).tensors}
    assert "rope_freqs.weight" in names and "output.weight" not in names
    check_tokenization(hf, f32)
    check_mixes(hf, tmp_path, f32=f32)
    assert eog_ids(hf) >= set(eos)
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
