"""Importance-weighted (imatrix) k-quants: ggml's ``quantize_row_q{2..6}_K_impl`` with quant_weights.

``w: float32[nb, 256]`` holds each weight's importance (an imatrix row, repeated for every row of the
tensor). As in ggml, the weights of the sub-block searches are ``w * sqrt(sigma2 + x*x)`` with ``sigma2``
the super-block's mean square (times 2 for Q3_K..Q5_K; Q6_K uses ``w`` as is); the sub-block scales and
mins are then quantized by weighted searches (``make_qp_quants`` / ``make_qx_quants``) instead of plain
rounding.
Vectorized over all super-blocks like the unweighted paths; bit-exact with ``ggml_quantize_chunk``.
The block packing is :mod:`slimedge.quant.kquant_pack`'s, shared with :mod:`slimedge.quant.kquants`.
"""

from __future__ import annotations

import numpy as np

from .kquant_pack import (finish_q3, finish_q6, pack_q2, pack_q3_scales, pack_q4, pack_q5, pack_scale_min_k4,
                          requant, to_cols, to_rows, unpack_scale_min_k4)
from .kquant_search import (GROUP_MAX_EPS, f16_bits, f16_value, make_qkx_quants, make_qx_quants, nearest_int,
                            seqsum)
from .types import QK_K

_F = np.float32


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray):
    """``make_qp_quants(n, nmax, x, L, quant_weights)`` over the columns of ``x: float32[n, M]``
    (the n sub-block scales or mins of each super-block). Returns ``(L: uint8[n, M], scale: float32[M])``.

    Levels are stored in ``uint8`` as in C (a negative level wraps), while the running sums use the
    signed level, exactly like the C code. The refinement is sequential over the n elements and
    vectorized over the columns that still change.
    """
    x = np.ascontiguousarray(x, dtype=_F)
    w = np.ascontiguousarray(qw, dtype=_F)
    n, M = x.shape
    fn = _F(nmax)
    mx = np.maximum(x.max(axis=0), _F(0.0))
    zero = mx < GROUP_MAX_EPS
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fn / mx
        scale = _F(1.0) / iscale
        l0 = (nearest_int(iscale * x) & 0xFF).astype(_F)      # stored in uint8 L[i]
        diff = x - scale * l0
        best = seqsum(w * diff * diff)
        best_iscale = iscale
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (_F(0.1) * _F(step) + fn) / mx
            scale_is = _F(1.0) / iscale_is
            l = np.minimum(nearest_int(iscale_is * x), nmax).astype(_F)
            diff = x - scale_is * l
            mse = seqsum(w * diff * diff)
            upd = mse < best
            best = np.where(upd, mse, best)
            best_iscale = np.where(upd, iscale_is, best_iscale)
        l = np.minimum(nearest_int(best_iscale * x), nmax)
        L = (l & 0xFF).astype(_F)
        l = l.astype(_F)
        sumlx = seqsum(wx * l)
        suml2 = seqsum(w * l * l)
        active = np.flatnonzero(~zero)
        for _ in range(5):
            if active.size == 0:
                break
            xa, wa, wxa, La = x[:, active], w[:, active], wx[:, active], L[:, active]
            s1, s2 = sumlx[active], suml2[active]
            changed = np.zeros(active.size, dtype=bool)
            for i in range(n):
                li = La[i]
                slx = s1 - wxa[i] * li
                sl2 = s2 - wa[i] * li * li
                new_l = np.minimum(nearest_int(xa[i] * sl2 / slx), nmax).astype(_F)
                nslx = slx + wxa[i] * new_l
                nsl2 = sl2 + wa[i] * new_l * new_l
                acc = (slx > 0) & (sl2 > 0) & (new_l != li) & (nslx * nslx * s2 > s1 * s1 * nsl2)
                if acc.any():
                    La[i] = np.where(acc, (new_l.astype(np.int32) & 0xFF).astype(_F), li)
                    s1 = np.where(acc, nslx, s1)
                    s2 = np.where(acc, nsl2, s2)
                    changed |= acc
            L[:, active] = La
            sumlx[active] = s1
            suml2[active] = s2
            active = active[changed]
        scale = np.where(suml2 > 0, sumlx / suml2, _F(0.0)).astype(_F)
    L[:, zero] = 0
    return L.astype(np.uint8), np.where(zero, _F(0.0), scale).astype(_F)


def _sum_x2(x: np.ndarray) -> np.ndarray:
    """Sequential sum of squares over each 256-weight super-block: float32[nb]."""
    xt = np.ascontiguousarray(x.T)
    return seqsum(xt * xt)


def _sub_weights(x: np.ndarray, w: np.ndarray, sigma2: np.ndarray, sub: int):
    """``qw * sqrtf(sigma2 + x*x)`` in sub-block column layout, plus the columns ``xs``: ([sub, M], [sub, M])."""
    xs, qs = to_cols(x, sub), to_cols(w, sub)
    sig = np.repeat(sigma2, QK_K // sub)
    return xs, qs * np.sqrt(sig + xs * xs)


def quantize_q2_k_imatrix(x: np.ndarray, w: np.ndarray) -> np.ndarray:
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
    L = requant(x.reshape(nb, 16, 16), to_rows(L, nb), d, m, 0, 3)
    return pack_q2(sc, L, d_bits, dmin_bits)


def quantize_q3_k_imatrix(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    x, w = np.asarray(x, _F), np.asarray(w, _F)
    nb = x.shape[0]
    xs, weight = _sub_weights(x, w, _F(2) * _sum_x2(x) / _F(QK_K), 16)
    sw = seqsum(weight).reshape(nb, 16)
    L, scales = make_qx_quants(xs, 4, qw=weight)
    Ls, d_block = make_qx_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 32, qw=sw.T)
    scales12 = pack_q3_scales(Ls.T.astype(np.uint8))
    return finish_q3(x, to_rows(L, nb), f16_bits(d_block), scales12)


def quantize_q45_k_imatrix(x: np.ndarray, w: np.ndarray, nmax: int) -> np.ndarray:
    """Q4_K (nmax 15) and Q5_K (nmax 31) with importance weights."""
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
    scales12 = pack_scale_min_k4(ls, lm)
    d_bits, dmin_bits = f16_bits(d_block), f16_bits(m_block)
    sc, mn = unpack_scale_min_k4(scales12)
    d = f16_value(d_bits)[:, None] * sc.astype(_F)
    dm = f16_value(dmin_bits)[:, None] * mn.astype(_F)
    L = requant(x.reshape(nb, 8, 32), to_rows(L, nb), d, dm, 0, nmax)
    if nmax == 31:
        return pack_q5(d_bits, dmin_bits, scales12, L)
    return pack_q4(d_bits, dmin_bits, scales12, L)


def quantize_q6_k_imatrix(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    x, w = np.asarray(x, _F), np.asarray(w, _F)
    nb = x.shape[0]
    L, scales = make_qx_quants(to_cols(x, 16), 32, qw=to_cols(w, 16))
    return finish_q6(x, to_rows(L, nb), scales.reshape(nb, 16))
