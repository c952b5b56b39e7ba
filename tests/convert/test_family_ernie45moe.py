"""ERNIE 4.5 MoE end to end: logits, tokenization, every mix vs llama_model_quantize, end of generation;
a leading dense layer, two shared experts, the expert-score correction bias (randomized here: it is zero
at init, and must steer the choice as in transformers)."""

from __future__ import annotations

import pytest

from slimedge.gguf_info import read_info
from tests.convert.moe_checks import check_moe_logits
from tests.factory import cached_hf_model
from tests.family_checks import (MIXES, check_generation_stops, check_logits, check_mixes, check_tokenization,
                                 convert, eog_ids)

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_ernie45moe_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="ernie45moe", kquant=True, moe_intermediate_size=256, tied=True)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))  # the harness's tolerances, every position
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    m, shapes = info.metadata, {t.name: tuple(t.shape) for t in info.tensors}
    assert (m["ernie4_5-moe.expert_count"], m["ernie4_5-moe.expert_used_count"]) == (4, 2)
    assert (m["ernie4_5-moe.leading_dense_block_count"], m["ernie4_5-moe.expert_shared_count"]) == (1, 2)
    assert m["ernie4_5-moe.expert_shared_feed_forward_length"] == 512  # 2 shared experts of 256
    assert "blk.0.ffn_gate.weight" in shapes and "blk.0.ffn_gate_exps.weight" not in shapes  # dense layer 0
    assert shapes["blk.1.exp_probs_b.bias"] == (1, 4) and shapes["blk.2.ffn_up_shexp.weight"] == (512, 256)
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, mixes=MIXES + ("MXFP4_MOE",), f32=f32)  # llama.cpp's MoE mix too
    assert types["Q4_K_M"]["blk.1.exp_probs_b.bias"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
