"""Qwen3 end to end through llama.cpp: logits (untied, head_dim 128 != hidden/heads; tied), qwen2 BPE
tokenization, every mix vs llama_model_quantize, end of generation."""

from __future__ import annotations

import pytest
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_qwen3_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="qwen3", kquant=True, head_dim=128)  # 4 heads x 128 over hidden 256
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    meta = read_info(f32).metadata
    assert meta["general.architecture"] == "qwen3" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["qwen3.attention.key_length"] == 128 and meta["qwen3.attention.value_length"] == 128
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.attn_q_norm.weight"] == "F32" and types["Q4_K_M"]["blk.0.attn_output.weight"] != "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_qwen3_tied_small_model(tmp_path):
    hf = cached_hf_model(arch="qwen3", tied=True)
    check_logits(hf, tmp_path, types=("f32", "q8_0"))
    assert "output.weight" not in {t.name for t in read_info(tmp_path / "model-f32.gguf").tensors}
