"""K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K in 256-weight super-blocks (NumPy reference).

Byte-exact ports of ggml's ``quantize_row_q{2..6}_K_ref`` and ``dequantize_row_q{2..6}_K`` (ggml-quants.c),
vectorized over all super-blocks: each super-block is split into sub-blocks (16 or 32 weights) that are
searched together by :mod:`slimedge.quant.kquant_search` (columns = sub-blocks), then the sub-block scales
(and mins) are quantized against a fp16 super-block scale, and every weight is re-quantized with the
fp16-rounded scales, exactly as ggml does.

Block layouts (bytes, little-endian; ``QK_K = 256``):

* Q2_K (84):  ``scales[16]`` (4-bit scale | 4-bit min << 4), ``qs[64]`` (2 bits), ``d:f16``, ``dmin:f16``
* Q3_K (110): ``hmask[32]`` (3rd bit), ``qs[64]`` (2 bits), ``scales[12]`` (16 x 6 bits), ``d:f16``
* Q4_K (144): ``d:f16``, ``dmin:f16``, ``scales[12]`` (8 scales + 8 mins, 6 bits), ``qs[128]``
* Q5_K (176): ``d:f16``, ``dmin:f16``, ``scales[12]``, ``qh[32]`` (5th bit), ``qs[128]``
* Q6_K (210): ``ql[128]`` (low 4 bits), ``qh[64]`` (high 2 bits), ``scales:i8[16]``, ``d:f16``

Importance weights (``w``, an imatrix row) use ggml's ``quantize_row_q*_K_impl`` paths, see
:mod:`slimedge.quant.kquant_imatrix`; the block packing both paths share is :mod:`slimedge.quant.kquant_pack`.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from . import kquant_imatrix
from .formats import QuantFormat
from .kquant_pack import (finish_q3, finish_q6, pack_q2, pack_q3_scales, pack_q4, pack_q5,
                          pack_scale_min_k4, requant, to_cols, to_rows, unpack_2bit, unpack_4bit_pairs, unpack_q3_scales,
                          unpack_scale_min_k4)
from .kquant_search import (chunked, f16_at, f16_bits, f16_value, first_absmax, make_q3_quants, make_qkx_quants,
                            make_qx_quants, nearest_int, scratch, seqsum)
from .types import QK_K

_F = np.float32
CHUNK_BLOCKS = 1024  # blocks quantized per NumPy pass (256K weights): best speed on x86-64


def _quantize_sub_scales(values: np.ndarray, vmax: np.ndarray, levels: float) -> np.ndarray:
    """``MIN(63, (uint8_t)nearest_int(inv*v))`` with ``inv = vmax > 0 ? levels/vmax : 0``."""
    with np.errstate(divide="ignore"):
        inv = np.where(vmax > 0, _F(levels) / vmax, _F(0.0)).astype(_F)
    return np.minimum(nearest_int(inv[:, None] * values) & 0xFF, 63)


def _affine_k(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K/Q5_K super-block quantization. x: float32[nb, 256] -> (d, dmin, scales12, L int[nb, 256])."""
    nb = x.shape[0]
    xc = to_cols(x, 32)                                     # [32, nb*8]
    av_x = np.sqrt(seqsum(xc * xc) / _F(32))
    w = av_x + np.abs(xc)
    L, scales, mins = make_qkx_quants(xc, w, nmax, rmin, 0.1, nstep, use_mad=False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), _F(0.0))
    max_min = np.maximum(mins.max(axis=1), _F(0.0))
    ls = _quantize_sub_scales(scales, max_scale, 63.0)
    lm = _quantize_sub_scales(mins, max_min, 63.0)
    d_bits, dmin_bits = f16_bits(max_scale / _F(63)), f16_bits(max_min / _F(63))
    d = f16_value(d_bits)[:, None] * ls.astype(_F)
    dm = f16_value(dmin_bits)[:, None] * lm.astype(_F)
    L = requant(x.reshape(nb, 8, 32), to_rows(L, nb), d, dm, 0, nmax)
    return d_bits, dmin_bits, pack_scale_min_k4(ls, lm), L


class Q2_K(QuantFormat, qtype=T.Q2_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q2_k_imatrix(x, w)
        x = np.asarray(x, _F)
        nb = x.shape[0]
        xc = to_cols(x, 16)                                 # [16, nb*16]
        L, scales, mins = make_qkx_quants(xc, np.abs(xc), 3, -0.5, 0.1, 15, use_mad=True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale = np.maximum(scales.max(axis=1), _F(0.0))
        max_min = np.maximum(mins.max(axis=1), _F(0.0))
        with np.errstate(divide="ignore"):
            isc = np.where(max_scale > 0, _F(15) / max_scale, _F(0)).astype(_F)
            imn = np.where(max_min > 0, _F(15) / max_min, _F(0)).astype(_F)
        sc = np.where(max_scale[:, None] > 0, nearest_int(isc[:, None] * scales) & 0xFF, 0)
        sc = sc | np.where(max_min[:, None] > 0, (nearest_int(imn[:, None] * mins) << 4) & 0xFF, 0)
        d_bits = f16_bits(np.where(max_scale > 0, max_scale / _F(15), _F(0)))
        dmin_bits = f16_bits(np.where(max_min > 0, max_min / _F(15), _F(0)))
        d = f16_value(d_bits)[:, None] * (sc & 0x0F).astype(_F)
        dm = f16_value(dmin_bits)[:, None] * (sc >> 4).astype(_F)
        L = requant(x.reshape(nb, 16, 16), to_rows(L, nb), d, dm, 0, 3)
        return pack_q2(sc, L, d_bits, dmin_bits)

    @classmethod
    def dequantize_blocks(cls, q):
        sc = q[:, 0:16]
        d, dmin = f16_at(q, 80), f16_at(q, 82)
        dl = (d[:, None] * (sc & 0x0F).astype(_F))[:, :, None]
        ml = (dmin[:, None] * (sc >> 4).astype(_F))[:, :, None]
        v = unpack_2bit(q[:, 16:80]).astype(_F).reshape(-1, 16, 16)
        return (dl * v - ml).reshape(-1, QK_K)


class Q3_K(QuantFormat, qtype=T.Q3_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q3_k_imatrix(x, w)
        x = np.asarray(x, _F)
        nb = x.shape[0]
        xc = scratch("q3_x", (16, nb * 16))                 # [16, nb*16]: one column per sub-block
        np.copyto(xc, x.reshape(-1, 16).T)
        L, scales = make_q3_quants(xc, 4, x.reshape(-1, 16), out=scratch("q3_L", xc.shape))
        scales = scales.reshape(nb, 16)
        max_scale = first_absmax(scales, axis=1)
        nz = max_scale != 0
        with np.errstate(divide="ignore"):
            iscale = np.where(nz, _F(-32) / max_scale, _F(0)).astype(_F)
        l = np.clip(nearest_int(iscale[:, None] * scales).astype(np.int8).astype(np.int32), -32, 31) + 32
        scales12 = np.where(nz[:, None], pack_q3_scales(l), np.uint8(0))
        with np.errstate(divide="ignore"):
            d_bits = f16_bits(np.where(nz, _F(1) / iscale, _F(0)))
        return finish_q3(x, L, d_bits, scales12, cols=True)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 108)
        dl = (d[:, None] * unpack_q3_scales(q[:, 96:108]).astype(_F))[:, :, None]
        low = unpack_2bit(q[:, 32:96]).reshape(-1, 8, 32)
        hm = (q[:, None, 0:32] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        v = ((low | (hm << 2)).view(np.int8) - np.int8(4)).astype(_F).reshape(-1, 16, 16)
        return (dl * v).reshape(-1, QK_K)


def _sub_scales_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K bytes -> sub-block scales and mins ``float32[nb, 8, 1]`` (``d * sc``, ``dmin * m``)."""
    d, dmin = f16_at(q, 0), f16_at(q, 2)
    sc, mn = unpack_scale_min_k4(q[:, 4:16])
    return (d[:, None] * sc.astype(_F))[:, :, None], (dmin[:, None] * mn.astype(_F))[:, :, None]


class Q4_K(QuantFormat, qtype=T.Q4_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q45_k_imatrix(x, w, 15)
        d, dmin, scales12, L = _affine_k(np.asarray(x, _F), 15, -1.0, 20)
        return pack_q4(d, dmin, scales12, L)

    @classmethod
    def dequantize_blocks(cls, q):
        d1, m1 = _sub_scales_k4(q)
        v = unpack_4bit_pairs(q[:, 16:144]).astype(_F).reshape(-1, 8, 32)
        return (d1 * v - m1).reshape(-1, QK_K)


class Q5_K(QuantFormat, qtype=T.Q5_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q45_k_imatrix(x, w, 31)
        return pack_q5(*_affine_k(np.asarray(x, _F), 31, -0.5, 15))

    @classmethod
    def dequantize_blocks(cls, q):
        d1, m1 = _sub_scales_k4(q)
        hb = (q[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1      # [nb, 8, 32]
        v = (unpack_4bit_pairs(q[:, 48:176]).reshape(-1, 8, 32) | (hb << 4)).astype(_F)
        return (d1 * v - m1).reshape(-1, QK_K)


class Q6_K(QuantFormat, qtype=T.Q6_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q6_k_imatrix(x, w)
        x = np.asarray(x, _F)
        nb = x.shape[0]
        L, scales = make_qx_quants(to_cols(x, 16), 32)
        return finish_q6(x, to_rows(L, nb), scales.reshape(nb, 16))

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 208)
        sc = q[:, 192:208].view(np.int8).astype(_F)
        ql = q[:, 0:128].reshape(-1, 2, 2, 32)
        lo = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        hi = (q[:, 128:192].reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
        v = ((lo | (hi << 4)).astype(np.int32) - 32).astype(_F).reshape(-1, 16, 16)
        return ((d[:, None] * sc)[:, :, None] * v).reshape(-1, QK_K)
