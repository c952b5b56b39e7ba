"""MXFP4's midpoint shortcut against ggml's scan, on both backends.

Both backends pick each weight's index by comparing |x| with the midpoints between consecutive magnitudes
(times the block's power-of-two scale d) instead of ggml's 16-way scan, and take ggml's scan (C) or the
bracketing search (NumPy) only for some blocks: the C kernel for a subnormal, infinite or near-power-of-two
block maximum (mantissa bits >= 0x7FF000, where float32 log2 can round up to the next exponent), NumPy for
e < 3 or e > 252. These blocks sit on every such edge: values exactly at the midpoints and 1-3 ulps either
side, at the magnitudes, subnormal values, maxima just below/above the cutoff and just below a power of two,
every exponent from the subnormal range (whose e wraps modulo 256) to FLT_MAX (where 8d and 12d overflow).
"""

from __future__ import annotations

import numpy as np
from tests.ggml_ref import ggml_quantize

from slimedge.quant import quantize
from slimedge.quant.fp4 import e8m0_half, shared_exponent

_F = np.float32
MIDS = np.array([0.5, 1.5, 2.5, 3.5, 5, 7, 10], _F)
MAGS = np.array([0, 1, 2, 3, 4, 6, 8, 12], _F)
MANTS = [0, 1, 0x7FEFFF, 0x7FF000, 0x7FF001, 0x7FFFFE, 0x7FFFFF, 0x400000]  # of the block maximum


def _maxima() -> np.ndarray:
    bits = [f << 23 | m for f in range(1, 255) for m in MANTS]  # normal maxima, every exponent
    bits += [1 << s for s in range(23)] + [(1 << s) - 1 for s in range(2, 24)]  # subnormal maxima
    bits += [0x7F7FFFFF - i for i in range(0, 8192, 512)]  # below FLT_MAX: e = 253 (8d, 12d overflow)
    return np.array(bits, np.uint32).view(_F)


def _blocks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amax = _maxima()
    d = e8m0_half(shared_exponent(amax))[:, None]
    nb = amax.size
    with np.errstate(over="ignore"):  # 12d overflows for e = 253 (replaced below)
        near = np.concatenate([MIDS, MAGS])[rng.integers(0, 15, (nb, 32))] * d  # exact: d is a power of two
    near = (near.view(np.uint32).astype(np.int64) + rng.integers(-3, 4, (nb, 32))).clip(0, None)
    near = near.astype(np.uint32).view(_F)
    kind = rng.integers(0, 8, (nb, 32))
    x = np.where(kind < 5, near, 0).astype(_F)
    x = np.where(kind == 5, amax[:, None] * rng.random((nb, 32), _F), x)
    x = np.where(kind == 6, rng.integers(0, 1 << 23, (nb, 32)).astype(np.uint32).view(_F), x)  # subnormal
    x = np.where(np.isfinite(x) & (x <= amax[:, None]), x, amax[:, None] * _F(0.5))
    x[np.arange(nb), rng.integers(0, 32, nb)] = amax
    return np.where(rng.random((nb, 32)) < 0.5, -x, x).astype(_F)


def test_mxfp4_midpoints_subnormals_and_huge_maxima_identical_to_ggml(backend):
    for seed in range(3):
        x = _blocks(seed)
        e = shared_exponent(np.max(np.abs(x), axis=1))
        assert {0, 1, 2, 252, 253, 255} <= set(e.tolist())  # the edges are really there
        ours, ref = quantize(x, "MXFP4"), ggml_quantize(x, "MXFP4")
        same = (ours.reshape(-1, 17) == ref.reshape(-1, 17)).all(axis=1)
        bad = np.flatnonzero(~same)
        assert bad.size == 0, (f"seed {seed}: {bad.size} of {same.size} blocks differ, e.g. max "
                               f"{np.abs(x[bad[:3]]).max(axis=1).tolist()}")


def test_mxfp4_exact_midpoints_take_the_smaller_magnitude(backend):
    """A weight exactly halfway between two magnitudes gets the smaller one (ggml keeps the first minimum)."""
    d = _F(0.25)  # amax = 3 * 2^... in [2, 4): e = 126, d = 2^-2
    row = np.concatenate([MIDS * d, -MIDS * d, [12 * d, -12 * d, 0.0, -0.0], np.zeros(14)]).astype(_F)
    q = quantize(row[None, :], "MXFP4")
    assert np.array_equal(q, ggml_quantize(row[None, :], "MXFP4"))
    nib = np.concatenate([q[0, 1:17] & 0x0F, q[0, 1:17] >> 4])
    assert q[0, 0] == 126
    assert nib[:7].tolist() == [0, 1, 2, 3, 4, 5, 6] and nib[7:14].tolist() == [0, 9, 10, 11, 12, 13, 14]
    assert nib[14:18].tolist() == [7, 15, 0, 0]
