"""LFM2-MoE (short convolutions + attention, dense lead layer, experts with a router bias) end to end: the same
tensors and metadata, byte for byte, as llama.cpp's own converter (pre-tokenizer name "lfm2" included);
logits; tokenization; every mix vs llama_model_quantize; end of generation."""

from __future__ import annotations

import pytest

from slimedge.gguf_info import read_info
from tests.convert.hybrid_checks import reference_gguf, same_tensors_as
from tests.convert.moe_checks import check_moe_logits
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_lfm2moe_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="lfm2moe", kquant=True, tied=True, moe_intermediate_size=256)  # tied, as released
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    ref = reference_gguf(hf, tmp_path / "ref.gguf", "lfm2")
    same_tensors_as(f32, ref)
    ours, theirs = read_info(f32).metadata, read_info(ref).metadata
    for key in ("tokenizer.ggml.pre", "lfm2moe.attention.head_count_kv", "lfm2moe.leading_dense_block_count",
                "lfm2moe.expert_gating_func", "lfm2moe.expert_feed_forward_length", "lfm2moe.shortconv.l_cache"):
        assert ours[key] == theirs[key], key
    assert ours["tokenizer.ggml.pre"] == "lfm2"
    check_tokenization(hf, f32)  # llama.cpp splits "lfm2" as Llama 3's regex
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.1.exp_probs_b.bias"] == "F32"
    assert types["Q4_K_M"]["blk.0.shortconv.conv.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
