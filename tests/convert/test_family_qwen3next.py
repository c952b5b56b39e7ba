"""Qwen3-Next (gated delta-net with fused q/k/v/z, full attention, experts + gated shared expert) end to end:
the same tensors, byte for byte, as llama.cpp's own converter; logits; tokenization; every mix vs
llama_model_quantize; end of generation."""

from __future__ import annotations

import pytest

from slimedge.gguf_info import read_info
from tests.convert.hybrid_checks import reference_gguf, same_tensors_as
from tests.convert.moe_checks import check_moe_logits
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_qwen3next_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="qwen3next", kquant=True, head_dim=64, moe_intermediate_size=256,
                         shared_expert_intermediate_size=256)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    names = same_tensors_as(f32, reference_gguf(hf, tmp_path / "ref.gguf", "qwen2", "--no-mtp"))
    assert "blk.0.ssm_ba.weight" in names and "blk.0.attn_qkv.weight" in names
    assert read_info(f32).metadata["qwen3next.attention.recurrent_layers"] == [True, True, True, False]
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.ssm_conv1d.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
