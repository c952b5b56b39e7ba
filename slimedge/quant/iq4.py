"""IQ4_NL and IQ4_XS: 4-bit non-linear quants (the 16-value table ``kvalues_iq4nl``), NumPy reference.

Byte-exact port of ggml's ``quantize_row_iq4_nl_impl`` as ``ggml_quantize_chunk`` runs it (``quantize_iq4_nl``
/ ``quantize_iq4_xs``, ``ntry = 7``, with or without importance weights) and of ``dequantize_row_iq4_{nl,xs}``
(ggml-quants.c), vectorized over all 32-weight (sub-)blocks at once:

1. weights ``w = x*x``, or with an imatrix row ``qw*sqrtf(sigma2 + x*x)``, ``sigma2 = 2/S * sum(x*x)`` over
   the super-block of ``S`` weights (32 for IQ4_NL, 256 for IQ4_XS), summed in order;
2. per 32-weight sub-block (skipped, scale 0, when max |x| < 1e-15): a first scale ``max/127`` and 15 more
   ``(itry - 127)/max``, itry = -7..7; each maps ``x`` to the nearest table entry (ggml's ``best_index_int8``)
   and keeps the least-squares scale ``sumqx/sumq2`` that raises ``sumqx^2/sumq2``; sums run in order
   (``np.add.reduce`` over axis 0 of ``[32, M]`` arrays, see :func:`.kquant_search.seqsum`);
3. IQ4_NL stores that scale as fp16 and re-maps ``x`` with ``1/scale``; IQ4_XS quantizes the 8 sub-block
   scales to 6 bits against ``d = -max_scale/32`` (stored fp16) and re-maps ``x`` with ``1/(d*l)``.

``best_index_int8`` is a binary search over the sorted integer table; because the entries are integers,
the bracketing pair depends only on ``floor(al)``, so a 256-entry table gives it without a search, and
the final choice uses the same float comparison ``al - v[mu-1] < v[mu] - al``.

Block layouts: IQ4_NL (18 bytes) ``d:f16 qs[16]``; IQ4_XS (136 bytes) ``d:f16 scales_h:u16 scales_l[4] qs[128]``
(6-bit scales ``l + 32``: low nibbles in scales_l, top 2 bits at ``scales_h >> 2*ib``). Nibble ``j`` of a
32-weight group holds weight ``j`` (low) and ``j + 16`` (high).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .formats import QuantFormat
from .kquant_search import GROUP_MAX_EPS, chunked, f16_at, f16_bits, first_absmax, nearest_int, u16_bytes

_F = np.float32
CHUNK_BLOCKS = 2048  # 32-weight sub-blocks per NumPy pass
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_KF = KVALUES.astype(_F)
_COUNT = np.searchsorted(KVALUES, np.arange(-128, 128), side="right").clip(1, 15).astype(np.intp)
NTRY = 7


def best_index(al: np.ndarray) -> np.ndarray:
    """ggml's ``best_index_int8(16, kvalues_iq4nl, al)`` elementwise -> int index array (0..15)."""
    al = np.asarray(al, _F)
    if not np.isfinite(al).all():  # C: NaN takes the last entry, +-inf the end entries
        al = np.where(np.isnan(al), _F(1000), al).clip(-1000, 1000).astype(_F)
    k = np.floor(al).clip(-128, 127).astype(np.intp)
    mu = _COUNT[k + 128]
    lower = (al - _KF[mu - 1]) < (_KF[mu] - al)
    idx = mu - lower
    idx[al <= _KF[0]] = 0
    idx[al >= _KF[15]] = 15
    return idx


def _seq(p: np.ndarray) -> np.ndarray:
    """``s = 0; for j: s += p[j]`` over axis 0 of ``p: [n, M]`` (``0 + p[0]`` turns a -0 into +0)."""
    p[0] += _F(0.0)
    return np.add.reduce(p, axis=0)


def _sums(xt: np.ndarray, wt: np.ndarray, id_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One trial scale per column: (sum w*q*x, sum w*q*q) with q the table value nearest ``id*x``."""
    q = _KF[best_index(xt * id_)]
    wq = wt * q
    return _seq(wq * xt), _seq(wq * q)


def _block_scales(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Step 2 for ``x, w: float32[M, 32]`` -> the scale of each sub-block, float32[M]."""
    max_ = first_absmax(x)
    small = np.abs(max_) < GROUP_MAX_EPS
    m = np.where(small, _F(1), max_).astype(_F)
    xt, wt = np.ascontiguousarray(x.T), np.ascontiguousarray(w.T)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d0 = -m / _F(KVALUES[0])                    # ntry > 0: -max/values[0]
        sqx, sq2 = _sums(xt, wt, _F(1) / d0)
        d = np.where(sq2 > 0, sqx / sq2, _F(0)).astype(_F)
        best = d * sqx
        for itry in range(-NTRY, NTRY + 1):
            sqx, sq2 = _sums(xt, wt, _F(itry + int(KVALUES[0])) / m)
            upd = (sq2 > 0) & (sqx * sqx > best * sq2)
            if upd.any():
                d = np.where(upd, sqx / sq2, d).astype(_F)
                best = np.where(upd, d * sqx, best).astype(_F)
    return np.where(small, _F(0), d).astype(_F)


def _weights(x: np.ndarray, w: np.ndarray | None, super_block: int) -> np.ndarray:
    """Step 1: ``x, w: [n, 32]`` rows of consecutive sub-blocks, ``super_block`` weights per super-block."""
    if w is None:
        return x * x
    xs = x.reshape(-1, super_block)
    sigma2 = np.add.reduce(np.ascontiguousarray((xs * xs).T), axis=0) * _F(2.0 / super_block)
    sig = np.repeat(sigma2, super_block // 32)[:, None]
    return np.asarray(w, _F) * np.sqrt(sig + x * x)


def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """``L: [n, 32]`` indices -> ``[n, 16]`` bytes (weight j low nibble, j + 16 high)."""
    L = L.astype(np.uint8)
    return L[:, :16] | (L[:, 16:] << 4)


def _unpack(qs: np.ndarray) -> np.ndarray:
    """``qs: [n, 16]`` -> table values ``[n, 32]`` as float32."""
    return _KF[np.concatenate([qs & 0x0F, qs >> 4], axis=1)]


def pack_xs_scales(ls: np.ndarray) -> np.ndarray:
    """IQ4_XS's 8 sub-block scales ``ls: int[nb, 8]`` in -32..31 -> bytes 2..7 of the block ``uint8[nb, 6]``:
    ``scales_h`` (u16, the top 2 bits of ``ls + 32`` at ``2*ib``) then ``scales_l[4]`` (low nibbles, two a byte)."""
    u = (np.asarray(ls, np.int32) + 32).astype(np.uint16)
    lo = (u & 0xF).astype(np.uint8)
    scales_h = np.bitwise_or.reduce((u >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1)
    return np.concatenate([u16_bytes(scales_h), lo[:, 0::2] | (lo[:, 1::2] << 4)], axis=1)


def unpack_xs_scales(b: np.ndarray) -> np.ndarray:
    """Bytes 2..7 of IQ4_XS blocks ``uint8[nb, 6]`` -> the sub-block scales ``int32[nb, 8]`` in -32..31."""
    sh = np.ascontiguousarray(b[:, 0:2]).view("<u2").reshape(-1, 1)
    ib = np.arange(8)
    lo = (b[:, 2 + ib // 2] >> (4 * (ib % 2)).astype(np.uint8)) & 0xF
    hi = (sh >> (2 * ib).astype(np.uint16)) & 3
    return (lo.astype(np.int32) | (hi.astype(np.int32) << 4)) - 32


class IQ4_NL(QuantFormat, qtype=T.IQ4_NL):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        x = np.asarray(x, _F)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            s = _block_scales(x, _weights(x, w, 32))
            with np.errstate(divide="ignore"):
                id_ = np.where(s != 0, _F(1) / s, _F(0)).astype(_F)
            L = best_index(x * id_[:, None])
        return np.concatenate([u16_bytes(f16_bits(s)), _pack_nibbles(L)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        return f16_at(q, 0)[:, None] * _unpack(q[:, 2:18])


class IQ4_XS(QuantFormat, qtype=T.IQ4_XS):
    @chunked(CHUNK_BLOCKS // 8)
    def quantize_blocks(cls, x, w=None):
        x = np.asarray(x, _F)
        nb = x.shape[0]
        xs = x.reshape(-1, 32)
        with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
            s = _block_scales(xs, _weights(xs, None if w is None else np.asarray(w, _F).reshape(-1, 32), 256))
            s = s.reshape(nb, 8)
            d = -first_absmax(s) / _F(32)
            id_ = np.where(d != 0, _F(1) / d, _F(0)).astype(_F)
            ls = np.clip(nearest_int(id_[:, None] * s), -32, 31)
            dl = d[:, None] * ls.astype(_F)
            idl = np.where(dl != 0, _F(1) / dl, _F(0)).astype(_F)
            L = best_index(xs * idl.reshape(-1, 1))
        return np.concatenate([u16_bytes(f16_bits(d)), pack_xs_scales(ls), _pack_nibbles(L).reshape(nb, 128)],
                              axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 0)
        dl = d[:, None] * unpack_xs_scales(q[:, 2:8]).astype(_F)          # [nb, 8]
        v = _unpack(q[:, 8:136].reshape(-1, 16)).reshape(-1, 8, 32)
        return (dl[:, :, None] * v).reshape(-1, 256)
