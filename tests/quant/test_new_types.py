"""Issue 12's non-grid types (IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, Q1_0, Q2_0): their edge cases on both
backends against ggml_quantize_chunk, the MXFP4 exponent against libm's log2f, and their mixes against
llama_model_quantize.

The registry-driven tests (test_formats.py, test_kernels.py, test_roundtrip.py) already cover these types;
here are the cases specific to them: blocks whose scale is subnormal (1/d = inf: C's float->int of inf/NaN),
block maxima next to powers of two (MXFP4's floor(log2)), one huge outlier per row, constant and zero
blocks, every row length the type allows up to a few blocks, with and without an imatrix. Each failure
message reports the share of identical blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from tests.ggml_ref import ggml_dequantize, ggml_quantize
from slimedge.quant import dequantize, quantize
from slimedge.quant.fp4 import floor_log2

NEW = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "Q1_0", "Q2_0"]


def _hard_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(n), rng.standard_t(2, n), np.zeros(n), np.full(n, -0.3),
            rng.standard_normal(n) * 1e-40,                  # subnormal block maxima: 1/d = inf
            rng.standard_normal(n) * 3e-39, rng.standard_normal(n) * 1e-30]
    out = rng.standard_normal(n)
    out[rng.integers(n)] = 3e4                               # one huge outlier in the row
    rows.append(out)
    p2 = np.ldexp(1.0, rng.integers(-130, 30, n)) * rng.choice([-1, 1], n)
    p2 *= np.where(rng.random(n) < 0.5, 1.0, 1 - 2.0 ** -24)  # powers of two and the float just below
    rows.append(p2)
    rows.append(np.where(rng.random(n) < 0.5, 0.0, rng.standard_normal(n)))
    return np.array(rows, dtype=np.float32)


def _identical(ours: np.ndarray, ref: np.ndarray, qtype: str) -> str:
    ts = GGML_QUANT_SIZES[T[qtype]][1]
    a, b = ours.reshape(-1, ts), ref.reshape(-1, ts)
    same = (a == b).all(axis=1)
    return f"{qtype}: {same.mean():.2%} of {len(same)} blocks identical"


@pytest.mark.parametrize("qtype", NEW)
def test_hard_cases_identical_to_ggml(qtype, backend):
    bs = GGML_QUANT_SIZES[T[qtype]][0]
    with np.errstate(all="ignore"):
        for n in sorted({bs, 2 * bs, 256, 512, 1024} - {0}):
            if n % bs:
                continue
            x = _hard_rows(n, seed=n)
            ours, ref = quantize(x, qtype, threads=2), ggml_quantize(x, qtype)
            assert np.array_equal(ours, ref), f"n={n}: " + _identical(ours, ref, qtype)
            imx = np.random.default_rng(n).exponential(1.0, n).astype(np.float32)
            imx[: n // 4] = 0  # some columns unimportant
            ours, ref = quantize(x, qtype, imatrix=imx), ggml_quantize(x, qtype, imatrix=imx)
            assert np.array_equal(ours, ref), f"n={n} imatrix: " + _identical(ours, ref, qtype)
            y = dequantize(ref, qtype, n)
            assert np.array_equal(y.view(np.uint32), ggml_dequantize(ref, qtype, n).view(np.uint32))


@pytest.mark.parametrize("qtype", ["IQ4_NL", "IQ4_XS"])
def test_iq4_uses_the_importance_weights(qtype, backend):
    """Like ggml: weights change the bytes for the i-quants (the other types ignore them)."""
    x = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    imx = np.random.default_rng(2).exponential(1.0, 512).astype(np.float32) ** 3
    assert not np.array_equal(quantize(x, qtype, imatrix=imx), quantize(x, qtype))


@pytest.mark.parametrize("qtype", ["TQ1_0", "TQ2_0", "MXFP4", "Q1_0", "Q2_0"])
def test_types_ggml_quantizes_without_weights_ignore_them(qtype, backend):
    x = np.random.default_rng(3).standard_normal((4, 512)).astype(np.float32)
    imx = np.linspace(0.1, 5, 512).astype(np.float32)
    assert np.array_equal(quantize(x, qtype, imatrix=imx), quantize(x, qtype))


def test_mxfp4_floor_log2_equals_libm_log2f_next_to_powers_of_two():
    """floor(log2f(a)) can only differ from the exponent next to a power of two; there ours equals libm's."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.log2f.restype, libm.log2f.argtypes = ctypes.c_float, [ctypes.c_float]
    vals = []
    for e in range(-149, 128):
        p = np.float32(2.0) ** e if e > -127 else np.float32(np.ldexp(1.0, e))
        vals.append(p)  # the power of two, the 64 floats below it and 8 above it
        below = p
        for _ in range(64):
            below = np.nextafter(below, np.float32(0))
            vals.append(below)
        above = p
        for _ in range(8):
            above = np.nextafter(above, np.float32(np.inf))
            vals.append(above)
    a = np.array([v for v in vals if v > 0 and np.isfinite(v)], dtype=np.float32)
    ref = np.array([np.floor(np.float32(libm.log2f(float(v)))) for v in a], dtype=np.float32)
    ours = floor_log2(a)
    bad = np.flatnonzero(ours != ref)
    assert bad.size == 0, f"{bad.size} values differ, e.g. {a[bad[:3]].tolist()}: {ours[bad[:3]]} vs {ref[bad[:3]]}"


# ---- mixes against llama_model_quantize ----------------------------------------------------------------

DENSE_MIXES = ("IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "Q1_0", "Q2_0")


@pytest.mark.slow
def test_new_mixes_equal_llama_quantize_and_generate(tmp_path):
    from tests.factory import cached_hf_model
    from tests.family_checks import check_generation_stops, check_mixes, convert, eog_ids

    hf = cached_hf_model(arch="llama", kquant=True)
    types = check_mixes(hf, tmp_path, mixes=DENSE_MIXES)
    assert types["TQ1_0"]["token_embd.weight"] == "Q4_K" and types["Q1_0"]["token_embd.weight"] == "Q1_0"
    assert types["IQ4_XS"]["output.weight"] == "Q6_K"
    assert types["IQ4_NL"]["blk.0.ffn_down.weight"] == "IQ4_NL"  # < 8 layers: no first-eighth Q5_K promotion
    for mix in ("IQ4_NL", "Q2_0"):
        check_generation_stops(convert(hf, tmp_path / f"{mix}.gguf", mix), eog_ids(hf))


@pytest.mark.slow
def test_mxfp4_moe_mix_equals_llama_quantize(tmp_path):
    from tests.factory import cached_hf_model
    from tests.family_checks import check_generation_stops, check_mixes, convert, eog_ids

    hf = cached_hf_model(arch="qwen3moe", kquant=True, moe_intermediate_size=256, head_dim=64)
    types = check_mixes(hf, tmp_path, mixes=("MXFP4_MOE",))["MXFP4_MOE"]
    assert types["blk.0.ffn_down_exps.weight"] == "MXFP4" and types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["output.weight"] == "Q8_0"
    check_generation_stops(convert(hf, tmp_path / "mxfp4.gguf", "MXFP4_MOE"), eog_ids(hf))
