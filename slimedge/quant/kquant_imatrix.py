"""Importance-weighted (imatrix) k-quants: ggml's ``quantize_row_q{2..6}_K_impl`` with quant_weights.

``w: float32[nb, 256]`` holds each weight's importance (an imatrix row, repeated for every row of the
tensor). As in ggml, the weights of the sub-block searches are ``w * sqrt(sigma2 + x*x)`` with ``sigma2``
the super-block's mean square (times 2 for Q3_K..Q5_K); the sub-block scales and mins are then quantized
by weighted searches (``make_qp_quants`` / ``make_qx_quants``) instead of plain rounding.
Vectorized over all super-blocks like the unweighted paths; bit-exact with ``ggml_quantize_chunk``.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .kquant_search import (f16_bits, f16_value, make_qkx_quants, make_qp_quants, make_qx_quants,
                            seqsum)

_F = np.float32
QK_K = 256


def supported(qtype) -> bool:
    return qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)


def _sum_x2(x: np.ndarray) -> np.ndarray:
    """Sequential sum of squares over each 256-weight super-block: float32[nb]."""
    xt = np.ascontiguousarray(x.T)
    return seqsum(xt * xt)


def _sub_weights(x: np.ndarray, w: np.ndarray, sigma2: np.ndarray, sub: int):
    """``qw * sqrtf(sigma2 + x*x)`` in sub-block column layout, plus the columns ``xs``: ([sub, M], [sub, M])."""
    from .kquants import _cols
    xs, qs = _cols(x, sub), _cols(w, sub)
    sig = np.repeat(sigma2, QK_K // sub)
    return xs, qs * np.sqrt(sig + xs * xs)


def quantize_q2_k_imatrix(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    from .kquants import _pack_2bit, _requant, _rows, _u16_bytes
    x, w = np.asarray(x, _F), np.asarray(w, _F)
    nb = x.shape[0]
    xs, weight = _sub_weights(x, w, _sum_x2(x) / _F(QK_K), 16)
    sw = seqsum(weight).reshape(nb, 16)
    L, scales, mins = make_qkx_quants(xs, weight, 3, -0.9, 0.05, 36, use_mad=False, le_degenerate=True)
    Ls, dm = make_qp_quants(scales.reshape(nb, 16).T, 15, sw.T)
    Lm, mm = make_qp_quants(mins.reshape(nb, 16).T, 15, sw.T)
    d_bits, dmin_bits = f16_bits(dm), f16_bits(mm)
    sc = np.ascontiguousarray((Ls | (Lm << 4)).T)                    # uint8[nb, 16]
    d = f16_value(d_bits)[:, None] * (sc & 0x0F).astype(_F)
    m = f16_value(dmin_bits)[:, None] * (sc >> 4).astype(_F)
    L = _requant(x.reshape(nb, 16, 16), _rows(L, nb), d, m, 0, 3)
    return np.concatenate([sc, _pack_2bit(L), _u16_bytes(d_bits), _u16_bytes(dmin_bits)], axis=1)


def quantize_q3_k_imatrix(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    from .kquants import _finish_q3, _pack_q3_scales, _rows
    x, w = np.asarray(x, _F), np.asarray(w, _F)
    nb = x.shape[0]
    xs, weight = _sub_weights(x, w, _F(2) * _sum_x2(x) / _F(QK_K), 16)
    sw = seqsum(weight).reshape(nb, 16)
    L, scales = make_qx_quants(xs, 4, qw=weight)
    Ls, d_block = make_qx_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 32, qw=sw.T)
    scales12 = _pack_q3_scales(Ls.T.astype(np.uint8))
    return _finish_q3(x, _rows(L, nb), f16_bits(d_block), scales12)


def quantize_q45_k_imatrix(x: np.ndarray, w: np.ndarray, nmax: int) -> np.ndarray:
    """Q4_K (nmax 15) and Q5_K (nmax 31) with importance weights."""
    from .kquants import (_pack_4bit_pairs, _pack_q5, _pack_scale_min_k4, _requant, _rows, _u16_bytes,
                          _unpack_scale_min_k4)
    x, w = np.asarray(x, _F), np.asarray(w, _F)
    nb = x.shape[0]
    xs, weight = _sub_weights(x, w, _F(2) * _sum_x2(x) / _F(QK_K), 32)
    sw = seqsum(weight).reshape(nb, 8)
    L, scales, mins = make_qkx_quants(xs, weight, nmax, -0.9, 0.05, 36, use_mad=False, le_degenerate=True)
    Ls, d_block = make_qp_quants(scales.reshape(nb, 8).T, 63, sw.T)
    Lm, m_block = make_qp_quants(mins.reshape(nb, 8).T, 63, sw.T)
    ls, lm = np.ascontiguousarray(Ls.T), np.ascontiguousarray(Lm.T)
    if nmax == 31:  # Q5_K clamps, Q4_K does not
        ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    scales12 = _pack_scale_min_k4(ls, lm)
    d_bits, dmin_bits = f16_bits(d_block), f16_bits(m_block)
    sc, mn = _unpack_scale_min_k4(scales12)
    d = f16_value(d_bits)[:, None] * sc.astype(_F)
    dm = f16_value(dmin_bits)[:, None] * mn.astype(_F)
    L = _requant(x.reshape(nb, 8, 32), _rows(L, nb), d, dm, 0, nmax)
    if nmax == 31:
        return _pack_q5(d_bits, dmin_bits, scales12, L)
    return np.concatenate([_u16_bytes(d_bits), _u16_bytes(dmin_bits), scales12, _pack_4bit_pairs(L)], axis=1)


def quantize_q6_k_imatrix(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    from .kquants import _cols, _finish_q6, _rows
    x, w = np.asarray(x, _F), np.asarray(w, _F)
    nb = x.shape[0]
    L, scales = make_qx_quants(_cols(x, 16), 32, qw=_cols(w, 16))
    return _finish_q6(x, _rows(L, nb), scales.reshape(nb, 16))
