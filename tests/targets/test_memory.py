"""Memory estimate: GQA-aware KV cache, RAM/VRAM split by n_gpu_layers, budget refusal with numbers."""

from __future__ import annotations

import pytest

from slimedge.errors import SlimedgeError
from slimedge.memory import (MiB, ModelShape, TensorSize, check_fits, compute_bytes, estimate,
                             kv_bytes_per_layer, pad_ctx)
from slimedge.targets import Runtime, load_target


def tinyllama(bytes_per_layer=30 * MiB) -> ModelShape:
    """TinyLlama-1.1B's hyperparameters (22 layers, 32 heads, 4 KV heads, head size 64)."""
    tensors = [TensorSize("token_embd.weight", 32 * MiB), TensorSize("output.weight", 50 * MiB),
               TensorSize("output_norm.weight", 8192)]
    for i in range(22):
        tensors += [TensorSize(f"blk.{i}.attn_q.weight", bytes_per_layer // 2),
                    TensorSize(f"blk.{i}.ffn_up.weight", bytes_per_layer // 2)]
    return ModelShape(arch="llama", n_layer=22, n_embd=2048, n_head=32, n_head_kv=4, n_ff=5632, n_vocab=32000,
                      key_length=64, value_length=64, tensors=tensors)


def test_kv_cache_is_gqa_aware():
    s = tinyllama()
    # llama.cpp reports "KV self size = 44.00 MiB" for TinyLlama at n_ctx 2048 with an f16 cache
    assert 22 * kv_bytes_per_layer(s, 2048) == 44 * MiB
    # q8_0 cache: 34 bytes per 32 values
    assert 22 * kv_bytes_per_layer(s, 2048, "q8_0", "q8_0") == 44 * MiB * 34 // 64
    # without GQA (32 KV heads) it would be 8x larger
    s.n_head_kv = 32
    assert 22 * kv_bytes_per_layer(s, 2048) == 352 * MiB
    assert pad_ctx(1000) == 1024 and pad_ctx(2048) == 2048


def test_split_by_gpu_layers():
    s = tinyllama()
    cpu = estimate(s, Runtime(n_ctx=2048, n_gpu_layers=0))
    assert cpu.weights_ram == s.weight_bytes and cpu.weights_vram == 0 and cpu.kv_vram == 0
    assert cpu.kv_ram == 44 * MiB and cpu.total_vram == 0
    part = estimate(s, Runtime(n_ctx=2048, n_gpu_layers=10))
    assert part.weights_vram == 10 * 30 * MiB  # the last 10 blocks
    assert part.weights_ram == s.weight_bytes - 10 * 30 * MiB  # embeddings, output and 12 blocks stay
    assert part.kv_vram == 10 * (2 * MiB) and part.kv_ram == 12 * (2 * MiB)
    full = estimate(s, Runtime(n_ctx=2048, n_gpu_layers=-1))
    assert full.weights_ram == 32 * MiB  # only token_embd stays on the CPU
    assert full.weights_vram == s.weight_bytes - 32 * MiB and full.kv_ram == 0 and full.kv_vram == 44 * MiB
    assert full.compute_vram > full.compute_ram > 0
    # n_gpu_layers = n_layer offloads the blocks but not the output layer (llama.cpp: n_layer + 1 for that)
    assert estimate(s, Runtime(n_ctx=2048, n_gpu_layers=22)).weights_ram == 82 * MiB + 8192


def test_compute_grows_with_context_and_drops_with_flash_attention():
    s = tinyllama()
    assert compute_bytes(s, 4096, 512, False) > compute_bytes(s, 2048, 512, False)
    assert compute_bytes(s, 8192, 512, True) < compute_bytes(s, 8192, 512, False)
    assert compute_bytes(s, 2048, 64, False) < compute_bytes(s, 2048, 512, False)


def test_budget_refusal_names_the_numbers():
    s = tinyllama(bytes_per_layer=200 * MiB)  # ~4.4 GiB of weights
    small = load_target("arm64-small")
    est = estimate(s, small.runtime)
    with pytest.raises(SlimedgeError) as e:
        check_fits(est, small, what="tiny.gguf as Q8_0")
    msg = str(e.value)
    assert "tiny.gguf as Q8_0 does not fit target 'arm64-small'" in msg
    assert f"RAM {est.required_ram / 2**30:.2f} GiB" in msg and "budget (hardware.memory_budget_gb) is 2.50 GiB" in msg
    gpu = load_target("laptop-gpu")
    est = estimate(s, gpu.runtime)
    assert est.total_vram > 4 * 2**30
    s2 = tinyllama(bytes_per_layer=300 * MiB)
    with pytest.raises(SlimedgeError, match=r"VRAM budget \(hardware.vram_gb\) is 6.00 GiB"):
        check_fits(estimate(s2, gpu.runtime), gpu)


def test_repacked_weights_count_twice_where_llama_cpp_repacks():
    s = tinyllama()
    for t in s.tensors:
        t.type = "Q4_K" if t.name.startswith("blk.") else "Q6_K"
    s.tensors[0].type = "Q4_K"  # token_embd is never repacked (it is read with get_rows)
    cpu, arm, small = load_target("cpu"), load_target("arm64"), load_target("arm64-small")
    blocks = 22 * 30 * MiB
    assert estimate(s, cpu.runtime, hardware=cpu.hardware).repack_ram == blocks  # AVX2: Q4_K, not Q6_K
    assert estimate(s, arm.runtime, hardware=arm.hardware).repack_ram == blocks + 50 * MiB  # NEON: Q6_K output too
    assert estimate(s, cpu.runtime).repack_ram == 0  # no hardware given: no repacking assumed
    no_mmap = Runtime(n_ctx=2048, use_mmap=False)
    assert estimate(s, no_mmap, hardware=cpu.hardware).repack_ram == 0  # read straight into the repacked buffer
    gpu = load_target("laptop-gpu")
    assert estimate(s, gpu.runtime, hardware=gpu.hardware).repack_ram == 0  # offloaded layers are not repacked
    assert small.hardware.cpu_features == ("neon", "dotprod")
    assert estimate(s, small.runtime, hardware=small.hardware).repack_ram == blocks + 50 * MiB


def test_compute_matches_llama_cpp_reserved_size():
    """llama.cpp reports 'CPU compute buffer size = 153.01 MiB' for TinyLlama at n_ctx 2048, n_ubatch 512
    and 11.50 MiB for tests' tiny llama (256 wide, 4 heads, FFN 512, vocab 1006) at n_ctx 2048, n_ubatch 256."""
    work = 2 * 512 * 32 * 2048  # + the F16 copy of the attention probabilities (CPU work buffer)
    assert (compute_bytes(tinyllama(), 2048, 512, False) - work) / MiB == pytest.approx(153.01, rel=0.03)
    tiny = ModelShape(arch="llama", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=1006,
                      key_length=64, value_length=64)
    assert (compute_bytes(tiny, 2048, 256, False) - 2 * 256 * 4 * 2048) / MiB == pytest.approx(11.50, rel=0.03)


def test_budget_checks_required_ram_not_reclaimable_repack_pages():
    import dataclasses

    s = tinyllama(bytes_per_layer=60 * MiB)
    for t in s.tensors:
        t.type = "Q4_K"
    cpu = load_target("cpu")
    est = estimate(s, cpu.runtime, hardware=cpu.hardware)
    assert est.required_ram == est.total_ram - est.repack_ram and est.repack_ram == (22 * 60 + 50) * MiB  # blocks + output
    between = (est.required_ram + est.total_ram) / 2 / 2**30
    tgt = dataclasses.replace(cpu, hardware=dataclasses.replace(cpu.hardware, memory_budget_gb=between))
    check_fits(est, tgt)  # fits: the repacked tensors' file pages are re-readable page cache
    assert "reclaimable mmap pages" in est.describe()


def test_sliding_window_layers_hold_window_plus_ubatch_unless_swa_full():
    """Gemma 3 4B's shape (34 layers, every 6th global, window 1024, 4 kv heads x 256): llama.cpp's iswa cache
    gives sliding layers pad256(n_swa + n_ubatch) cells (at most n_ctx) when swa_full is off."""
    from dataclasses import replace

    swa = tuple(i % 6 < 5 for i in range(34))
    g = ModelShape(arch="gemma3", n_layer=34, n_embd=2560, n_head=8, n_head_kv=4, n_ff=10240, n_vocab=262208,
                   key_length=256, value_length=256, n_swa=1024, swa_layers=swa)
    per_cell = 4 * (256 + 256) * 2  # f16 K and V
    n_global, n_slide = swa.count(False), swa.count(True)
    assert (n_global, n_slide) == (5, 29)
    off = estimate(g, replace(Runtime(), n_ctx=8192, n_ubatch=512), n_ctx=8192)
    assert off.kv_ram == 34 * 8192 * per_cell  # llama-cpp-python's default: full-size SWA cache

    # a profile that turns swa_full off (llama-cli / llama-server's default)
    swa_off = _profile_runtime(n_ctx=8192, n_ubatch=512, swa_full=False)
    assert swa_off.swa_full is False and Runtime().swa_full is True

    small = estimate(g, swa_off, n_ctx=8192)
    assert small.kv_ram == (n_global * 8192 + n_slide * 1536) * per_cell  # pad256(1024 + 512) = 1536
    assert small.kv_ram < off.kv_ram
    assert estimate(replace(g, swa_layers=()), swa_off, n_ctx=8192).kv_ram == off.kv_ram  # no window: full
    assert estimate(g, swa_off, n_ctx=1024).kv_ram == 34 * 1024 * per_cell  # window + ubatch > n_ctx


def _profile_runtime(**runtime) -> Runtime:
    """The runtime of the built-in cpu profile with ``runtime`` keys set, parsed like a TOML profile."""
    from slimedge.targets import parse_target

    data = load_target("cpu").to_dict()
    data["runtime"].update(runtime)
    return parse_target(data, "test.toml").runtime


def test_swa_full_must_be_a_bool():
    with pytest.raises(SlimedgeError, match=r"test.toml: runtime.swa_full must be true or false"):
        _profile_runtime(swa_full="no")


@pytest.mark.slow  # converts a Gemma 3 and loads it in llama.cpp twice
def test_swa_full_false_profile_gives_llama_cpps_smaller_kv_cache(tmp_path):
    """A profile with swa_full = false: the estimate's KV cache is smaller, and it is the size llama.cpp
    allocates when the bench child opens the model with that profile's settings (its logged cache sizes)."""
    import re
    import subprocess
    import sys

    from tests.factory import cached_hf_model
    from slimedge.convert import convert
    from slimedge.memory import shape_from_gguf
    from slimedge.quant.mixes import QuantSpec

    f32 = tmp_path / "g3.gguf"
    convert(cached_hf_model(arch="gemma3"), f32, QuantSpec("F32"))
    shape = shape_from_gguf(f32)
    assert shape.n_swa == 8 and sum(shape.swa_layers) == 5
    kv = {}
    for swa_full in (True, False):
        rt = _profile_runtime(n_ctx=2048, n_batch=256, n_ubatch=256, cache_type_k="f16", cache_type_v="f16",
                              swa_full=swa_full)
        job = dict(model=str(f32), n_ctx=rt.n_ctx, n_batch=rt.n_batch, n_ubatch=rt.n_ubatch, n_threads=1,
                   n_gpu_layers=0, flash_attn="off", swa_full=rt.swa_full, verbose=True)
        code = f"from slimedge.bench.child import _open; _open({job!r}).close()"
        log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
        sizes = [float(x) for x in re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", log)]
        assert sizes, log[-2000:]
        kv[swa_full] = estimate(shape, rt, n_ctx=rt.n_ctx).kv_ram
        assert sum(sizes) == pytest.approx(kv[swa_full] / MiB, abs=0.01 * len(sizes)), (swa_full, sizes, log[-2000:])
    assert kv[False] < kv[True]
