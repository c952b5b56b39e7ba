"""Scale searches shared by the k-quants, vectorized over many (sub-)blocks at once, bit-exact with ggml.

Ports of ggml-quants.c's ``make_qkx2_quants`` / ``make_qkx3_quants`` (affine scale+min grid search),
``make_qx_quants`` (symmetric scale grid search) and ``make_q3_quants`` (symmetric with coordinate-descent
refinement); ``make_qp_quants`` (imatrix paths only) lives in :mod:`slimedge.quant.kquant_imatrix`.

Layout: every search takes ``x: float32[n, M]`` -- element index first, one column per (sub-)block -- so a
sum over a block is ``np.add.reduce(a, axis=0)``, which NumPy evaluates as the sequential C loop
``s += a[i]`` (pairwise summation only happens along the contiguous axis). All arithmetic is float32 in
the C code's order (no FMA: ggml-base is built for baseline x86-64).

Rounding: ggml's ``nearest_int`` adds 1.5*2^23 and reads the mantissa (round half to even). Where the
argument is provably within +-2^22 the searches use the float form ``(t + M) - M`` (same value, no int
conversion); :func:`nearest_int` reproduces the bit trick exactly for arbitrary inputs.

Searches avoid rewriting ``L`` on each improvement: they remember the winning (iscale, offset) per block and
recompute ``L`` once at the end (the same expression, hence the same values).
"""

from __future__ import annotations

import math
import threading

import numpy as np

_F = np.float32
ROUND_MAGIC = _F(12582912.0)  # 1.5 * 2**23
GROUP_MAX_EPS = _F(1e-15)


_SCRATCH = threading.local()


def scratch(key: str, shape, dtype=_F) -> np.ndarray:
    """An uninitialized per-thread buffer of ``shape`` reused from call to call (large temporaries would
    otherwise fault in fresh pages every call, which costs more than the arithmetic). It stays valid until
    the next ``scratch(key, ...)`` on this thread: only for temporaries that never leave one call."""
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    b = bufs.get(key)
    if b is None or b.size < nbytes:
        b = bufs[key] = np.empty(nbytes, dtype=np.uint8)
    return b[:nbytes].view(dtype).reshape(shape)


# ---- scalar helpers (elementwise) ------------------------------------------------------------------

def f16_bits(v) -> np.ndarray:
    """float32 -> IEEE half bits (round to nearest even; ggml's GGML_FP32_TO_FP16 does the same)."""
    return np.asarray(v, dtype=_F).astype(np.float16).view(np.uint16)


def f16_value(bits) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(_F)


def u16_bytes(v) -> np.ndarray:
    """uint16 values (e.g. fp16 bits) -> ``uint8[n, 2]``, little-endian: a block's 2-byte field."""
    return np.ascontiguousarray(np.asarray(v).astype("<u2")).view(np.uint8).reshape(-1, 2)


def f16_at(q: np.ndarray, at: int) -> np.ndarray:
    """The fp16 field at byte ``at`` of every block of ``q: uint8[nb, type_size]`` -> float32[nb]."""
    return f16_value(np.ascontiguousarray(q[:, at:at + 2]).view("<u2").reshape(-1))


def nearest_int(t: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int`` bit for bit (also out of its +-2^22 range): float32 -> int32."""
    v = (np.asarray(t, dtype=_F) + ROUND_MAGIC).view(np.int32)
    return (v & 0x007FFFFF) - 0x00400000


def round_f(t: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(float)nearest_int(t)`` for ``|t| <= 2^22`` (float32, in place if ``out`` is given)."""
    r = np.add(t, ROUND_MAGIC, out=out)
    return np.subtract(r, ROUND_MAGIC, out=r)


_HALF_DOWN = np.nextafter(_F(0.5), _F(0.0))  # 0.49999997f


def round_half_away(t: np.ndarray) -> np.ndarray:
    """C ``roundf`` (ties away from zero) as ``trunc(t + copysign(0.49999997f, t))``: exact for |t| < 128
    (checked against floor(|t| + 0.5) for every float32 there; Q8_0 needs |t| <= 127)."""
    r = t + np.copysign(_HALF_DOWN, t)
    return np.trunc(r, out=r)


def first_absmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The first value of largest magnitude along ``axis`` (``if (amax < fabsf(v)) {amax=...; max=v;}``),
    +0.0 when all values are zero."""
    x = np.moveaxis(np.asarray(x, dtype=_F), axis, 0)
    amax = np.fmax.reduce(np.abs(x), axis=0)  # NaNs never win a C comparison
    amax[np.isnan(amax)] = 0
    has_pos = (x == amax).any(axis=0)
    has_neg = (x == -amax).any(axis=0) & (amax > 0)
    m = np.where(has_neg, -amax, amax).astype(_F)
    both = np.flatnonzero((has_pos & has_neg).ravel())
    if both.size:  # +a and -a both present: the first one decides (rare)
        xs = x.reshape(x.shape[0], -1)[:, both]
        first = np.argmax(np.abs(xs) == amax.ravel()[both], axis=0)
        m.ravel()[both] = xs[first, np.arange(both.size)]
    return m


def first_absmax_cols(x: np.ndarray) -> np.ndarray:
    """:func:`first_absmax` over axis 0 of finite ``x: [n, M]``, from the column max and min (two
    reductions); only columns holding both +a and -a as extremes need the first-occurrence scan."""
    xmax, xmin = x.max(axis=0), x.min(axis=0)
    m = np.where(xmax >= -xmin, xmax, xmin).astype(_F)
    tie = np.flatnonzero(xmax == -xmin)
    if tie.size:
        xs = x[:, tie]
        first = np.argmax(np.abs(xs) == xmax[tie], axis=0)
        m[tie] = np.where(xmax[tie] > 0, xs[first, np.arange(tie.size)], _F(0.0))
    return m


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sequential float32 sum over axis 0 of ``a: [n, M]`` (``s = a[0]; s += a[1]; ...``)."""
    if a.ndim == 2 and a.shape[1] == 1:  # a lone column would be summed pairwise: do it by hand
        s = a[0].copy()
        for i in range(1, a.shape[0]):
            s += a[i]
        return s
    return np.add.reduce(np.ascontiguousarray(a), axis=0)


def chunked(blocks: int):
    """Decorator for a ``quantize_blocks(cls, x, w=None)`` implementation: run it on at most ``blocks``
    blocks at a time (bounded temporaries that stay in cache; a loop over chunks, not over blocks)."""
    def deco(impl):
        def quantize_blocks(cls, x, w=None):
            x = np.asarray(x, dtype=_F)
            if x.shape[0] <= blocks:
                return impl(cls, x, w)
            out = np.empty((x.shape[0], cls.type_size), dtype=np.uint8)
            for i in range(0, x.shape[0], blocks):
                out[i:i + blocks] = impl(cls, x[i:i + blocks], None if w is None else w[i:i + blocks])
            return out
        quantize_blocks.__doc__ = impl.__doc__
        return classmethod(quantize_blocks)
    return deco


# ---- affine searches: make_qkx2_quants / make_qkx3_quants ---------------------------------------------

def _grid_levels(x, off, iscale, fn, out):
    """``MAX(0, MIN(nmax, nearest_int(iscale*(x - off))))`` as float32 into ``out``.

    ``iscale`` overflows to inf for (sub)normal ranges below ``nmax/FLT_MAX``; ggml's bit trick then maps
    inf and NaN to a level clamped to 0, which the float rounding would not: those columns get 0."""
    np.subtract(x, off, out=out)
    np.multiply(out, iscale, out=out)
    round_f(out, out=out)
    np.clip(out, 0, fn, out=out)
    bad = ~np.isfinite(iscale)
    if bad.any():
        out[:, bad] = 0
    return out


def make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool, le_degenerate: bool = False):
    """Affine grid search over columns of ``x: float32[n, M]`` with weights ``w: float32[n, M]``.

    Returns ``(L: float32[n, M] in 0..nmax, scale: float32[M], the_min: float32[M])`` exactly as
    ``make_qkx2_quants`` (``le_degenerate=False``: degenerate when ``max == min``) or
    ``make_qkx3_quants`` with weights (``le_degenerate=True``: ``max <= min``).
    """
    x = np.ascontiguousarray(x, dtype=_F)
    w = np.ascontiguousarray(w, dtype=_F)
    fn = _F(nmax)
    mn = x.min(axis=0)
    zmin = np.flatnonzero(mn == 0)
    if zmin.size:  # C keeps the first of equal minima: the sign of a zero minimum is that of the first zero
        xz = x[:, zmin]
        mn[zmin] = xz[np.argmax(xz == 0, axis=0), np.arange(zmin.size)]
    mn = np.where(mn > 0, _F(0.0), mn)                       # "if (min > 0) min = 0"
    mx = x.max(axis=0)
    degenerate = (mx <= mn) if le_degenerate else (mx == mn)
    sum_w = seqsum(w)
    sum_x = seqsum(w * x)
    err_fn = np.abs if use_mad else np.square

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fn / (mx - mn)
        scale = _F(1.0) / iscale
        t = np.empty_like(x)
        L = _grid_levels(x, mn, iscale, fn, t).copy()
        diff = scale * L + mn - x
        best = seqsum(w * err_fn(diff))
        best_iscale, best_off = iscale, mn
        cur_min = mn
        wl = np.empty_like(x)
        tmp = np.empty_like(x)
        for step in range(nstep + 1):
            iscale = (_F(rmin) + _F(rdelta) * _F(step) + fn) / (mx - cur_min)
            l = _grid_levels(x, cur_min, iscale, fn, t)
            np.multiply(w, l, out=wl)
            sum_l = seqsum(wl)
            sum_l2 = seqsum(np.multiply(wl, l, out=tmp))
            sum_xl = seqsum(np.multiply(wl, x, out=tmp))
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min = np.where(pos, _F(0.0), this_min)
                this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(_F)
            np.multiply(l, this_scale, out=tmp)
            tmp += this_min
            tmp -= x
            err_fn(tmp, out=tmp)
            tmp *= w
            cur = seqsum(tmp)
            better = (D > 0) & (cur < best)
            best = np.where(better, cur, best)
            best_iscale = np.where(better, iscale, best_iscale)
            best_off = np.where(better, cur_min, best_off)
            scale = np.where(better, this_scale, scale)
            cur_min = np.where(better, this_min, cur_min)
        L = _grid_levels(x, best_off, best_iscale, fn, t)
    L[:, degenerate] = 0
    scale = np.where(degenerate, _F(0.0), scale).astype(_F)
    cur_min = np.where(degenerate, mn, cur_min).astype(_F)
    return L, scale, -cur_min


# ---- symmetric searches: make_qx_quants / make_q3_quants ----------------------------------------------

def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`` over the columns of ``x: float32[n, M]``.

    Returns ``(L: float32[n, M] in 0..2*nmax-1, scale: float32[M])``; ``qw=None`` weighs by ``x*x``.
    """
    x = np.ascontiguousarray(x, dtype=_F)
    fn = _F(nmax)
    mx = first_absmax_cols(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    w = x * x if qw is None else np.ascontiguousarray(qw, dtype=_F)
    wx = w * x
    t = np.empty_like(x)
    tmp = np.empty_like(x)

    def sums(iscale):
        np.multiply(x, iscale, out=t)
        l = np.clip(round_f(t, out=t), -fn, fn - 1, out=t)
        slx = seqsum(np.multiply(wx, l, out=tmp))
        np.multiply(w, l, out=tmp)
        sl2 = seqsum(np.multiply(tmp, l, out=tmp))
        return slx, sl2

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = -fn / mx
        sumlx, suml2 = sums(iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, _F(0.0)).astype(_F)
        best = scale * sumlx
        best_iscale = iscale
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(fn + _F(0.1) * _F(step)) / mx
            sumlx, suml2 = sums(iscale)
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_iscale = np.where(upd, iscale, best_iscale)
            scale = np.where(upd, sumlx / suml2, scale).astype(_F)
            best = np.where(upd, scale * sumlx, best).astype(_F)
        np.multiply(x, best_iscale, out=t)
        L = np.clip(round_f(t, out=t), -fn, fn - 1, out=t)
    L += fn
    L[:, zero] = 0
    return L, np.where(zero, _F(0.0), scale).astype(_F)


def make_q3_quants(x: np.ndarray, nmax: int, xt: np.ndarray | None = None, out: np.ndarray | None = None):
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` over the columns of ``x: float32[n, M]``.

    Returns ``(L: float32[n, M] in 0..2*nmax-1, scale: float32[M])``; the refinement is :func:`_refine_q3`.
    ``xt``, if given, is the same values as ``float32[M, n]`` (rows gather faster than columns); ``L`` is
    written to ``out`` if given.
    """
    x = np.ascontiguousarray(x, dtype=_F)
    fn = _F(nmax)
    mx = first_absmax_cols(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        L = np.multiply(x, -fn / mx, out=out)
        np.clip(np.rint(L, out=L), -fn, fn - 1, out=L)  # |x/max| <= 1: rint is nearest_int here
        w = np.multiply(x, x, out=scratch("q3_w", x.shape))
        t = np.multiply(w, x, out=scratch("q3_t", x.shape))
        sumlx = seqsum(np.multiply(t, L, out=t))            # w*x*l
        w *= L
        suml2 = seqsum(np.multiply(w, L, out=w))            # w*l*l
        # With max > 0 every w*x*L = x^3*l is <= 0 (l has the sign of -x), so every partial sum
        # slx = sumlx - w*x*L is <= 0 (also in float) and C never changes anything: only columns
        # whose first largest-magnitude value is negative can be refined.
        cols = np.flatnonzero((mx < 0) & ~zero)
        if cols.size:
            _refine_q3(x, xt, L, sumlx, suml2, cols, mx[cols], nmax)
        scale = np.where(suml2 > 0, sumlx / suml2, _F(0.0)).astype(_F)
    L += fn
    if zero.any():
        L[:, zero] = 0
    return L, np.where(zero, _F(0.0), scale).astype(_F)


def _leads(keys: np.ndarray) -> np.ndarray:
    """Mask of the first of each run of equal values in the sorted ``keys``."""
    lead = np.empty(keys.size, dtype=bool)
    if keys.size:
        lead[0] = True
        np.not_equal(keys[1:], keys[:-1], out=lead[1:])
    return lead


def _refine_q3(x: np.ndarray, xt: np.ndarray | None, L: np.ndarray, sumlx: np.ndarray, suml2: np.ndarray,
               cols: np.ndarray, mx: np.ndarray, nmax: int) -> None:
    """make_q3_quants' coordinate descent for the columns ``cols`` of ``x, L: float32[n, M]``, updating
    ``L`` (levels -nmax..nmax-1) and the running sums ``sumlx, suml2: float32[M]`` in place (``mx``: the
    columns' first largest-magnitude values).

    The C refinement visits the n elements in order (up to 5 passes) and accepts a changed level when
    it lowers the weighted error, updating the running sums. Here each round evaluates, for every
    column still in play, the rest of its current pass against the column's current sums and applies
    only the *first* accepted change per column (the elements before it were visited without effect,
    exactly as in C); the column's next round resumes after it. A pass that ends with no accepted change
    left starts the next one at once where it changed something (same sums: its first accepted element
    is the column's first accepted element overall); otherwise, or after the fifth pass, the column is
    done and leaves the working set. That holds one row per column (``[P, n]``: the first accepted
    element of a column is then its first hit in row-major order) in reused scratch buffers.
    """
    n = x.shape[0]
    lo, hi = np.int32(0x400000 - nmax), np.int32(0x400000 + nmax - 1)
    P = cols.size
    # working set [P, n], one row per column, in two scratch sets (compaction copies from one to the other)
    sets = [{nm: scratch(f"q3r{j}_{nm}", (P, n), dt) for nm, dt in (("x", _F), ("L", _F), ("Li", np.int32))}
            for j in (0, 1)]
    xa, La, Li = sets[0]["x"], sets[0]["L"], sets[0]["Li"]
    if xt is None:
        xa[...] = np.take(x, cols, axis=1).T
    else:
        np.take(xt, cols, axis=0, out=xa, mode="clip")
    np.multiply(xa, (-_F(nmax) / mx)[:, None], out=La)  # the initial levels again (same expression)
    np.clip(np.rint(La, out=La), -_F(nmax), _F(nmax - 1), out=La)
    np.add(La, _F(0x400000), out=Li, casting="unsafe")  # 0x400000 + level, as nearest_int's bits
    s1, s2 = sumlx[cols], suml2[cols]                # the columns' running sums
    tmp = [scratch(f"q3r_t{j}", (P, n)) for j in range(5)]
    swap = 1
    start = np.zeros(cols.size, dtype=np.intp)       # next element of the current pass
    chg = np.zeros(cols.size, dtype=bool)            # changed during the current pass
    npass = np.zeros(cols.size, dtype=np.intp)       # passes done (C stops after 5)
    while cols.size:
        P = cols.size
        wa, wxa, slx, sl2, t = (b[:P] for b in tmp)
        np.multiply(xa, xa, out=wa)
        np.multiply(wa, xa, out=wxa)
        np.multiply(wxa, La, out=slx)
        np.subtract(s1[:, None], slx, out=slx)       # sumlx - w*x*L
        np.multiply(wa, La, out=sl2)
        sl2 *= La
        np.subtract(s2[:, None], sl2, out=sl2)       # suml2 - w*L*L
        np.multiply(xa, sl2, out=t)
        t /= slx
        t += ROUND_MAGIC                             # nearest_int's bit trick, clamped
        v = t.view(np.int32)
        v &= 0x007FFFFF
        np.clip(v, lo, hi, out=v)                    # 0x400000 + new level
        f = np.flatnonzero(v != Li)                  # level would change ...
        k, i = np.divmod(f, n)
        sel = slx.ravel()[f] > 0                     # ... and C gets that far (slx > 0)
        f, k, i = f[sel], k[sel], i[sel]
        vf = v.ravel()[f]
        nl = (vf - np.int32(0x400000)).astype(_F)
        nslx = slx.ravel()[f] + wxa.ravel()[f] * nl
        nsl2 = sl2.ravel()[f] + wa.ravel()[f] * nl * nl
        s1c, s2c = s1[k], s2[k]
        acc = np.flatnonzero((nsl2 > 0) & (nslx * nslx * s2c > s1c * s1c * nsl2))
        cont = np.zeros(P, dtype=bool)               # columns with more to do
        if acc.size:
            ka = k[acc]
            rest = i[acc] >= start[ka]               # accepted in the rest of the current pass
            ar, kr = acc[rest], ka[rest]
            lr = _leads(kr)
            has = np.zeros(P, dtype=bool)
            has[kr[lr]] = True
            # a column with none there ends its pass; if the pass changed something the next one starts
            # from the same sums and levels, so its first accepted element is the column's first
            # accepted element overall (found here already); if there is none, the column has converged
            la = _leads(ka)
            kf = ka[la]
            wrap = ~has[kf] & chg[kf] & (npass[kf] < 4)
            npass[kf[wrap]] += 1
            hit = np.concatenate([ar[lr], acc[la][wrap]])
            kh, ih = k[hit], i[hit]
            nh, ch = nl[hit], cols[kh]
            La[kh, ih] = nh
            Li[kh, ih] = vf[hit]
            L[ih, ch] = nh
            sumlx[ch], suml2[ch] = s1[kh], s2[kh] = nslx[hit], nsl2[hit]
            chg[kh] = True
            ih += 1
            start[kh] = ih
            cont[kh] = ih < n
            last = kh[ih >= n]                       # changed the last element: next pass if any left
            last = last[npass[last] < 4]
            start[last] = 0
            chg[last] = False
            npass[last] += 1
            cont[last] = True
        keep = np.flatnonzero(cont)
        if keep.size < P:
            nxt = {nm: b[:keep.size] for nm, b in sets[swap].items()}
            for nm, a in (("x", xa), ("L", La), ("Li", Li)):
                np.take(a, keep, axis=0, out=nxt[nm], mode="clip")  # (valid indices: no buffering)
            xa, La, Li = nxt["x"], nxt["L"], nxt["Li"]
            cols, s1, s2, swap = cols[keep], s1[keep], s2[keep], 1 - swap
            start, chg, npass = start[keep], chg[keep], npass[keep]
