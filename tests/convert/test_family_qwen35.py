"""Qwen3.5 dense and MoE (gated delta-net + full attention) end to end: the same tensors, byte for byte, as
llama.cpp's own converter; logits; tokenization; every mix vs llama_model_quantize; end of generation; and the
memory estimate's KV cache + recurrent state vs llama.cpp's logged sizes."""

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

# k-quant widths: hidden 256, attention heads of 64 (q rows 2 x 4 x 64: queries and gate), value width 256
DENSE = dict(arch="qwen35", kquant=True, head_dim=64)
MOE = dict(arch="qwen35moe", kquant=True, head_dim=64, moe_intermediate_size=256, shared_expert_intermediate_size=256)


def test_qwen35_family_end_to_end(tmp_path):
    hf = cached_hf_model(**DENSE)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    # llama.cpp's converter (no MTP head in this checkpoint) writes the same tensors, byte for byte
    names = same_tensors_as(f32, reference_gguf(hf, tmp_path / "ref.gguf", "qwen35", "--no-mtp"))
    assert "blk.0.ssm_a" in names and "blk.3.attn_q_norm.weight" in names
    m = read_info(f32).metadata
    assert m["qwen35.attention.recurrent_layers"] == [True, True, True, False]
    assert m["tokenizer.ggml.pre"] == "qwen35"
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.ssm_conv1d.weight"] == "F32" and types["Q4_K_M"]["blk.0.ssm_a"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_qwen35moe_family_end_to_end(tmp_path):
    hf = cached_hf_model(**MOE)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    same_tensors_as(f32, reference_gguf(hf, tmp_path / "ref.gguf", "qwen35", "--no-mtp"))
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.ffn_gate_inp_shexp.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_memory_estimate_counts_delta_net_state(tmp_path):
    gguf = convert(cached_hf_model(**DENSE), tmp_path / "m.gguf", "F16")
    rt = SimpleNamespace(n_ctx=4096, n_gpu_layers=0, use_mmap=True, cache_type_k="f16", cache_type_v="f16",
                         n_ubatch=512, flash_attn=False)
    est = estimate(shape_from_gguf(gguf), rt, n_ctx=4096)
    kv = 1 * 4096 * 2 * (64 + 64) * 2  # one attention layer: 2 kv heads of 64, f16 K and V
    conv, state = (4 - 1) * (2 * 2 * 64 + 4 * 64), 4 * 64 * 64  # 3 taps of 512 channels; a 64x64 state per v head
    assert est.kv_ram == kv + 3 * 4 * (conv + state)
    logged = llama_cpp_state_mib(gguf, 4096)
    assert set(logged) == {"llama_kv_cache", "llama_memory_recurrent"}
    assert abs(est.kv_ram / MiB - sum(logged.values())) < 0.02, (est.kv_ram / MiB, logged)  # the log rounds to 0.01
