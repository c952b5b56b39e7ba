"""The grid i-quants IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S (this module) and IQ1_S, IQ1_M
(:mod:`.iquants_iq1`): NumPy reference quantizers and dequantizers, byte-identical to ggml's.

Block layouts (bytes, little-endian; 256 weights per block; d = fp16 scale):

* IQ2_XXS (66): d, 8 x (4 grid indices u8 | 4 x 7 sign bits + 4-bit scale in a u32) — 8 sub-blocks of 32.
* IQ2_XS (74): d, 32 x u16 (9-bit grid index | 7 sign bits), 8 bytes of 4-bit scales (16 sub-blocks of 16).
* IQ2_S (82): d, 32 index low bytes, 32 sign bytes, 8 bytes of index high bits, 8 bytes of 4-bit scales.
* IQ3_XXS (98): d, 64 grid indices (groups of 4), 8 x u32 (4 x 7 sign bits + 4-bit scale).
* IQ3_S (110): d, 64 index low bytes, 8 bytes of index 9th bits, 32 sign bytes, 4 bytes of 4-bit scales.

How (ggml's algorithm, :mod:`.iq_search`): per sub-block the importance ``qw*sqrt(sigma2 + x^2)`` (without
an imatrix ``x^2``; IQ2_S: ``sigma2/4 + x^2``), the sign split, a scan of trial scales snapping each group
of levels to the grid, a second pass at the best scale, then the sub-block scales to 4 bits against the
largest. IQ2_XXS and IQ2_XS need importance weights (ggml asserts without): refused without.
The grids and search tables come from :mod:`.iq_grids`.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from ..errors import SlimedgeError
from . import iq_grids, iq_search
from .formats import QuantFormat
from .kquant_imatrix import _sum_x2, make_qp_quants
from .kquant_search import chunked, f16_at, f16_bits, nearest_int, u16_bytes
from .types import QK_K, REQUIRES_IMATRIX

_F = np.float32


def needs_weights(cls, w) -> None:
    if w is None and cls.qtype in REQUIRES_IMATRIX:
        raise SlimedgeError(f"tensor: {cls.qtype.name} needs an importance matrix (llama.cpp refuses it without one); "
                            "pass --imatrix or choose another type")


def _prepare(x, w, sub: int, sigma_factor: int, plain: str):
    """Columns of sub-blocks and their importance: (xs, weight, waux, sigma2 per block)."""
    nb = x.shape[0]
    s = _sum_x2(x)
    sigma2 = (s / _F(QK_K) if sigma_factor == 1 else (_F(2) * s) / _F(QK_K)).astype(_F)
    xs = np.ascontiguousarray(x.reshape(-1, sub).T)
    sig = np.repeat(sigma2, QK_K // sub)[None, :]
    if w is not None:
        qw = np.ascontiguousarray(np.asarray(w, _F).reshape(-1, sub).T)
        weight = qw * np.sqrt(sig + xs * xs)
    elif plain == "x2":
        weight = xs * xs
    else:  # IQ2_S: sigma2/4 + x^2
        weight = _F(0.25) * sig + xs * xs
    weight = weight.astype(_F)
    return xs, weight, np.sqrt(weight).astype(_F), nb


def _search(kind: str, G, xval, weight, waux, mx):
    """Levels L[SB, M] and scales[M] of the active sub-blocks (search of ``kind``)."""
    SB, M = xval.shape
    ng = SB // G.dim
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "iq2_xxs":
            Lq, scale = make_qp_quants(xval, 4, weight)
            eff = scale * _F(3)
            ok = eff > 0
            L = Lq.astype(np.int8)
            L, scale2, _ = iq_search.scan(G, xval[:, ok], weight[:, ok], waux[:, ok], eff[ok], 3, 6, 0.1,
                                          L[:, ok], scale[ok], True)
            Lf = np.zeros((SB, M), np.int8)
            sc = np.zeros(M, _F)
            Lf[:, ok], sc[ok] = L, scale2
            sc = iq_search.redo(G, xval, weight, waux, Lf, sc, np.ones((ng, M), bool), ok & (sc > 0))
            return Lf, np.where(ok, sc, _F(0)).astype(_F), ok
        kmax, nis, step, on_init = {"iq2": (3, 9, 0.1, True), "iq3_xxs": (8, 15, 0.2, True),
                                    "iq3_s": (8, 9, 0.2, False)}[kind]
        scale0 = (mx / _F(2 * kmax - 1)).astype(_F)
        L, scale, on = iq_search.scan(G, xval, weight, waux, mx, kmax, nis, step, np.zeros((SB, M), np.int8),
                                      scale0, on_init)
        cols = (~on).any(axis=0) & (scale > 0)
        todo = np.ones_like(on) if kind == "iq3_s" else ~on
        scale = iq_search.redo(G, xval, weight, waux, L, scale, todo, cols)
        return L, scale, np.ones(M, bool)


class _GridQuant(QuantFormat):
    """Shared driver of the grid i-quants (abstract: no type of its own); the subclasses set the layout."""

    SUB = 32
    SIGMA = 1
    PLAIN = "x2"
    PARITY = True
    EPS = 1e-15
    SEARCH = "iq2_xxs"
    FUDGE = 1.0
    ZERO_DEAD = True  # a block whose scales are all 0 is all zeros (ggml clears it); else d = 0 only

    @classmethod
    def _levels(cls, x, w):
        G = iq_grids.grid(iq_grids.TYPE_GRID[cls.qtype])
        xs, weight, waux, nb = _prepare(x, w, cls.SUB, cls.SIGMA, cls.PLAIN)
        xval, signs = iq_search.sign_split(xs, weight, cls.PARITY)
        mx = xval.max(axis=0)
        act = ~(mx < _F(cls.EPS)) if cls.EPS else mx != 0
        M = xs.shape[1]
        L = np.zeros((cls.SUB, M), np.int8)
        scale = np.zeros(M, _F)
        sel = np.flatnonzero(act)
        if sel.size:
            La, sa, ok = _search(cls.SEARCH, G, xval[:, sel], weight[:, sel], waux[:, sel], mx[sel])
            L[:, sel], scale[sel] = La, sa
            act[sel[~ok]] = False
        gi = G.key_to_index[iq_search.group_keys(L, G)].astype(np.int64)  # [groups, M]
        gi = np.where(act[None, :] & (gi >= 0), gi, 0)
        signs = np.where(act[None, :], signs, 0).astype(np.int64)
        scale = np.where(act, scale, _F(0))
        ms = scale.reshape(nb, -1).max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (ms / _F(31)).astype(_F)
            dbits = np.where(ms > 0, f16_bits(d * _F(cls.FUDGE)), 0).astype(np.uint16)
            inv = (_F(1) / d).astype(_F)
            ls = np.clip(nearest_int(_F(0.5) * (np.repeat(inv, QK_K // cls.SUB) * scale - _F(1))), 0, 15)
        ls = np.where(np.repeat(ms > 0, QK_K // cls.SUB), ls, 0).astype(np.int64)
        # per block, sub-block-major: [nb, subs, groups] / [nb, subs, signs]
        gi = gi.T.reshape(nb, QK_K // cls.SUB, -1)
        signs = signs.T.reshape(nb, QK_K // cls.SUB, -1)
        return dbits, gi, signs, ls.reshape(nb, -1), ms > 0, act.reshape(nb, -1)

    @classmethod
    def _pack(cls, dbits, gi, signs, ls, live, done):
        """Block bytes; ``done[nb, subs]``: the sub-blocks that were quantized (not all-zero)."""
        raise NotImplementedError

    @classmethod
    def _quantize(cls, x, w=None):
        needs_weights(cls, w)
        dbits, gi, signs, ls, live, done = cls._levels(np.asarray(x, _F), w)
        out = cls._pack(dbits, gi, signs, ls, live, done)
        if cls.ZERO_DEAD:
            out[~live] = 0
        return out

    @classmethod
    def _grid_values(cls) -> np.ndarray:
        """float32[n, dim]: the dequantized grid (gguf's values of each level)."""
        name = iq_grids.TYPE_GRID[cls.qtype]
        src = iq_grids._SOURCES[name][0]
        return np.asarray(src.grid_map, _F)[iq_grids.grid_levels(name)]


def _u32_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v.astype("<u4")).view(np.uint8).reshape(v.shape[0], -1)


def _sign_mask(s: np.ndarray, n: int = 8) -> np.ndarray:
    """bool[..., n]: bit j of each sign byte."""
    return ((s[..., None].astype(np.int64) >> np.arange(n)) & 1).astype(bool)


def _ksigns(s7: np.ndarray) -> np.ndarray:
    """8 sign bits from 7: the eighth makes the count of negatives even."""
    s7 = s7.astype(np.int64)
    par = np.zeros_like(s7)
    for j in range(7):
        par ^= (s7 >> j) & 1
    return s7 | (par << 7)


def _apply(vals: np.ndarray, db: np.ndarray, neg: np.ndarray) -> np.ndarray:
    v = (db * vals).astype(_F)
    return np.where(neg, -v, v)


class IQ2_XXS(_GridQuant, qtype=T.IQ2_XXS):
    @classmethod
    def _pack(cls, dbits, gi, signs, ls, live, done):
        nb = gi.shape[0]
        w0 = (gi << (8 * np.arange(4))).sum(axis=2)
        w1 = (signs << (7 * np.arange(4))).sum(axis=2) | (ls << 28)
        words = np.stack([w0, w1], axis=2).reshape(nb, 16)
        return np.concatenate([u16_bytes(dbits), _u32_bytes(words)], axis=1)

    quantize_blocks = chunked(512)(_GridQuant._quantize.__func__)

    @classmethod
    def dequantize_blocks(cls, q):
        q = np.ascontiguousarray(q)
        d = f16_at(q, 0)
        aux = np.ascontiguousarray(q[:, 2:]).view("<u4").reshape(-1, 8, 2).astype(np.int64)
        db = (d[:, None] * (_F(0.5) + (aux[:, :, 1] >> 28).astype(_F)) * _F(0.25)).astype(_F)
        gi = (aux[:, :, 0:1] >> (8 * np.arange(4))) & 255
        neg = _sign_mask(_ksigns((aux[:, :, 1:2] >> (7 * np.arange(4))) & 127))
        vals = cls._grid_values()[gi]  # [nb, 8, 4, 8]
        return _apply(vals, db[:, :, None, None], neg).reshape(-1, QK_K)


class IQ2_XS(_GridQuant, qtype=T.IQ2_XS):
    SUB = 16
    SEARCH = "iq2"

    @classmethod
    def _pack(cls, dbits, gi, signs, ls, live, done):
        nb = gi.shape[0]
        qs = (gi | (signs << 9)).reshape(nb, 32).astype("<u2")
        sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
        return np.concatenate([u16_bytes(dbits), np.ascontiguousarray(qs).view(np.uint8), sc], axis=1)

    quantize_blocks = chunked(512)(_GridQuant._quantize.__func__)

    @classmethod
    def dequantize_blocks(cls, q):
        q = np.ascontiguousarray(q)
        d = f16_at(q, 0)
        qs = np.ascontiguousarray(q[:, 2:66]).view("<u2").reshape(-1, 32).astype(np.int64)
        sc = q[:, 66:74].astype(np.int64)
        s16 = np.stack([sc & 15, sc >> 4], axis=2).reshape(-1, 16)
        db = (d[:, None] * (_F(0.5) + s16.astype(_F)) * _F(0.25)).astype(_F)
        vals = cls._grid_values()[qs & 511]  # [nb, 32, 8]
        neg = _sign_mask(_ksigns(qs >> 9))
        return _apply(vals, np.repeat(db, 2, axis=1)[:, :, None], neg).reshape(-1, QK_K)


class IQ2_S(_GridQuant, qtype=T.IQ2_S):
    SUB = 16
    SIGMA = 2
    PLAIN = "sigma"
    PARITY = False
    EPS = 1e-8
    SEARCH = "iq2"
    FUDGE = 0.9875
    ZERO_DEAD = False

    @classmethod
    def _pack(cls, dbits, gi, signs, ls, live, done):
        nb = gi.shape[0]
        g = gi.reshape(nb, 32)
        qh = ((g >> 8).reshape(nb, 8, 4) << (2 * np.arange(4))).sum(axis=2)
        sc = ls[:, 0::2] | (ls[:, 1::2] << 4)
        parts = [g & 255, signs.reshape(nb, 32), qh, sc]
        return np.concatenate([u16_bytes(dbits)] + [p.astype(np.uint8) for p in parts], axis=1)

    quantize_blocks = chunked(512)(_GridQuant._quantize.__func__)

    @classmethod
    def dequantize_blocks(cls, q):
        q = np.ascontiguousarray(q)
        d = f16_at(q, 0)
        lo, sg = q[:, 2:34].astype(np.int64), q[:, 34:66].astype(np.int64)
        qh, sc = q[:, 66:74].astype(np.int64), q[:, 74:82].astype(np.int64)
        gi = lo | ((np.repeat(qh, 4, axis=1) << (8 - 2 * np.tile(np.arange(4), 8))) & 0x300)
        s16 = np.stack([sc & 15, sc >> 4], axis=2).reshape(-1, 16)
        db = (d[:, None] * (_F(0.5) + s16.astype(_F)) * _F(0.25)).astype(_F)
        vals = cls._grid_values()[gi]
        return _apply(vals, np.repeat(db, 2, axis=1)[:, :, None], _sign_mask(sg)).reshape(-1, QK_K)


class IQ3_XXS(_GridQuant, qtype=T.IQ3_XXS):
    SIGMA = 2
    EPS = 1e-8
    SEARCH = "iq3_xxs"
    FUDGE = 1.0125

    @classmethod
    def _pack(cls, dbits, gi, signs, ls, live, done):
        nb = gi.shape[0]
        sas = (signs << (7 * np.arange(4))).sum(axis=2) | (ls << 28)
        return np.concatenate([u16_bytes(dbits), gi.reshape(nb, 64).astype(np.uint8), _u32_bytes(sas)], axis=1)

    quantize_blocks = chunked(512)(_GridQuant._quantize.__func__)

    @classmethod
    def dequantize_blocks(cls, q):
        q = np.ascontiguousarray(q)
        d = f16_at(q, 0)
        gi = q[:, 2:66].astype(np.int64).reshape(-1, 8, 8)
        aux = np.ascontiguousarray(q[:, 66:98]).view("<u4").reshape(-1, 8).astype(np.int64)
        db = (d[:, None] * (_F(0.5) + (aux >> 28).astype(_F)) * _F(0.5)).astype(_F)
        neg = _sign_mask(_ksigns((aux[:, :, None] >> (7 * np.arange(4))) & 127))  # [nb, 8, 4, 8]
        vals = cls._grid_values()[gi].reshape(-1, 8, 4, 8)
        return _apply(vals, db[:, :, None, None], neg).reshape(-1, QK_K)


class IQ3_S(_GridQuant, qtype=T.IQ3_S):
    SIGMA = 2
    PARITY = False
    EPS = 0.0  # ggml tests max == 0
    SEARCH = "iq3_s"
    FUDGE = 1.033
    ZERO_DEAD = False

    @classmethod
    def _pack(cls, dbits, gi, signs, ls, live, done):
        nb = gi.shape[0]
        qh = ((gi >> 8) << np.arange(8)).sum(axis=2)
        sc = ls[:, 0::2] | (ls[:, 1::2] << 4)
        # ggml advances its qs/signs pointers only past quantized sub-blocks: after an all-zero one the
        # next sub-block's indices and signs land in the earlier slot (qh and scales stay by sub-block)
        slot = np.cumsum(done, axis=1) - 1
        b, ib = np.nonzero(done)
        lo = np.zeros((nb, 8, 8), np.int64)
        sg = np.zeros((nb, 8, 4), np.int64)
        lo[b, slot[b, ib]] = gi[b, ib] & 255
        sg[b, slot[b, ib]] = signs[b, ib]
        parts = [lo.reshape(nb, 64), qh, sg.reshape(nb, 32), sc]
        return np.concatenate([u16_bytes(dbits)] + [p.astype(np.uint8) for p in parts], axis=1)

    quantize_blocks = chunked(512)(_GridQuant._quantize.__func__)

    @classmethod
    def dequantize_blocks(cls, q):
        q = np.ascontiguousarray(q)
        d = f16_at(q, 0)
        lo, qh = q[:, 2:66].astype(np.int64).reshape(-1, 8, 8), q[:, 66:74].astype(np.int64)
        sg, sc = q[:, 74:106].astype(np.int64).reshape(-1, 8, 4), q[:, 106:110].astype(np.int64)
        gi = lo | (((qh[:, :, None] >> np.arange(8)) & 1) << 8)
        s8 = np.stack([sc & 15, sc >> 4], axis=2).reshape(-1, 8)
        db = (d[:, None] * (1 + 2 * s8).astype(_F)).astype(_F)
        vals = cls._grid_values()[gi].reshape(-1, 8, 4, 8)
        return _apply(vals, db[:, :, None, None], _sign_mask(sg)).reshape(-1, QK_K)

