"""Granite 4 hybrid (Mamba-2 + attention; MoE + shared MLP, and the dense H-micro form) end to end: the same tensors,
byte for byte, as llama.cpp's own converter (config.json in the Hub's legacy layer names, which it reads);
logits; tokenization; every mix vs llama_model_quantize; end of generation; the memory estimate's KV cache +
Mamba-2 state vs llama.cpp's logged sizes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from slimedge.gguf_info import read_info
from slimedge.memory import MiB, estimate, shape_from_gguf
from tests.convert.hybrid_checks import llama_cpp_state_mib, reference_gguf, same_tensors_as
from tests.convert.moe_checks import check_moe_logits
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each

MOE = dict(arch="granitehybrid", kquant=True, intermediate_size=256, shared_intermediate_size=256)


def test_granitehybrid_moe_end_to_end(tmp_path):
    hf = cached_hf_model(**MOE)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    # llama.cpp's converter pads the token list of Mamba-2 models to a multiple of 8 (with unused entries);
    # slimedge writes one token per embedding row. The tensors are the same, byte for byte.
    names = same_tensors_as(f32, reference_gguf(hf, tmp_path / "ref.gguf", "starcoder"))
    assert "blk.0.ssm_a" in names and "blk.0.ssm_d" in names and "blk.2.attn_q.weight" in names
    m = read_info(f32).metadata
    assert m["granitehybrid.attention.head_count_kv"] == [0, 0, 2, 0]
    assert m["granitehybrid.rope.scaling.finetuned"] is False and m["granitehybrid.context_length"] == 2 ** 20
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.ssm_conv1d.weight"] == "F32" and types["Q4_K_M"]["blk.0.ssm_in.weight"] != "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_granitehybrid_dense_and_memory(tmp_path):
    hf = cached_hf_model(arch="granitehybrid_dense", kquant=True, shared_intermediate_size=512)
    check_logits(hf, tmp_path)
    f16 = tmp_path / "model-f16.gguf"
    names = {t.name for t in read_info(f16).tensors}
    assert "blk.0.ffn_gate.weight" in names and not any("exps" in n or "shexp" in n for n in names)
    rt = SimpleNamespace(n_ctx=4096, n_gpu_layers=0, use_mmap=True, cache_type_k="f16", cache_type_v="f16",
                         n_ubatch=512, flash_attn=False)
    est = estimate(shape_from_gguf(f16), rt, n_ctx=4096)
    d_inner, groups, state, heads = 512, 1, 16, 4
    mamba = 4 * ((4 - 1) * (d_inner + 2 * groups * state) + state * d_inner)  # conv taps + one state per layer
    assert est.kv_ram == 4096 * 2 * (64 + 64) * 2 + 3 * mamba  # one attention layer (2 kv heads of 64, f16) + 3 Mamba
    logged = llama_cpp_state_mib(f16, 4096)
    assert abs(est.kv_ram / MiB - sum(logged.values())) < 0.02, (est.kv_ram / MiB, logged)
