"""MXFP4: OCP microscaling FP4 (E2M1 values, one E8M0 power-of-two scale per 32 weights), NumPy reference.

Byte-exact port of ggml's ``quantize_row_mxfp4_ref`` / ``dequantize_row_mxfp4`` (ggml-quants.c), vectorized
over all blocks. Block (17 bytes): ``e:u8`` (E8M0 exponent), ``qs[16]`` (nibble j: weight j low, j+16 high).

* ``e = amax > 0 ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0``; the float->uint8 conversion of a
  negative value (amax below 2^-125) is taken modulo 256, as x86-64 code does it (cvttss2si, low byte).
  ``floorf(log2f(a))`` is computed as the floor of the correctly rounded float32 log2 (``(float)log2((double)a)``),
  so no platform's ``log2f`` is involved; it equals glibc's ``log2f`` result on every float32 (tests check
  the values next to each power of two, the only ones where rounding can move the floor).
* ``d = 2^(e - 128)`` (``GGML_E8M0_TO_FP32_HALF``; the table ``kvalues_mxfp4`` holds the E2M1 values doubled:
  0, 1, 2, 3, 4, 6, 8, 12 and their negatives).
* Each weight takes the first index ``i`` minimizing ``fabsf(kvalues[i]*d - x)``. The products are exact and
  ``|-k*d - x| = |k*d - |x||`` exactly, so the search runs over the 8 magnitudes on ``|x|`` and a negative
  ``x`` takes the negative entry (index + 8) unless zero wins -- the same first minimum as ggml's 16-way scan.
* That first minimum is the number of midpoints between consecutive magnitudes (0.5, 1.5, 2.5, 3.5, 5, 7, 10
  times ``d``) strictly below ``|x|`` (see ``midpoint_index``); ``best_index`` (the bracketing search) takes
  the blocks where ``12 d`` overflows or ``2/d`` is not a normal float32 (``e < 3`` or ``e > 252``).

Importance weights are ignored, as ggml's ``quantize_mxfp4`` does.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .formats import QuantFormat
from .kquant_search import chunked

_F = np.float32
CHUNK_BLOCKS = 4096
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)  # ggml kvalues_mxfp4
_MAGS = KVALUES[:8].astype(_F)


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """``GGML_E8M0_TO_FP32_HALF``: uint8 exponent -> 2^(e - 128) as float32 (subnormal for e < 2)."""
    e = np.asarray(e).astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23).astype(np.uint32)
    return bits.view(_F)


def floor_log2(a: np.ndarray) -> np.ndarray:
    """``floorf(log2f(a))`` for positive finite float32 ``a`` (see the module docstring) -> float32."""
    return np.floor(np.log2(a.astype(np.float64)).astype(_F))


def shared_exponent(amax: np.ndarray) -> np.ndarray:
    """The block exponent byte ``e`` from the block's max |x|."""
    with np.errstate(divide="ignore"):
        fl = floor_log2(np.where(amax > 0, amax, _F(1)))
    e = (fl - _F(2) + _F(127)).astype(np.int32) & 0xFF
    return np.where(amax > 0, e, 0).astype(np.uint8)


# index of the largest magnitude <= n, for n = floor(|x|/d) in 0..15 (the magnitudes are integers)
_BELOW = np.array([0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7], np.int8)


def best_index(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """ggml's ``best_index_mxfp4(x, d)`` for every value of ``x: [nb, k]``, ``d = 2^(e - 128)`` per block.

    ``|x| < 16 d``, and neighbouring magnitudes are at least ``d`` apart (far more than a rounding error), so
    the first minimum of the scan is one of the two magnitudes around ``|x|/d`` (exact: ``d`` is a power of
    two): the lower one ``c_k``, or the upper ``c_{k+1}`` when ``fabsf(c_{k+1} - a) < fabsf(c_k - a)``
    (ggml keeps the earlier index on a tie). The gaps 1,1,1,1,2,2,4 never shrink, so farther magnitudes
    never tie with the winner."""
    a = np.abs(x)
    d = e8m0_half(e)[:, None]
    s = np.ldexp(a, (128 - e.astype(np.int32))[:, None])             # |x| / d, exact
    k = _BELOW[np.minimum(s, _F(15)).astype(np.int8)]
    lo = _MAGS[k] * d
    hi = _MAGS[np.minimum(k + 1, 7)] * d
    up = (k < 7) & (np.abs(hi - a) < np.abs(lo - a))
    idx = (k + up).astype(np.uint8)
    return idx + np.where((x < 0) & (idx > 0), np.uint8(8), np.uint8(0))


# ggml's index for |x| = n d / 2 - t (0 <= t < d/2), n = 0..32: the midpoints 1, 3, 5, 7, 10, 14, 20 (in d/2) below
# n; then the same for a negative x: index + 8 unless 0 (keys 33..65)
_BY_HALF_D = np.array([sum(n > m for m in (1, 3, 5, 7, 10, 14, 20)) for n in range(33)], np.uint8)
_BY_HALF_D = np.concatenate([_BY_HALF_D, np.where(_BY_HALF_D > 0, _BY_HALF_D + 8, 0).astype(np.uint8)])


def midpoint_index(x: np.ndarray, a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``best_index(x, e)`` for the blocks with ``3 <= e <= 252`` (``a = |x|``; garbage in the other rows).

    There the products ``k d`` are finite and exact, the differences to the two magnitudes around ``|x|``
    are exact (both are multiples of ulp(|x|) and at most ``|x|``), and every other magnitude is at least
    ``d`` farther, so the first minimum of ggml's scan is the lower neighbour unless ``|x|`` lies strictly
    above their midpoint: the index counts the midpoints strictly below ``|x|``. ``y = 2|x|/d`` is exact
    (``2/d = 2^(129-e)`` is a normal float32) or rounded in the subnormal range, far below the first
    midpoint (1); the midpoints are integers, so "m < y" is "m < ceil(y)", and ``ceil(y) <= 32``."""
    two_over_d = ((256 - e.astype(np.uint32)) << 23).astype(np.uint32).view(_F)
    y = np.multiply(a, two_over_d[:, None])
    np.ceil(y, out=y)
    key = y.astype(np.uint8)
    key += (x < 0).view(np.uint8) * np.uint8(33)
    return np.take(_BY_HALF_D, key)


class MXFP4(QuantFormat, qtype=T.MXFP4):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):  # importance weights ignored, as ggml does
        x = np.asarray(x, _F)
        a = np.abs(x)
        e = shared_exponent(np.max(a.view(np.uint32), axis=1).view(_F))  # the bits of |x| order as |x| does
        with np.errstate(over="ignore", invalid="ignore"):
            q = midpoint_index(x, a, e)
            odd = np.flatnonzero((e < 3) | (e > 252))
            if odd.size:
                q[odd] = best_index(x[odd], e[odd])
        out = np.empty((x.shape[0], 17), np.uint8)
        out[:, 0] = e
        np.bitwise_or(q[:, :16], q[:, 16:] << 4, out=out[:, 1:])
        return out

    @classmethod
    def dequantize_blocks(cls, q):
        d = e8m0_half(q[:, 0])[:, None]
        qs = q[:, 1:17]
        v = KVALUES[np.concatenate([qs & 0x0F, qs >> 4], axis=1)].astype(_F)
        return v * d
