"""K-quant block packing shared by the plain and the importance-weighted quantizers (NumPy reference).

The searches (:mod:`slimedge.quant.kquant_search`) give each weight a level and each sub-block a scale
(and min); this module turns those into ggml's bytes and back: the column layout the searches work
in (:func:`to_cols` / :func:`to_rows`), ggml's final re-quantization with the fp16-rounded scales
(:func:`requant`), the bit packings of each block layout (2-bit, 4-bit pairs, 6-bit scales, Q3_K's
12-byte scales, Q5_K's 5th bits, Q6_K) and the finishing steps of Q3_K and Q6_K, whose plain and
weighted paths differ only in the search. :mod:`slimedge.quant.kquants` (the format classes) and
:mod:`slimedge.quant.kquant_imatrix` both import it; it imports neither.

Block layouts (bytes, little-endian; ``QK_K = 256``): see :mod:`slimedge.quant.kquants`.
"""

from __future__ import annotations

import numpy as np

from .kquant_search import ROUND_MAGIC, f16_bits, f16_value, first_absmax, nearest_int, scratch, u16_bytes
from .types import QK_K

_F = np.float32


def to_cols(x: np.ndarray, sub: int) -> np.ndarray:
    """float32[nb, 256] -> float32[sub, nb*256/sub]: one column per sub-block (block-major order)."""
    return np.ascontiguousarray(np.asarray(x, _F).reshape(-1, sub).T)


def to_rows(L: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of :func:`to_cols` for search levels: float32[sub, nb*256/sub] -> uint8[nb, 256]."""
    return np.ascontiguousarray(L.astype(np.uint8).T).reshape(nb, QK_K)


def requant(x: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
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


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """int[nb, 256] values 0..3 -> uint8[nb, 64]: byte (half h, l) = L[h*128 + 32k + l] << 2k."""
    L = L.reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)


def pack_4bit_pairs(L: np.ndarray) -> np.ndarray:
    """int[nb, 256] values 0..15 -> uint8[nb, 128]: byte (chunk c, l) = L[64c + l] | L[64c + 32 + l] << 4."""
    L = L.reshape(-1, 4, 2, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)


def unpack_4bit_pairs(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(-1, QK_K)


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 scales + 8 mins (uint8[nb, 8], values 0..63) -> the 12-byte Q4_K/Q5_K scales field."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    return np.concatenate([ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
                           lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
                           (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)], axis=1)


def unpack_scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``get_scale_min_k4`` for j = 0..7: uint8[nb, 12] -> (scales, mins) uint8[nb, 8]."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def pack_q3_scales(l: np.ndarray) -> np.ndarray:
    """16 six-bit values (uint8[nb, 16]) -> the 12-byte Q3_K scales field."""
    l = l.astype(np.uint8)
    low = (l[:, 0:8] & 0x0F) | ((l[:, 8:16] & 0x0F) << 4)
    hi = l >> 4                                              # [nb, 16] 0..3
    high = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return np.concatenate([low, high], axis=1)


def unpack_q3_scales(s: np.ndarray) -> np.ndarray:
    """12-byte Q3_K scales field -> int32[nb, 16] (already minus 32)."""
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
    high = (s[:, 8:12][:, None, :] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3  # [nb, 4, 4]
    return (low | (high.reshape(-1, 16) << 4)).astype(np.int32) - 32


def finish_q3(x: np.ndarray, L: np.ndarray, d_bits: np.ndarray, scales12: np.ndarray,
               cols: bool = False) -> np.ndarray:
    """Search levels (0..7; ``uint8[nb, 256]``, or with ``cols`` the search's ``[16, nb*16]`` layout), fp16
    ``d`` and packed scales -> Q3_K bytes. Levels are recomputed with the fp16 scales wherever the
    sub-block scale is non-zero, so the search levels are only read for the other sub-blocks."""
    nb = x.shape[0]
    d = f16_value(d_bits)[:, None] * unpack_q3_scales(scales12).astype(_F)          # [nb, 16]
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
    out[:, 32:96] = pack_2bit(q)
    out[:, 96:108] = scales12
    out[:, 108:110] = u16_bytes(d_bits)
    return out


def pack_q2(sc, L, d_bits, dmin_bits):
    """Q2_K bytes from ``scales[16]`` (scale | min << 4), levels ``L: [nb, 256]`` (0..3) and fp16 d, dmin."""
    return np.concatenate([sc.astype(np.uint8), pack_2bit(L), u16_bytes(d_bits), u16_bytes(dmin_bits)], axis=1)


def pack_q4(d, dmin, scales12, L):
    """Q4_K bytes from fp16 d, dmin, the 12-byte scales and levels ``L: [nb, 256]`` (0..15)."""
    return np.concatenate([u16_bytes(d), u16_bytes(dmin), scales12, pack_4bit_pairs(L)], axis=1)


def pack_q5(d, dmin, scales12, L):
    """Q5_K bytes from fp16 d, dmin, the 12-byte scales and levels ``L: [nb, 256]`` (0..31)."""
    nb = L.shape[0]
    L8 = L.reshape(nb, 8, 32)
    qh = np.packbits(L8 > 15, axis=1, bitorder="little").reshape(nb, 32)
    return np.concatenate([u16_bytes(d), u16_bytes(dmin), scales12, qh, pack_4bit_pairs(L & 0x0F)], axis=1)


def finish_q6(x: np.ndarray, L: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Sub-block scales ``scales: float32[nb, 16]`` and search ``L: [nb, 256]`` -> Q6_K bytes."""
    nb = x.shape[0]
    max_scale = first_absmax(scales, axis=1)
    zero = np.abs(max_scale) < np.float32(1e-15)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = _F(-128) / max_scale
        d_bits = f16_bits(_F(1) / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
    d = f16_value(d_bits)[:, None] * sc.astype(_F)
    L = requant(x.reshape(nb, 16, 16), L, d, None, -32, 31).reshape(nb, 2, 4, 32)
    lo = L & 0x0F
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2).reshape(nb, 128)
    hi = L >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), u16_bytes(d_bits)], axis=1)
    out[zero] = 0
    return out
