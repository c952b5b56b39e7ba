"""NVFP4: NVIDIA's FP4 (E2M1 values, one unsigned E4M3 scale per 16 weights), NumPy reference.

Byte-exact port of ggml's ``quantize_row_nvfp4_ref`` / ``dequantize_row_nvfp4`` (ggml-quants.c), vectorized
over all sub-blocks. Block (64 weights, 36 bytes): ``d[4]`` (UE4M3 scale of each 16-weight sub-block), then
``qs[32]``: sub-block ``s`` owns bytes ``8s .. 8s+7``, nibble ``j`` of them holding weight ``j`` (low) and
``j + 8`` (high).

* ``ue = ggml_fp32_to_ue4m3(amax / 6)`` (:func:`fp32_to_ue4m3`: not-positive -> 0, clamped to 448; below
  2^-6 a subnormal ``(int)(x*512 + 0.5)`` capped at 7; otherwise the top three mantissa bits rounded half
  up on the fourth, biased exponent 7; any exponent of 15 or more gives 0x7E). ``amax`` skips NaNs, as
  ggml's ``amax < fabsf(v)`` test does.
* ``d = ggml_ue4m3_to_fp32(ue)`` (:data:`UE4M3_HALF`): half the scale, as the E2M1 table ``kvalues`` (shared
  with MXFP4) holds the values doubled; 0 for 0x00 and 0x7F; bit 7 is ignored.
* Each weight takes the first index minimizing ``fabsf(kvalues[i]*d - x)``. ``d`` has at most four
  significant bits and the magnitudes at most two, so the products are exact and
  ``|-k*d - x| == |k*d - |x||``: the scan runs over the 8 magnitudes on ``|x|`` (first strict minimum)
  and a negative ``x`` takes the negative entry (index + 8) unless zero wins -- ggml's 16-way first minimum.

Importance weights are ignored, as ggml's ``quantize_nvfp4`` does.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .formats import QuantFormat
from .fp4 import KVALUES
from .kquant_search import chunked

_F = np.float32
SUB = 16  # weights per scale (QK_NVFP4_SUB)
CHUNK_BLOCKS = 4096
_MAGS = KVALUES[:8].astype(_F)


def _ue4m3_half_table() -> np.ndarray:
    """``ggml_ue4m3_to_fp32`` for every byte (all exact in float32)."""
    u = np.arange(256)
    exp, man = (u >> 3) & 0xF, u & 7
    raw = np.where(exp == 0, man * 2.0 ** -9, (1 + man / 8) * 2.0 ** (exp - 7))
    raw[(u == 0) | (u == 0x7F)] = 0.0
    return (raw * 0.5).astype(_F)


UE4M3_HALF = _ue4m3_half_table()


def fp32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """``ggml_fp32_to_ue4m3`` of every float32 value (see the module docstring) -> uint8."""
    x = np.asarray(x, _F)
    pos = x > 0  # False for NaN
    x = np.where(pos, np.minimum(x, _F(448.0)), _F(0.0))
    bits = x.view(np.uint32)
    ue_exp = ((bits >> 23) & 0xFF).astype(np.int32) - 127 + 7
    # subnormal range: man = (int)(x*512 + 0.5f) in float32, capped at 7; below 1 -> 0
    sub = np.minimum((x * _F(512.0) + _F(0.5)).astype(np.int32), 7)
    man = ((bits >> 20) & 7).astype(np.int32) + ((bits >> 19) & 1).astype(np.int32)
    carry = man > 7
    exp = ue_exp + carry
    normal = np.where(exp >= 15, 0x7E, (exp << 3) | np.where(carry, 0, man))
    out = np.where(ue_exp <= 0, np.maximum(sub, 0), np.where(ue_exp >= 15, 0x7E, normal))
    return np.where(pos, out, 0).astype(np.uint8)


def fp4_index(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """First index of ``kvalues`` minimizing ``fabsf(kvalues[i]*d - x)`` (``d`` broadcast against ``x``)."""
    a = np.abs(x)
    best, idx = a.copy(), np.zeros(x.shape, np.uint8)
    with np.errstate(invalid="ignore"):
        for c in range(1, 8):
            err = np.abs(_MAGS[c] * d - a)
            better = err < best
            idx[better] = c
            np.minimum(best, err, out=best, where=better)
    return idx + np.where((x < 0) & (idx > 0), np.uint8(8), np.uint8(0))


class NVFP4(QuantFormat, qtype=T.NVFP4):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):  # importance weights ignored, as ggml does
        x = np.asarray(x, _F)
        nb = x.shape[0]
        xs = x.reshape(nb * 4, SUB)
        a = np.abs(xs)
        amax = np.max(np.where(np.isnan(a), _F(0), a), axis=1)
        ue = fp32_to_ue4m3(amax / _F(6.0))
        q = fp4_index(xs, UE4M3_HALF[ue][:, None])
        out = np.empty((nb, 36), np.uint8)
        out[:, :4] = ue.reshape(nb, 4)
        out[:, 4:] = (q[:, :8] | (q[:, 8:] << 4)).reshape(nb, 32)
        return out

    @classmethod
    def dequantize_blocks(cls, q):
        nb = q.shape[0]
        d = UE4M3_HALF[q[:, :4]].reshape(nb * 4, 1)
        qs = q[:, 4:].reshape(nb * 4, 8)
        v = KVALUES[np.concatenate([qs & 0x0F, qs >> 4], axis=1)].astype(_F)
        return (v * d).reshape(nb, 64)
