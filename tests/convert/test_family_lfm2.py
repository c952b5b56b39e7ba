"""LFM2 (short convolutions + attention) end to end: logits, tokenization, every mix vs
llama_model_quantize, end of generation, and the memory estimate's conv state vs llama.cpp's."""

from __future__ import annotations

import pytest
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

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


def _llama_cpp_cache_mib(gguf, n_ctx: int) -> dict[str, float]:
    """The KV and recurrent-state sizes llama.cpp logs when it creates a context (a child process: its log)."""
    import re
    import subprocess
    import sys

    code = f"import llama_cpp; llama_cpp.Llama(model_path={str(gguf)!r}, n_ctx={n_ctx}, n_threads=1, verbose=True)"
    log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
    sizes = {}
    for kind in ("llama_kv_cache", "llama_memory_recurrent"):
        m = re.search(rf"^{kind}: size = +([0-9.]+) MiB", log, re.M)
        assert m, (kind, log[-2000:])
        sizes[kind] = float(m.group(1))
    return sizes


def test_memory_estimate_counts_kv_only_for_attention_layers(tmp_path):
    from types import SimpleNamespace

    from slimedge.memory import MiB, estimate, shape_from_gguf

    hf = cached_hf_model(arch="lfm2", kquant=True, tied=True)
    gguf = convert(hf, tmp_path / "m.gguf", "F16")
    shape = shape_from_gguf(gguf)
    rt = SimpleNamespace(n_ctx=4096, n_gpu_layers=0, use_mmap=True, cache_type_k="f16", cache_type_v="f16",
                         n_ubatch=512, flash_attn=False)
    est = estimate(shape, rt, n_ctx=4096)  # past the tiny model's training context, as llama.cpp allows
    kv_attention = 1 * 4096 * 2 * (64 + 64) * 2  # one attention layer, 2 kv heads of 64, f16 K and V
    conv_state = 2 * (3 - 1) * 256 * 4  # two conv layers keep l_cache - 1 inputs of n_embd floats
    assert est.kv_ram == kv_attention + conv_state
    logged = _llama_cpp_cache_mib(gguf, 4096)
    assert abs(est.kv_ram / MiB - sum(logged.values())) < 0.01, (est.kv_ram / MiB, logged)  # the log rounds to 0.01
