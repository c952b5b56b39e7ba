"""Q1_0 and Q2_0: ggml's 1-bit and 2-bit block formats (NumPy reference).

Byte-exact ports of ggml's ``quantize_row_q1_0_ref`` / ``quantize_row_q2_0_ref`` and their
``dequantize_row_*`` (ggml-quants.c), vectorized over all blocks:

* Q1_0 (128 weights, 18 bytes: ``d:f16 qs[16]``): ``d`` = mean absolute value (the sum runs in order,
  ``s += fabsf(x[j])``, then ``/ 128``); bit ``j`` (LSB first) is 1 when ``x[j] >= 0``. Decodes to +d / -d.
* Q2_0 (64 weights, 18 bytes: ``d:f16 qs[16]``): ``d`` = max |x|; ``q = clamp((int)roundf(x/d) + 1, 0, 3)``,
  four 2-bit values per byte, value ``j`` at bits ``2*(j%4)``. Decodes to ``(q - 1) * d``.

Neither uses importance weights: ggml's ``quantize_q1_0`` / ``quantize_q2_0`` ignore them, and so do these.
A block whose scale is subnormal has ``1/d = inf``; C's ``(int)`` of the resulting inf/NaN is x86's
"integer indefinite" (INT32_MIN) in ggml's build, which clamps to 0: reproduced here.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .formats import QuantFormat
from .kquant_search import chunked, f16_at, f16_bits, round_half_away, seqsum, u16_bytes

_F = np.float32
CHUNK_BLOCKS = 4096


class Q1_0(QuantFormat, qtype=T.Q1_0):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):  # importance weights ignored, as ggml does
        ax = np.ascontiguousarray(np.abs(x).T)             # [128, nb]: sequential sum over axis 0
        d = seqsum(ax) / _F(cls.block_size)
        bits = np.packbits(x >= 0, axis=1, bitorder="little")
        return np.concatenate([u16_bytes(f16_bits(d)), bits], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 0)[:, None]
        bits = np.unpackbits(q[:, 2:], axis=1, bitorder="little").astype(bool)
        return np.where(bits, d, -d).astype(_F)


class Q2_0(QuantFormat, qtype=T.Q2_0):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):  # importance weights ignored, as ggml does
        d = np.max(np.abs(x), axis=1)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            id_ = np.where(d > 0, _F(1.0) / d, _F(0.0)).astype(_F)
            v = x * id_[:, None]
            finite = np.abs(v) < _F(2.0 ** 31)
            r = np.where(finite, round_half_away(np.where(finite, v, _F(0))), _F(-2.0 ** 31))
        q = np.clip(r.astype(np.int64) + 1, 0, 3).astype(np.uint8).reshape(-1, 16, 4)
        qs = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
        return np.concatenate([u16_bytes(f16_bits(d)), qs], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 0)[:, None]
        qs = q[:, 2:, None] >> np.array([0, 2, 4, 6], np.uint8)
        v = (qs & 3).reshape(-1, 64).astype(np.int32) - 1
        return v.astype(_F) * d
