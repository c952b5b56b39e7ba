"""NumPy reference of ggml's grid searches for the 2- and 3-bit i-quants (IQ2_XXS/XS/S, IQ3_XXS/S).

Everything runs on columns: ``xval[SB, M]`` holds the |x| of M sub-blocks of SB values (one column per
sub-block, so the sums over a sub-block are sequential adds down axis 0, float32, in ggml's order).
The trial-scale scan is a Python loop over the 13-31 trial scales, each vectorized over all sub-blocks;
the groups whose rounded levels are off the grid are gathered and their neighbour lists searched in one
vectorized step (:func:`best_neighbour`). Only the NaN/inf cases where ggml aborts are not reproduced.
"""

from __future__ import annotations

import numpy as np

from .iq_grids import Grid
from .kquant_search import nearest_int, seqsum

_F = np.float32
_INF = _F(np.inf)


def group_keys(L: np.ndarray, G: Grid) -> np.ndarray:
    """int64[n_groups, M]: the key of each group of ``G.dim`` levels of ``L: int[SB, M]``."""
    D = G.dim
    Lg = L.reshape(-1, D, L.shape[1]).astype(np.int64)
    shifts = (G.bits * np.arange(D, dtype=np.int64))[None, :, None]
    return (Lg << shifts).sum(axis=1)


def best_neighbour(G: Grid, keys: np.ndarray, xg: np.ndarray, wg: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """ggml's iq*_find_best_neighbour for K off-grid groups: ``keys[K]``, values ``xg[K, D]``, weights
    ``wg[K, D]``, ``scale[K]`` -> grid index[K] (least sum of w*(scale*pos - x)^2, first on ties)."""
    out = np.empty(keys.size, dtype=np.intp)
    pos = G.pos
    for a in range(0, keys.size, 4096):
        b = min(keys.size, a + 4096)
        cand = G.nb_index[G.nb_row[keys[a:b]]]
        valid = cand >= 0
        ci = np.where(valid, cand, 0).astype(np.intp)
        p = pos[ci]  # [k, W, D]
        s = scale[a:b, None]
        d2 = np.zeros(ci.shape, dtype=_F)
        for i in range(G.dim):
            diff = s * p[:, :, i] - xg[a:b, None, i]
            d2 += wg[a:b, None, i] * diff * diff
        d2 = np.where(valid & ~np.isnan(d2), d2, _INF)
        out[a:b] = ci[np.arange(b - a), np.argmin(d2, axis=1)]
    return out


def snap(G: Grid, L: np.ndarray, xval: np.ndarray, waux: np.ndarray, scale: np.ndarray,
         groups: np.ndarray | None = None) -> np.ndarray:
    """Replace the off-grid groups of ``L: int8[SB, M]`` (in place) by their best neighbour at ``scale[M]``;
    only the groups where ``groups[n_groups, M]`` is True when given. -> bool[n_groups, M]: on the grid."""
    D = G.dim
    keys = group_keys(L, G)
    on = G.key_to_index[keys] >= 0
    todo = ~on if groups is None else (~on & groups)
    gk, gm = np.nonzero(todo)
    if gk.size:
        rows = (D * gk)[:, None] + np.arange(D)[None, :]  # [K, D]
        xg = xval[rows, gm[:, None]]
        wg = waux[rows, gm[:, None]]
        gi = best_neighbour(G, keys[gk, gm], xg, wg, scale[gm])
        L[rows, gm[:, None]] = G.levels[gi]
    return on


def levels(xval: np.ndarray, inv: np.ndarray, kmax: int) -> np.ndarray:
    """clamp(nearest_int(0.5*(id*x - 1)), 0, kmax-1) -> int8[SB, M]."""
    return np.clip(nearest_int(_F(0.5) * (inv[None, :] * xval - _F(1))), 0, kmax - 1).astype(np.int8)


def fit(weight: np.ndarray, xval: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum w*x*q, sum w*q*q) down each column, q = 2*L+1, sequential float32."""
    q = (2 * L.astype(_F) + 1).astype(_F)
    return seqsum(weight * xval * q), seqsum(weight * q * q)


def scan(G: Grid, xval, weight, waux, base: np.ndarray, kmax: int, nis: int, step: float,
         L: np.ndarray, scale: np.ndarray, on_init: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trial-scale scan: id = (2*kmax-1 + is*step)/base for is in [-nis, nis]; keeps the levels
    with the best fit (sumqx^2/sumq2, strictly better). -> (L, scale, on_grid[n_groups, M])."""
    M = xval.shape[1]
    best = np.zeros(M, dtype=_F)
    on = np.full((L.shape[0] // G.dim, M), on_init)
    c = _F(2 * kmax - 1)
    for is_ in range(-nis, nis + 1):
        inv = (c + _F(is_) * _F(step)) / base
        this_scale = _F(1) / inv
        Laux = levels(xval, inv, kmax)
        on_aux = snap(G, Laux, xval, waux, this_scale)
        sumqx, sumq2 = fit(weight, xval, Laux)
        upd = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if upd.any():
            scale = np.where(upd, sumqx / sumq2, scale).astype(_F)
            best = np.where(upd, scale * sumqx, best).astype(_F)
            L = np.where(upd[None, :], Laux, L)
            on = np.where(upd[None, :], on_aux, on)
    return L, scale, on


def redo(G: Grid, xval, weight, waux, L, scale, todo: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Second pass at the found scale: in the columns ``cols``, the groups ``todo[n_groups, M]`` are
    re-rounded at 1/scale and snapped (L in place), then those columns' scale is refitted (when
    sumq2 > 0). -> the new scale[M]."""
    sel = np.flatnonzero(cols)
    if sel.size == 0:
        return scale
    xs, ws, wa, Ls, sc, tg = xval[:, sel], weight[:, sel], waux[:, sel], L[:, sel], scale[sel], todo[:, sel]
    fresh = levels(xs, _F(1) / sc, _KMAX[G.dim])
    Ls = np.where(np.repeat(tg, G.dim, axis=0), fresh, Ls)
    snap(G, Ls, xs, wa, sc, groups=tg)
    sumqx, sumq2 = fit(ws, xs, Ls)
    L[:, sel] = Ls
    scale = scale.copy()
    scale[sel] = np.where(sumq2 > 0, sumqx / sumq2, sc).astype(_F)
    return scale


_KMAX = {8: 3, 4: 8}  # levels per coordinate: IQ2 grids 0..2 (kMaxQ 3), IQ3 grids 0..7 (kMaxQ 8)


def sign_split(xs: np.ndarray, weight: np.ndarray, parity: bool) -> tuple[np.ndarray, np.ndarray]:
    """|x| of columns ``xs[SB, M]`` (-0.0 kept) and the sign byte of each group of 8 -> (xval, signs
    uint8[SB/8, M]); with parity an odd count of negatives flips back the least important value
    (first minimum of w*x*x) and the stored byte keeps 7 bits."""
    SB, M = xs.shape
    neg = xs < 0
    xval = np.where(neg, -xs, xs).astype(_F)
    ng = SB // 8
    negg = neg.reshape(ng, 8, M)
    if parity:
        odd = negg.sum(axis=1) % 2 == 1  # [ng, M]
        imp = (weight * xs * xs).reshape(ng, 8, M)
        imin = np.argmin(imp, axis=1)  # first minimum
        gk, gm = np.nonzero(odd)
        r = 8 * gk + imin[gk, gm]
        xval[r, gm] = -xval[r, gm]
        negg = negg.copy()
        negg[gk, imin[gk, gm], gm] ^= True
    bits = (negg.astype(np.uint16) << np.arange(8, dtype=np.uint16)[None, :, None]).sum(axis=1)
    signs = (bits & (127 if parity else 255)).astype(np.uint8)
    return xval, signs
