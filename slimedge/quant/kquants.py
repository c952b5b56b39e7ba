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
:mod:`slimedge.quant.kquant_imatrix`.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from . import kquant_imatrix
from .formats import QuantFormat
from .kquant_search import (ROUND_MAGIC, chunked, f16_bits, f16_value, first_absmax, make_q3_quants,
                            make_qkx_quants, make_qx_quants, nearest_int, scratch, seqsum)

_F = np.float32
CHUNK_BLOCKS = 1024  # blocks quantized per NumPy pass (256K weights): best speed on x86-64
QK_K = 256


def _cols(x: np.ndarray, sub: int) -> np.ndarray:
    """float32[nb, 256] -> float32[sub, nb*256/sub]: one column per sub-block (block-major order)."""
    return np.ascontiguousarray(np.asarray(x, _F).reshape(-1, sub).T)


def _rows(L: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of :func:`_cols` for search levels: float32[sub, nb*256/sub] -> uint8[nb, 256]."""
    return np.ascontiguousarray(L.astype(np.uint8).T).reshape(nb, QK_K)


def _u16_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(v).astype("<u2")).view(np.uint8).reshape(-1, 2)


def _f16_at(q: np.ndarray, at: int) -> np.ndarray:
    return f16_value(np.ascontiguousarray(q[:, at:at + 2]).view("<u2").reshape(-1))


def _requant(x: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    """Final pass with the fp16-rounded sub-block scales ``d: [nb, nsub]`` (and mins ``dm``):
    ``clamp(nearest_int((x + dm)/d), lo, hi) - lo`` where ``d != 0``; sub-blocks with ``d == 0`` keep the
    search levels ``L`` (already offset by ``-lo``). ``x: float32[nb, nsub, sub]``, ``L: uint8[nb, 256]``;
    returns uint8[nb, 256] offset levels."""
    nb = x.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (x if dm is None else x + dm[..., None]) / d[..., None]
    t += ROUND_MAGIC                            # ggml's nearest_int, bit for bit
    v = t.view(np.int32)
    v &= 0x007FFFFF
    np.clip(v, np.int32(0x400000 + lo), np.int32(0x400000 + hi), out=v)
    v -= np.int32(0x400000 + lo)
    q = v.astype(np.uint8).reshape(nb, -1, x.shape[-1])
    skip = d == 0
    if skip.any():
        q[skip] = L.reshape(q.shape)[skip]
    return q.reshape(nb, QK_K)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """int[nb, 256] values 0..3 -> uint8[nb, 64]: byte (half h, l) = L[h*128 + 32k + l] << 2k."""
    L = L.reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)


def _pack_4bit_pairs(L: np.ndarray) -> np.ndarray:
    """int[nb, 256] values 0..15 -> uint8[nb, 128]: byte (chunk c, l) = L[64c + l] | L[64c + 32 + l] << 4."""
    L = L.reshape(-1, 4, 2, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)


def _unpack_4bit_pairs(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(-1, QK_K)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 scales + 8 mins (uint8[nb, 8], values 0..63) -> the 12-byte Q4_K/Q5_K scales field."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    return np.concatenate([ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
                           lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
                           (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)], axis=1)


def _unpack_scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``get_scale_min_k4`` for j = 0..7: uint8[nb, 12] -> (scales, mins) uint8[nb, 8]."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def _quantize_sub_scales(values: np.ndarray, vmax: np.ndarray, levels: float) -> np.ndarray:
    """``MIN(63, (uint8_t)nearest_int(inv*v))`` with ``inv = vmax > 0 ? levels/vmax : 0``."""
    with np.errstate(divide="ignore"):
        inv = np.where(vmax > 0, _F(levels) / vmax, _F(0.0)).astype(_F)
    return np.minimum(nearest_int(inv[:, None] * values) & 0xFF, 63)


def _affine_k(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K/Q5_K super-block quantization. x: float32[nb, 256] -> (d, dmin, scales12, L int[nb, 256])."""
    nb = x.shape[0]
    xc = _cols(x, 32)                                        # [32, nb*8]
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
    L = _requant(x.reshape(nb, 8, 32), _rows(L, nb), d, dm, 0, nmax)
    return d_bits, dmin_bits, _pack_scale_min_k4(ls, lm), L


class Q2_K(QuantFormat, qtype=T.Q2_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q2_k_imatrix(x, w)
        x = np.asarray(x, _F)
        nb = x.shape[0]
        xc = _cols(x, 16)                                    # [16, nb*16]
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
        L = _requant(x.reshape(nb, 16, 16), _rows(L, nb), d, dm, 0, 3)
        return np.concatenate([sc.astype(np.uint8), _pack_2bit(L), _u16_bytes(d_bits), _u16_bytes(dmin_bits)],
                              axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        sc = q[:, 0:16]
        d, dmin = _f16_at(q, 80), _f16_at(q, 82)
        dl = (d[:, None] * (sc & 0x0F).astype(_F))[:, :, None]
        ml = (dmin[:, None] * (sc >> 4).astype(_F))[:, :, None]
        v = _unpack_2bit(q[:, 16:80]).astype(_F).reshape(-1, 16, 16)
        return (dl * v - ml).reshape(-1, QK_K)


def _pack_q3_scales(l: np.ndarray) -> np.ndarray:
    """16 six-bit values (uint8[nb, 16]) -> the 12-byte Q3_K scales field."""
    l = l.astype(np.uint8)
    low = (l[:, 0:8] & 0x0F) | ((l[:, 8:16] & 0x0F) << 4)
    hi = l >> 4                                              # [nb, 16] 0..3
    high = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return np.concatenate([low, high], axis=1)


def _unpack_q3_scales(s: np.ndarray) -> np.ndarray:
    """12-byte Q3_K scales field -> int32[nb, 16] (already minus 32)."""
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
    high = (s[:, 8:12][:, None, :] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3  # [nb, 4, 4]
    return (low | (high.reshape(-1, 16) << 4)).astype(np.int32) - 32


def _finish_q3(x: np.ndarray, L: np.ndarray, d_bits: np.ndarray, scales12: np.ndarray,
               cols: bool = False) -> np.ndarray:
    """Search levels (0..7; ``uint8[nb, 256]``, or with ``cols`` the search's ``[16, nb*16]`` layout), fp16
    ``d`` and packed scales -> Q3_K bytes. Levels are recomputed with the fp16 scales wherever the
    sub-block scale is non-zero, so the search levels are only read for the other sub-blocks."""
    nb = x.shape[0]
    d = f16_value(d_bits)[:, None] * _unpack_q3_scales(scales12).astype(_F)          # [nb, 16]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.divide(x.reshape(nb, 16, 16), d[..., None], out=scratch("q3f_t", (nb, 16, 16)))
    t += ROUND_MAGIC                            # ggml's nearest_int, bit for bit, clamped to -4..3
    v = t.view(np.int32)
    v &= 0x007FFFFF
    np.clip(v, np.int32(0x400000 - 4), np.int32(0x400000 + 3), out=v)
    q = scratch("q3f_q", (nb, QK_K), np.uint8)
    np.copyto(q, v.reshape(nb, QK_K), casting="unsafe")  # the low byte of 0x400000 + l (l = -4..3) ...
    q -= np.uint8(0xFC)                         # ... minus 0xFC (mod 256) is l + 4
    skip = np.flatnonzero(d.ravel() == 0)       # sub-blocks that keep the search levels
    if skip.size:
        qs = q.reshape(-1, 16)
        qs[skip] = (L.T[skip] if cols else L.reshape(-1, 16)[skip]).astype(np.uint8)
    out = np.empty((nb, 110), dtype=np.uint8)
    # the 3rd bit: hmask[m] bit k = L[32k + m] > 3, 8 bytes (0/1 each) per uint64 word: no carries
    h = np.right_shift(q, 2, out=scratch("q3f_h", (nb, QK_K), np.uint8)).view(np.uint64).reshape(nb, 8, 4)
    hm = h[:, 0].copy()
    for k in range(1, 8):
        hm |= h[:, k] << np.uint64(k)
    out[:, 0:32] = hm.view(np.uint8).reshape(nb, 32)
    q &= 3
    out[:, 32:96] = _pack_2bit(q)
    out[:, 96:108] = scales12
    out[:, 108:110] = _u16_bytes(d_bits)
    return out


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
        scales12 = np.where(nz[:, None], _pack_q3_scales(l), np.uint8(0))
        with np.errstate(divide="ignore"):
            d_bits = f16_bits(np.where(nz, _F(1) / iscale, _F(0)))
        return _finish_q3(x, L, d_bits, scales12, cols=True)

    @classmethod
    def dequantize_blocks(cls, q):
        d = _f16_at(q, 108)
        dl = (d[:, None] * _unpack_q3_scales(q[:, 96:108]).astype(_F))[:, :, None]
        low = _unpack_2bit(q[:, 32:96]).reshape(-1, 8, 32)
        hm = (q[:, None, 0:32] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        v = ((low | (hm << 2)).view(np.int8) - np.int8(4)).astype(_F).reshape(-1, 16, 16)
        return (dl * v).reshape(-1, QK_K)


def _sub_scales_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K bytes -> sub-block scales and mins ``float32[nb, 8, 1]`` (``d * sc``, ``dmin * m``)."""
    d, dmin = _f16_at(q, 0), _f16_at(q, 2)
    sc, mn = _unpack_scale_min_k4(q[:, 4:16])
    return (d[:, None] * sc.astype(_F))[:, :, None], (dmin[:, None] * mn.astype(_F))[:, :, None]


class Q4_K(QuantFormat, qtype=T.Q4_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q45_k_imatrix(x, w, 15)
        d, dmin, scales12, L = _affine_k(np.asarray(x, _F), 15, -1.0, 20)
        return np.concatenate([_u16_bytes(d), _u16_bytes(dmin), scales12, _pack_4bit_pairs(L)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d1, m1 = _sub_scales_k4(q)
        v = _unpack_4bit_pairs(q[:, 16:144]).astype(_F).reshape(-1, 8, 32)
        return (d1 * v - m1).reshape(-1, QK_K)


def _pack_q5(d, dmin, scales12, L):
    nb = L.shape[0]
    L8 = L.reshape(nb, 8, 32)
    qh = np.packbits(L8 > 15, axis=1, bitorder="little").reshape(nb, 32)
    return np.concatenate([_u16_bytes(d), _u16_bytes(dmin), scales12, qh, _pack_4bit_pairs(L & 0x0F)], axis=1)


class Q5_K(QuantFormat, qtype=T.Q5_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q45_k_imatrix(x, w, 31)
        return _pack_q5(*_affine_k(np.asarray(x, _F), 31, -0.5, 15))

    @classmethod
    def dequantize_blocks(cls, q):
        d1, m1 = _sub_scales_k4(q)
        hb = (q[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1      # [nb, 8, 32]
        v = (_unpack_4bit_pairs(q[:, 48:176]).reshape(-1, 8, 32) | (hb << 4)).astype(_F)
        return (d1 * v - m1).reshape(-1, QK_K)


def _finish_q6(x: np.ndarray, L: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Sub-block scales ``scales: float32[nb, 16]`` and search ``L: [nb, 256]`` -> Q6_K bytes."""
    nb = x.shape[0]
    max_scale = first_absmax(scales, axis=1)
    zero = np.abs(max_scale) < np.float32(1e-15)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = _F(-128) / max_scale
        d_bits = f16_bits(_F(1) / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
    d = f16_value(d_bits)[:, None] * sc.astype(_F)
    L = _requant(x.reshape(nb, 16, 16), L, d, None, -32, 31).reshape(nb, 2, 4, 32)
    lo = L & 0x0F
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2).reshape(nb, 128)
    hi = L >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _u16_bytes(d_bits)], axis=1)
    out[zero] = 0
    return out


class Q6_K(QuantFormat, qtype=T.Q6_K):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        if w is not None:  # importance weights: ggml's quantize_row_*_impl
            return kquant_imatrix.quantize_q6_k_imatrix(x, w)
        x = np.asarray(x, _F)
        nb = x.shape[0]
        L, scales = make_qx_quants(_cols(x, 16), 32)
        return _finish_q6(x, _rows(L, nb), scales.reshape(nb, 16))

    @classmethod
    def dequantize_blocks(cls, q):
        d = _f16_at(q, 208)
        sc = q[:, 192:208].view(np.int8).astype(_F)
        ql = q[:, 0:128].reshape(-1, 2, 2, 32)
        lo = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        hi = (q[:, 128:192].reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
        v = ((lo | (hi << 4)).astype(np.int32) - 32).astype(_F).reshape(-1, 16, 16)
        return ((d[:, None] * sc)[:, :, None] * v).reshape(-1, QK_K)
