"""NVFP4's edges against ggml (ggml_quantize_chunk and its to_float), on both backends.

The generic tests (test_formats.py, test_kernels.py, test_roundtrip.py) already cover NVFP4 from the
registry; here the sub-block scales sit on every UE4M3 edge: each of the 256 scale bytes decoded, sub-block
maxima around every representable UE4M3 value times 6 (the rounding bit of the mantissa, the subnormal
range and its cap at 7, the clamp at 448 and the early 0x7E for exponents of 15), values at and 1-3 ulps
around the midpoints between E2M1 magnitudes, NaN (skipped by amax) and infinities.
"""

from __future__ import annotations

import numpy as np
from tests.ggml_ref import ggml_dequantize, ggml_quantize

from slimedge.quant import dequantize, quantize
from slimedge.quant.nvfp4 import UE4M3_HALF, fp32_to_ue4m3

_F = np.float32


def _subblock_maxima() -> np.ndarray:
    """6 x every positive UE4M3 value, and 1-3 ulps around it and its rounding midpoints."""
    ue = np.arange(1, 0x7F, dtype=np.uint8)
    vals = 2 * UE4M3_HALF[ue].astype(np.float64)
    mids = (vals[:-1] + vals[1:]) / 2
    base = (np.concatenate([vals, mids, [448.0, 480.0, 1e4, 2 ** -10, 2 ** -11]]) * 6).astype(_F)
    bits = base.view(np.uint32).astype(np.int64)[:, None] + np.arange(-3, 4)
    return bits.clip(1, None).astype(np.uint32).view(_F).reshape(-1)


def _blocks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amax = _subblock_maxima()
    n = amax.size
    d = 2 * UE4M3_HALF[fp32_to_ue4m3(amax / _F(6))].astype(np.float64)[:, None]
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.5, 1, 1.5, 2, 3, 4, 6])
    near = (mids[rng.integers(0, mids.size, (n, 16))] * d).astype(_F)
    near = (near.view(np.uint32).astype(np.int64) + rng.integers(-3, 4, (n, 16))).clip(0, None)
    x = np.minimum(near.astype(np.uint32).view(_F), amax[:, None])
    x = np.where(rng.random((n, 16)) < 0.3, amax[:, None] * rng.random((n, 16), _F), x)
    x[np.arange(n), rng.integers(0, 16, n)] = amax
    x = np.where(rng.random((n, 16)) < 0.5, -x, x).astype(_F)
    x = x[: n // 4 * 4].reshape(-1, 64)  # four sub-blocks per block
    x[0, 3], x[1, 5], x[2, 7] = np.nan, np.inf, -np.inf
    return x


def test_nvfp4_scale_edges_identical_to_ggml(backend):
    for seed in range(2):
        x = _blocks(seed)
        ours, ref = quantize(x, "NVFP4"), ggml_quantize(x, "NVFP4")
        same = (ours.reshape(-1, 36) == ref.reshape(-1, 36)).all(axis=1)
        assert same.all(), f"seed {seed}: {int((~same).sum())} of {same.size} blocks differ"
        scales = set(ours.reshape(-1, 36)[:, :4].reshape(-1).tolist())
        assert {0, 1, 7, 8, 0x7E} <= scales  # the subnormal, first-normal and clamp edges were reached


def test_nvfp4_every_scale_byte_decodes_as_ggml(backend):
    q = np.zeros((256, 36), np.uint8)
    q[:, :4] = np.arange(256, dtype=np.uint8)[:, None]
    q[:, 4:] = (np.arange(32) * 37 % 256).astype(np.uint8)  # every nibble value in each sub-block
    ours, ref = dequantize(q, "NVFP4", 64), ggml_dequantize(q, "NVFP4", 64)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
