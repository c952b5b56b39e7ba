"""Falcon-H1 (attention and Mamba-2 in parallel in every layer, µP multipliers folded into the weights) end to end:
the same tensors, byte for byte, as llama.cpp's own converter; logits; tokenization; every mix vs
llama_model_quantize; end of generation; the memory estimate (a KV cache and a Mamba-2 state in every layer) vs
llama.cpp's logged sizes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from slimedge.gguf_info import read_info
from slimedge.memory import MiB, estimate, shape_from_gguf
from tests.convert.hybrid_checks import llama_cpp_state_mib, reference_gguf, same_tensors_as
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_falconh1_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="falconh1", kquant=True, head_dim=64, mamba_d_ssm=512, mamba_n_heads=8, mamba_d_head=64)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    names = same_tensors_as(f32, reference_gguf(hf, tmp_path / "ref.gguf", "falcon-h1"))
    assert "blk.0.ffn_norm" in names and "blk.1.ssm_norm.weight" in names
    assert read_info(f32).metadata["tokenizer.ggml.pre"] == "falcon-h1"  # llama.cpp splits it as Llama 3's
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.ssm_conv1d.weight"] == "F32" and types["Q4_K_M"]["blk.0.ssm_in.weight"] != "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
    rt = SimpleNamespace(n_ctx=4096, n_gpu_layers=0, use_mmap=True, cache_type_k="f16", cache_type_v="f16",
                         n_ubatch=512, flash_attn=False)
    f16 = tmp_path / "model-f16.gguf"
    est = estimate(shape_from_gguf(f16), rt, n_ctx=4096)
    mamba = 4 * ((4 - 1) * (512 + 2 * 16) + 16 * 512)  # conv taps + the state, float32
    assert est.kv_ram == 2 * (4096 * 2 * (64 + 64) * 2 + mamba)  # both layers: f16 K, V of 2 kv heads and the state
    logged = llama_cpp_state_mib(f16, 4096)
    assert abs(est.kv_ram / MiB - sum(logged.values())) < 0.02, (est.kv_ram / MiB, logged)
