"""OLMoE end to end: logits, tokenization, every mix vs llama_model_quantize, end of generation; OLMo 2's
whole-projection q/k norms; a tied checkpoint gets the output tensor llama.cpp's olmoe requires."""

from __future__ import annotations

import pytest

from slimedge.gguf_info import read_info
from tests.convert.moe_checks import check_moe_logits
from tests.factory import cached_hf_model
from tests.family_checks import (MIXES, check_generation_stops, check_logits, check_mixes, check_tokenization,
                                 convert, eog_ids)

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_olmoe_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="olmoe", kquant=True, intermediate_size=256)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))  # the harness's tolerances, every position
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    m, shapes = info.metadata, {t.name: tuple(t.shape) for t in info.tensors}
    assert (m["olmoe.expert_count"], m["olmoe.expert_used_count"]) == (4, 2)
    assert shapes["blk.0.attn_k_norm.weight"] == (256,) and shapes["blk.1.ffn_down_exps.weight"] == (4, 256, 256)
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, mixes=MIXES + ("MXFP4_MOE",), f32=f32)  # llama.cpp's MoE mix too
    assert types["Q4_K_M"]["blk.0.attn_q_norm.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_tied_olmoe_stores_the_output_tensor(tmp_path):
    hf = cached_hf_model(arch="olmoe", tied=True)
    check_logits(hf, tmp_path, types=("f32",))
    assert "output.weight" in {t.name for t in read_info(tmp_path / "model-f32.gguf").tensors}
