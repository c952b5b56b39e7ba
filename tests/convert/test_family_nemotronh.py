"""Nemotron-H (dense: Mamba-2, squared-ReLU MLP and attention blocks) end to end: logits, tokenization, every mix vs
llama_model_quantize, end of generation, and the memory estimate's KV cache + Mamba-2 state vs llama.cpp's log.

No byte comparison with llama.cpp's converter here: it reads config.json through transformers 5, whose
NemotronHConfig fills in the MoE defaults (num_experts_per_tok), so it writes every dense Nemotron-H as
nemotron_h_moe; slimedge reads the config as the checkpoint ships it (tests/arch/test_arch_nemotronh.py pins the
layout it shares with that converter otherwise: same tensors, q/k row order, metadata)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from slimedge.gguf_info import read_info
from slimedge.memory import MiB, estimate, shape_from_gguf
from tests.convert.hybrid_checks import llama_cpp_state_mib
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_nemotronh_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="nemotronh", kquant=True, head_dim=64, mamba_head_dim=64, intermediate_size=256)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    m = read_info(f32).metadata
    assert m["nemotron_h.attention.head_count_kv"] == [0, 0, 2, 0]
    assert m["nemotron_h.feed_forward_length"] == [0, 256, 0, 256]
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.ssm_conv1d.weight"] == "F32" and types["Q4_K_M"]["blk.0.ssm_in.weight"] != "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
    rt = SimpleNamespace(n_ctx=4096, n_gpu_layers=0, use_mmap=True, cache_type_k="f16", cache_type_v="f16",
                         n_ubatch=512, flash_attn=False)
    f16 = tmp_path / "model-f16.gguf"
    est = estimate(shape_from_gguf(f16), rt, n_ctx=4096)
    d_inner, groups, state = 4 * 64, 2, 16
    mamba = 4 * ((4 - 1) * (d_inner + 2 * groups * state) + state * d_inner)  # conv taps + the state, float32
    assert est.kv_ram == 4096 * 2 * (64 + 64) * 2 + mamba  # the attention block (f16 K, V); MLP blocks hold nothing
    logged = llama_cpp_state_mib(f16, 4096)
    assert abs(est.kv_ram / MiB - sum(logged.values())) < 0.02, (est.kv_ram / MiB, logged)
