"""Nemotron-H with MoE blocks (Nemotron 3 Nano's layout: Mamba-2, MoE and attention blocks) end to end: the same
tensors, byte for byte, as llama.cpp's own converter on the same checkpoint; logits vs transformers; tokenization;
every mix (and MXFP4_MOE) vs llama_model_quantize; end of generation; the memory estimate's KV cache + Mamba-2 state
vs llama.cpp's logged sizes (MoE blocks hold no state)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from slimedge.gguf_info import read_info
from slimedge.memory import MiB, estimate, shape_from_gguf
from tests.convert.hybrid_checks import llama_cpp_state_mib, reference_gguf, same_tensors_as
from tests.convert.moe_checks import check_moe_logits
from tests.factory import cached_hf_model
from tests.family_checks import (MIXES, check_generation_stops, check_logits, check_mixes, check_tokenization,
                                 convert, eog_ids)

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each

# k-quant width: hidden 256, experts of 256 rows; block pattern "ME*E" (config.json as the Hub ships Nemotron 3)
MOE = dict(arch="nemotronhmoe", kquant=True, head_dim=64, mamba_head_dim=64, moe_intermediate_size=256,
           moe_shared_expert_intermediate_size=256)


def test_nemotronh_moe_end_to_end(tmp_path):
    hf = cached_hf_model(**MOE)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    # llama.cpp's converter pads the token list of Mamba-2 models to a multiple of 8; the tensors are the same
    names = same_tensors_as(f32, reference_gguf(hf, tmp_path / "ref.gguf", "llama-bpe"))
    assert {"blk.1.ffn_up_exps.weight", "blk.1.exp_probs_b.bias", "blk.3.ffn_down_shexp.weight"} <= set(names)
    m = read_info(f32).metadata
    assert m["nemotron_h_moe.attention.head_count_kv"] == [0, 0, 2, 0]
    assert m["nemotron_h_moe.feed_forward_length"] == [0, 256, 0, 256]
    assert m["nemotron_h_moe.expert_weights_scale"] == pytest.approx(2.5)
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, mixes=MIXES + ("MXFP4_MOE",), f32=f32)
    assert types["Q4_K_M"]["blk.0.ssm_conv1d.weight"] == "F32" and types["Q4_K_M"]["blk.0.ssm_in.weight"] != "F32"
    assert types["MXFP4_MOE"]["blk.1.ffn_up_exps.weight"] == "MXFP4"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
    rt = SimpleNamespace(n_ctx=4096, n_gpu_layers=0, use_mmap=True, cache_type_k="f16", cache_type_v="f16",
                         n_ubatch=512, flash_attn=False)
    f16 = tmp_path / "model-f16.gguf"
    est = estimate(shape_from_gguf(f16), rt, n_ctx=4096)
    d_inner, groups, state = 4 * 64, 2, 16
    mamba = 4 * ((4 - 1) * (d_inner + 2 * groups * state) + state * d_inner)  # conv taps + the state, float32
    assert est.kv_ram == 4096 * 2 * (64 + 64) * 2 + mamba  # the attention block (f16 K, V); MoE blocks hold nothing
    logged = llama_cpp_state_mib(f16, 4096)
    assert abs(est.kv_ram / MiB - sum(logged.values())) < 0.02, (est.kv_ram / MiB, logged)
