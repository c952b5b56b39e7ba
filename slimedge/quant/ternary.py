"""TQ1_0 and TQ2_0: ggml's ternary formats (BitNet b1.58 / TriLM), NumPy reference.

Byte-exact ports of ggml's ``quantize_row_tq{1,2}_0_ref`` and ``dequantize_row_tq{1,2}_0``
(ggml-quants.c), vectorized over all 256-weight blocks. Both take ``d = max |x|`` and the trit
``t = lroundf(x/d) + 1`` in {0, 1, 2} (-1, 0, +1). When ``d`` is subnormal, ``1/d = inf``: glibc's
x86-64 ``lroundf`` of inf/NaN returns LONG_MIN, whose ``+ 1`` truncated to ``int`` is 1 -- the zero
trit; reproduced here (and in the C kernel) so the bytes do not depend on the platform's lroundf.

* TQ2_0 (66 bytes: ``qs[64] d:f16``): 2 bits per trit; byte ``m`` of each 32-byte half ``h`` holds
  the trits of weights ``128*h + m + 32*n`` at bits ``2n`` (n = 0..3).
* TQ1_0 (54 bytes: ``qs[48] qh[4] d:f16``): five trits per byte in base 3 (first trit most
  significant), stored as ``ceil(v * 256 / 243)`` so that ``(uint8)(byte * 3^n) * 3 >> 8`` decodes
  trit ``n``. ``qs[0:32]`` hold weights ``m + 32n`` (0..159), ``qs[32:48]`` weights ``160 + m + 16n``,
  ``qh[0:4]`` four trits each, weights ``240 + j + 4n``, with a fifth (zero) trit appended.

Importance weights are ignored, as ggml does.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .formats import QuantFormat
from .kquant_search import chunked, f16_at, f16_bits, round_half_away, u16_bytes

_F = np.float32
CHUNK_BLOCKS = 1024
_POW3 = np.array([1, 3, 9, 27, 81, 243], np.uint8)


def _trits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (fp16 bits of d [nb], trits uint8[nb, 256] in {0, 1, 2})."""
    d = np.max(np.abs(x), axis=1)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        id_ = np.where(d != 0, _F(1.0) / d, _F(0.0)).astype(_F)
        v = x * id_[:, None]
        finite = np.abs(v) < _F(2.0 ** 31)
        t = np.where(finite, round_half_away(np.where(finite, v, _F(0))) + _F(1), _F(1))
    return f16_bits(d), t.astype(np.uint8)


def _base3(t: np.ndarray) -> np.ndarray:
    """trits ``t[..., k]`` (first most significant) -> ``ceil(v * 256 / 243)`` as uint8."""
    v = np.zeros(t.shape[:-1], np.uint16)
    for n in range(t.shape[-1]):
        v = v * 3 + t[..., n]
    return ((v * 256 + 242) // 243).astype(np.uint8)


class TQ1_0(QuantFormat, qtype=T.TQ1_0):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        d, t = _trits(np.asarray(x, _F))
        nb = t.shape[0]
        a = _base3(t[:, :160].reshape(nb, 5, 32).transpose(0, 2, 1))      # byte m: trits m + 32n
        b = _base3(t[:, 160:240].reshape(nb, 5, 16).transpose(0, 2, 1))   # byte m: trits 160 + m + 16n
        h = t[:, 240:].reshape(nb, 4, 4).transpose(0, 2, 1)               # byte j: trits 240 + j + 4n
        c = _base3(np.concatenate([h, np.zeros((nb, 4, 1), np.uint8)], axis=2))
        return np.concatenate([a, b, c, u16_bytes(d)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 52)[:, None]
        nb = q.shape[0]

        def trits(b):  # uint8[nb, k] -> [nb, 5, k]: trit n of every byte
            p = (b[:, None, :] * _POW3[:5, None]).astype(np.uint8)
            return ((p.astype(np.uint16) * 3) >> 8).astype(np.int16)

        a = trits(q[:, 0:32]).reshape(nb, 160)
        b = trits(q[:, 32:48]).reshape(nb, 80)
        c = trits(q[:, 48:52])[:, :4].reshape(nb, 16)
        v = np.concatenate([a, b, c], axis=1) - 1
        return v.astype(_F) * d


class TQ2_0(QuantFormat, qtype=T.TQ2_0):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        d, t = _trits(np.asarray(x, _F))
        t = (t & 3).reshape(-1, 2, 4, 32)                                  # [nb, half, n, m]
        qs = t[:, :, 0] | (t[:, :, 1] << 2) | (t[:, :, 2] << 4) | (t[:, :, 3] << 6)
        return np.concatenate([qs.reshape(-1, 64), u16_bytes(d)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 64)[:, None]
        qs = q[:, :64].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]  # [nb, half, l, m]
        v = (qs & 3).reshape(-1, 256).astype(np.int16) - 1
        return v.astype(_F) * d
