"""LFM2 (short convolutions + attention) end to end: logits, tokenization, every mix vs
llama_model_quantize, end of generation, and the memory estimate's conv state vs llama.cpp's."""

from __future__ import annotations

import pytest
from factory import cached_hf_model
from family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_lfm2_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="lfm2", kquant=True, tied=True)  # tied, as LFM2's are
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    assert info.metadata["lfm2.attention.head_count_kv"] == [0, 2, 0]
    assert info.metadata["lfm2.shortconv.l_cache"] == 3 and info.metadata["lfm2.feed_forward_length"] == 512
    shapes = {t.name: tuple(t.shape) for t in info.tensors}
    assert shapes["blk.0.shortconv.conv.weight"] == (256, 3) and "blk.1.shortconv.conv.weight" not in shapes
    assert shapes["blk.1.attn_q_norm.weight"] == (64,) and "output.weight" not in shapes
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.2.shortconv.conv.weight"] == "F32"
    assert types["Q4_K_M"]["blk.0.shortconv.in_proj.weight"] == "Q4_K"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
