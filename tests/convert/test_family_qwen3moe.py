"""Qwen3-MoE end to end: logits, tokenization, every mix vs llama_model_quantize, end of generation."""

from __future__ import annotations

import pytest
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids
from tests.convert.moe_checks import check_moe_logits

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_qwen3moe_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="qwen3moe", kquant=True, moe_intermediate_size=256, head_dim=64)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))  # the harness's tolerances, every position
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    m = read_info(f32).metadata
    assert (m["qwen3moe.expert_count"], m["qwen3moe.expert_used_count"]) == (4, 2)
    assert m["qwen3moe.expert_feed_forward_length"] == 256 and m["qwen3moe.attention.key_length"] == 64
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert [types["Q4_K_M"][f"blk.{i}.ffn_down_exps.weight"] for i in (0, 1)] == ["Q4_K", "Q6_K"]
    assert types["Q4_K_M"]["blk.0.attn_q_norm.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_tied_small_qwen3moe(tmp_path):
    hf = cached_hf_model(arch="qwen3moe", tied=True)
    check_logits(hf, tmp_path, types=("f32", "f16"))
    assert "output.weight" not in {t.name for t in read_info(tmp_path / "model-f32.gguf").tensors}
