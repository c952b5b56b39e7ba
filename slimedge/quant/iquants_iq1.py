"""IQ1_S and IQ1_M: NumPy reference quantizers and dequantizers, byte-identical to ggml's.

Layouts (256 weights per block): IQ1_S (50 bytes) = fp16 d, 32 grid-index low bytes, 8 x u16 (3 x 3 index
high bits, 3-bit scale, shift sign) — 8 sub-blocks of 32; IQ1_M (56) = 32 index low bytes, 16 bytes of
index high bits + shift signs, 8 bytes of 3-bit scales holding the fp16 d in their top nibbles — 16
sub-blocks of 16. Values are d*(2s+1)*(l - 1 +- 1/8), l the grid levels 0..2.

How (ggml's algorithm): the sub-block's values are sorted (stably: ggml's qsort is glibc's merge sort)
and every split into three groups is scored with prefix sums, in ggml's order, as one Python loop over
the splits vectorized over all sub-blocks; each group of 8 levels is snapped to the 2048-point grid
(off-grid keys: best neighbour at the found scale); the scales are quantized against the largest.
IQ1_S needs importance weights (ggml asserts without); IQ1_M takes them when given.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from . import iq_grids, iq_search
from .formats import QuantFormat
from .iquants import _prepare, needs_weights
from .kquant_search import chunked, f16_at, f16_bits, f16_value, nearest_int, seqsum, u16_bytes
from .types import QK_K

_F = np.float32
DELTA = _F(0.125)
X_P = np.array([-1 + DELTA, DELTA, 1 + DELTA], _F)
X_M = np.array([-1 - DELTA, -DELTA, 1 - DELTA], _F)


def _neighbour2(G, keys, xg, wg, scale, xx):
    """ggml's iq1_find_best_neighbour2 for K groups: values xg[K, 8], weights wg[K, 8], scale[K],
    level values xx[K, 3] -> grid index[K]."""
    out = np.empty(keys.size, dtype=np.intp)
    for a in range(0, keys.size, 4096):
        b = min(keys.size, a + 4096)
        cand = G.nb_index[G.nb_row[keys[a:b]]]
        valid = cand >= 0
        ci = np.where(valid, cand, 0).astype(np.intp)
        lv = G.levels[ci]  # [k, W, 8]
        d2 = np.zeros(ci.shape, _F)
        rows = np.arange(b - a)[:, None]
        for i in range(8):
            q = xx[a:b][rows, lv[:, :, i]]
            diff = scale[a:b, None] * q - xg[a:b, None, i]
            d2 += wg[a:b, None, i] * diff * diff
        d2 = np.where(valid & ~np.isnan(d2), d2, _F(np.inf))
        out[a:b] = ci[np.arange(b - a), np.argmin(d2, axis=1)]
    return out


def _split_search(xs, weight, halves: bool):
    """Best split of each column's sorted values into levels 0/1/2 -> (L int8[SB, M], scale, shift/kind, ok)."""
    SB, M = xs.shape
    idx = np.argsort(xs, axis=0, kind="stable")
    cols = np.arange(M)[None, :]
    wx = (weight * xs)[idx, cols]
    ws = weight[idx, cols]
    best = np.full(M, -np.finfo(_F).max, _F)
    scale = np.max(np.abs(xs), axis=0).astype(_F)
    b1 = np.full(M, -1)
    b2 = np.full(M, -1)
    bk = np.full(M, -1 if halves else 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if not halves:
            S = np.concatenate([np.zeros((1, M), _F), np.cumsum(wx, axis=0, dtype=_F)])
            W = np.concatenate([np.zeros((1, M), _F), np.cumsum(ws, axis=0, dtype=_F)])
            cands = []
            for i1 in range(SB + 1):
                for i2 in range(i1, SB + 1):
                    for sh, xv in ((1, X_P), (-1, X_M)):
                        sx = (S[i1] - S[0]) * xv[0] + (S[i2] - S[i1]) * xv[1] + (S[SB] - S[i2]) * xv[2]
                        s2 = (W[i1] - W[0]) * xv[0] * xv[0] + (W[i2] - W[i1]) * xv[1] * xv[1] + (W[SB] - W[i2]) * xv[2] * xv[2]
                        cands.append((i1, i2, sh, sx, s2))
        else:
            h = (idx >= SB // 2).astype(np.intp)  # half of each sorted value
            px = np.zeros((2, SB + 1, M), _F)
            pw = np.zeros((2, SB + 1, M), _F)
            for j in range(SB):
                for hh in (0, 1):
                    mine = h[j] == hh
                    px[hh, j + 1] = np.where(mine, px[hh, j] + wx[j], px[hh, j])
                    pw[hh, j + 1] = np.where(mine, pw[hh, j] + ws[j], pw[hh, j])
            txs, tws = px[:, SB], pw[:, SB]
            p2, m2 = X_P[2], X_M[2]
            cp1, cp2 = X_P[0] * X_P[0] - X_P[1] * X_P[1], X_P[1] * X_P[1] - X_P[2] * X_P[2]
            cm1, cm2 = X_M[0] * X_M[0] - X_M[1] * X_M[1], X_M[1] * X_M[1] - X_M[2] * X_M[2]
            cands = []
            for i1 in range(SB + 1):
                for i2 in range(i1, SB + 1):
                    sx = px[:, i1] + px[:, i2]
                    qp, qm = txs * p2 - sx, txs * m2 - sx
                    q2p = tws * p2 * p2 + pw[:, i1] * cp1 + pw[:, i2] * cp2
                    q2m = tws * m2 * m2 + pw[:, i1] * cm1 + pw[:, i2] * cm2
                    for k, (a0, a1, c0, c1) in enumerate(((qp, qp, q2p, q2p), (qp, qm, q2p, q2m),
                                                          (qm, qp, q2m, q2p), (qm, qm, q2m, q2m))):
                        cands.append((i1, i2, k, a0[0] + a1[1], c0[0] + c1[1]))
        for i1, i2, k, sx, s2 in cands:
            upd = (s2 > 0) & (sx * sx > best * s2)
            if upd.any():
                scale = np.where(upd, sx / s2, scale).astype(_F)
                best = np.where(upd, scale * sx, best).astype(_F)
                b1 = np.where(upd, i1, b1)
                b2 = np.where(upd, i2, b2)
                bk = np.where(upd, k, bk)
    ok = (b1 >= 0) & (b2 >= 0) & (bk != (-1 if halves else 0))
    rank = np.empty_like(idx)
    rank[idx, cols] = np.arange(SB)[:, None]
    L = np.where(rank < b1[None, :], 0, np.where(rank < b2[None, :], 1, 2)).astype(np.int8)
    neg = scale < 0
    L = np.where(neg[None, :], 2 - L, L).astype(np.int8)
    scale = np.where(neg, -scale, scale).astype(_F)
    bk = np.where(neg, -bk if not halves else 3 - bk, bk)
    return L, scale, bk, ok


def _snap_iq1(G, L, xs, weight, scale, xx_groups):
    """Snap each group of 8 (xx_groups[n_groups, M, 3]: its level values); -> (grid index, all on grid)."""
    keys = iq_search.group_keys(L, G)
    gi = G.key_to_index[keys].astype(np.intp)
    gk, gm = np.nonzero(gi < 0)
    if gk.size:
        rows = (8 * gk)[:, None] + np.arange(8)[None, :]
        gi[gk, gm] = _neighbour2(G, keys[gk, gm], xs[rows, gm[:, None]], weight[rows, gm[:, None]],
                                 scale[gm], xx_groups[gk, gm])
    return gi, (gi >= 0).all(axis=0) & ~np.isin(np.arange(L.shape[1]), gm)


def _refit(G, gi, xs, weight, xx_groups, scale, redo):
    """Scale refit over the snapped grid points of the columns ``redo`` (when sumqx, sumq2 > 0)."""
    ng, M = gi.shape
    q = np.take_along_axis(xx_groups, G.levels[gi].astype(np.intp), axis=2)  # [ng, M, 8]
    q = np.ascontiguousarray(q.transpose(0, 2, 1).reshape(8 * ng, M))
    sumqx, sumq2 = seqsum(weight * q * xs), seqsum(weight * q * q)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(redo & (sumqx > 0) & (sumq2 > 0), sumqx / sumq2, scale).astype(_F)


class IQ1_S(QuantFormat, qtype=T.IQ1_S):
    @classmethod
    def _quantize(cls, x, w=None):
        needs_weights(cls, w)
        G = iq_grids.grid("iq1s")
        xs, weight, _, nb = _prepare(np.asarray(x, _F), w, 32, 2, "x2")
        M = xs.shape[1]
        act = ~(np.abs(xs).max(axis=0) < _F(1e-12))
        L, scale, shift, ok = _split_search(xs, weight, halves=False)
        act &= ok
        xx = np.where((shift == 1)[:, None], X_P[None, :], X_M[None, :])  # [M, 3]
        xxg = np.broadcast_to(xx[None], (4, M, 3))
        gi, on = _snap_iq1(G, L, xs, weight, scale, xxg)
        scale = _refit(G, gi, xs, weight, xxg, scale, ~on)
        scale = np.where(act, scale, _F(0))
        shift = np.where(act, shift, 1)
        gi = np.where(act[None, :], gi, 0)
        ms = scale.reshape(nb, 8).max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (ms / _F(15)).astype(_F)
            l = np.clip(nearest_int(_F(0.5) * (np.repeat(_F(1) / d, 8) * scale - _F(1))), 0, 7)
        live = np.repeat(ms > 0, 8)
        l = np.where(live, l | np.where(shift == -1, 8, 0), 0)
        g = gi.T.reshape(nb, 8, 4).astype(np.int64)
        qh = ((g >> 8) << (3 * np.arange(4))).sum(axis=2) | (l.reshape(nb, 8) << 12)
        dbits = np.where(ms > 0, f16_bits(d * _F(1.125)), 0)
        return np.concatenate([u16_bytes(dbits), (g & 255).reshape(nb, 32).astype(np.uint8),
                               np.ascontiguousarray(qh.astype("<u2")).view(np.uint8)], axis=1)

    quantize_blocks = chunked(512)(_quantize.__func__)

    @classmethod
    def dequantize_blocks(cls, q):
        q = np.ascontiguousarray(q)
        d = f16_at(q, 0)
        qs = q[:, 2:34].astype(np.int64).reshape(-1, 8, 4)
        qh = np.ascontiguousarray(q[:, 34:50]).view("<u2").reshape(-1, 8).astype(np.int64)
        dl = (d[:, None] * (2 * ((qh >> 12) & 7) + 1).astype(_F)).astype(_F)
        delta = np.where(qh & 0x8000, -DELTA, DELTA)
        gi = qs | (((qh[:, :, None] >> (3 * np.arange(4))) & 7) << 8)
        vals = iq_grids.grid_levels("iq1s")[gi].astype(_F) - 1  # [nb, 8, 4, 8]
        return (dl[:, :, None, None] * (vals + delta[:, :, None, None])).astype(_F).reshape(-1, QK_K)


class IQ1_M(QuantFormat, qtype=T.IQ1_M):
    @classmethod
    def _quantize(cls, x, w=None):
        G = iq_grids.grid("iq1s")
        x = np.asarray(x, _F)
        xs, weight, _, nb = _prepare(x, w, 16, 2, "x2")
        act = ~(np.abs(xs).max(axis=0) < _F(1e-7))
        L, scale, kind, ok = _split_search(xs, weight, halves=True)
        act &= ok
        first = np.where((kind < 2)[:, None], X_P[None, :], X_M[None, :])
        second = np.where((kind % 2 == 0)[:, None], X_P[None, :], X_M[None, :])
        xxg = np.stack([first, second])  # [2, M, 3]
        gi, on = _snap_iq1(G, L, xs, weight, scale, xxg)
        scale = _refit(G, gi, xs, weight, xxg, scale, ~on)
        scale = np.where(act, scale, _F(0))
        kind = np.where(act, kind, 0)
        gi = np.where(act[None, :], gi, 0).astype(np.int64)
        ms = scale.reshape(nb, 16).max(axis=1)
        live = ms > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (ms / _F(15)).astype(_F)
            l = np.clip(nearest_int(_F(0.5) * (np.repeat(_F(1) / d, 16) * scale - _F(1))), 0, 7)
        l = np.where(np.repeat(live, 16), l, 0).astype(np.int64)
        masks = np.array([0x00, 0x80, 0x08, 0x88])
        qh = (gi[0] >> 8) | ((gi[1] >> 8) << 4)
        qh = np.where(np.repeat(live, 16), qh | masks[kind], qh)
        # refit d over the whole block with the stored levels, shifts and scales
        xxg = np.stack([np.where((kind < 2)[:, None], X_P[None, :], X_M[None, :]),
                        np.where((kind % 2 == 0)[:, None], X_P[None, :], X_M[None, :])])
        lv = G.levels[gi]  # [2, M, 8]
        q = np.take_along_axis(xxg, lv.astype(np.intp), axis=2) * (2 * l + 1).astype(_F)[None, :, None]
        q = np.ascontiguousarray(q.astype(_F).transpose(1, 0, 2).reshape(nb, 256).T)
        xt = np.ascontiguousarray(x.reshape(nb, 256).T)
        wt = np.ascontiguousarray(weight.T.reshape(nb, 256).T)
        sqx, sq2 = seqsum(wt * q * xt), seqsum(wt * q * q)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(sq2 > 0, sqx / sq2, d).astype(_F)
        s = f16_bits(d * _F(1.1125)).astype(np.int64)
        lb = l.reshape(nb, 4, 4)
        sc = (lb << (3 * np.arange(4))).sum(axis=2)
        sc |= np.stack([(s & 0x000f) << 12, (s & 0x00f0) << 8, (s & 0x0f00) << 4, s & 0xf000], axis=1)
        sc = np.where(live[:, None], sc, 0)
        qs = gi.transpose(1, 0).reshape(nb, 32)
        qh = qh.reshape(nb, 16)
        return np.concatenate([(qs & 255).astype(np.uint8), qh.astype(np.uint8),
                               np.ascontiguousarray(sc.astype("<u2")).view(np.uint8)], axis=1)

    quantize_blocks = chunked(512)(_quantize.__func__)

    @classmethod
    def dequantize_blocks(cls, q):
        q = np.ascontiguousarray(q)
        sc = np.ascontiguousarray(q[:, 48:56]).view("<u2").reshape(-1, 4).astype(np.int64)
        s = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00f0) | ((sc[:, 2] >> 4) & 0x0f00) | (sc[:, 3] & 0xf000)
        d = f16_value(s.astype(np.uint16))
        qs = q[:, 0:32].astype(np.int64).reshape(-1, 8, 4)
        qh = q[:, 32:48].astype(np.int64).reshape(-1, 8, 2)
        ib = np.arange(8)
        sci = sc[:, ib // 2]
        sh = (6 * (ib % 2))[None, :]
        dl1 = (d[:, None] * (2 * ((sci >> sh) & 7) + 1).astype(_F)).astype(_F)
        dl2 = (d[:, None] * (2 * ((sci >> (sh + 3)) & 7) + 1).astype(_F)).astype(_F)
        hi = np.stack([(qh[:, :, 0] << 8) & 0x700, (qh[:, :, 0] << 4) & 0x700,
                       (qh[:, :, 1] << 8) & 0x700, (qh[:, :, 1] << 4) & 0x700], axis=2)
        gi = qs | hi
        dm = np.stack([qh[:, :, 0] & 0x08, qh[:, :, 0] & 0x80, qh[:, :, 1] & 0x08, qh[:, :, 1] & 0x80], axis=2)
        delta = np.where(dm != 0, -DELTA, DELTA)
        dl = np.stack([dl1, dl1, dl2, dl2], axis=2)
        vals = iq_grids.grid_levels("iq1s")[gi].astype(_F) - 1
        return (dl[..., None] * (vals + delta[..., None])).astype(_F).reshape(-1, QK_K)
