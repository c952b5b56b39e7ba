"""Legacy 32-weight block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (NumPy reference).

Byte-exact ports of ggml's ``quantize_row_*_ref`` / ``dequantize_row_*`` (ggml-quants.c), vectorized
over all blocks at once. Every step is float32 arithmetic in the same order as the C code (NumPy keeps
float32 when both operands are float32 scalars/arrays), including C's float->int truncations:

* Q4_0/Q5_0: ``d = max / -8`` (resp. -16) with ``max`` the first value of largest magnitude;
  ``q = MIN(15, (int8_t)(x/d + 8.5f))``.
* Q4_1/Q5_1: ``d = (max - min) / 15`` (resp. 31), ``m = min``; ``q = (int)((x - min)/d + 0.5f)``.
* Q8_0: ``d = amax / 127``, ``q = roundf(x/d)`` (half away from zero).

Block layouts (little-endian): Q4_0 ``d:f16 qs[16]``; Q4_1 ``d:f16 m:f16 qs[16]``; Q5_0 ``d:f16 qh:u32 qs[16]``;
Q5_1 ``d:f16 m:f16 qh:u32 qs[16]``; Q8_0 ``d:f16 qs:i8[32]``. Nibble j holds weight j (low) and j+16 (high).

Importance weights (an imatrix row): ggml's ``quantize_row_q4_0_impl`` ... weigh each value by
``imatrix * sqrt(sigma2 + x*x)`` with ``sigma2`` the mean square of the *whole row*, then search the scale
(``make_qx_quants`` for Q4_0/Q5_0, ``make_qkx3_quants`` for Q4_1/Q5_1). A block-level call does not see the
row, so these formats expose ``quantize_weighted_rows(rows, imatrix)`` (used by ``quantize_rows``) and
refuse ``quantize_blocks(x, w)`` with NotImplementedError. Q8_0 ignores importance weights, as ggml does.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gguf import GGMLQuantizationType as T

from .formats import QuantFormat
from .kquant_search import (chunked, f16_at, f16_bits, first_absmax, make_qkx_quants, make_qx_quants,
                            round_half_away, seqsum, u16_bytes)
from .types import QK

_F = np.float32
CHUNK_BLOCKS = 8192  # blocks quantized per NumPy pass (256K weights): best speed on x86-64


def _no_imatrix(cls, w):
    if w is not None:
        raise NotImplementedError(f"{cls.qtype.name}: importance-weighted (imatrix) quantization needs whole "
                                  "rows; use quantize_rows(x, qtype, imatrix=...) (quantize_weighted_rows)")


def _weighted_rows(rows: np.ndarray, imatrix: np.ndarray, quantize_cols) -> np.ndarray:
    """Shared driver of the imatrix paths. ``rows: float32[r, n]``, ``imatrix: float32[n]``;
    ``quantize_cols(x: [QK, M], weight: [QK, M]) -> uint8[M, type_size]`` for the blocks (one per column)."""
    rows = np.ascontiguousarray(rows, dtype=_F)
    r, n = rows.shape
    step = max(1, (CHUNK_BLOCKS * QK) // n)
    out = []
    for a in range(0, r, step):
        x = rows[a:a + step]
        xt = np.ascontiguousarray(x.T)
        sigma2 = seqsum(xt * xt) / _F(n)                      # sequential over the row, as in C
        xb = np.ascontiguousarray(x.reshape(-1, QK).T)        # [QK, blocks]
        qw = np.broadcast_to(imatrix.reshape(-1, QK), (x.shape[0], n // QK, QK)).reshape(-1, QK).T
        sig = np.repeat(sigma2, n // QK)
        weight = qw * np.sqrt(sig + xb * xb)
        out.append(quantize_cols(xb, weight).reshape(x.shape[0], -1))
    return np.concatenate(out, axis=0)


def _weighted_symmetric(nmax: int, pack):
    def quantize_cols(xb, weight):
        L, d = make_qx_quants(xb, nmax, qw=weight)             # L: 0..2*nmax-1
        return pack(f16_bits(d), np.ascontiguousarray(L.T).astype(np.uint8))
    return quantize_cols


def _weighted_affine(nmax: int, pack):
    def quantize_cols(xb, weight):
        L, d, the_min = make_qkx_quants(xb, weight, nmax, -0.9, 0.05, 36, use_mad=False, le_degenerate=True)
        return pack(f16_bits(d), f16_bits(-the_min), np.ascontiguousarray(L.T).astype(np.uint8))
    return quantize_cols


def _trunc_int(v: np.ndarray) -> np.ndarray:
    """C ``(int)v`` for finite float32 (truncation toward zero) -> int32."""
    return v.astype(np.int32)


def _first_min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running ``if (v < min) min = v; if (v > max) max = v`` over each row: the first extreme value
    (keeps the sign of a zero exactly as the C loop does)."""
    rows = np.arange(x.shape[0])
    return x[rows, np.argmin(x, axis=1)], x[rows, np.argmax(x, axis=1)]


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8[n, 32] values 0..15 -> uint8[n, 16]: low nibble weight j, high nibble weight j+16."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 values -> uint32 qh (bit j = weight j) as 4 little-endian bytes."""
    bits = ((q >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
    qh = np.bitwise_or.reduce(bits, axis=1).astype("<u4")
    return qh.view(np.uint8).reshape(-1, 4)


def _unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(qh).view("<u4").reshape(-1, 1)
    return (((v >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)


def _symmetric(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0 core (``nmax`` 8 / 16): returns (fp16 bits of d [n], q uint8[n, 32])."""
    max_ = first_absmax(x)
    d = max_ / _F(-nmax)
    with np.errstate(divide="ignore"):
        id_ = np.where(d != 0, _F(1.0) / d, _F(0.0)).astype(_F)
    v = _trunc_int(x * id_[:, None] + _F(nmax + 0.5)).astype(np.int8)  # (int8_t) cast: wraps like GCC
    q = np.minimum(np.int32(2 * nmax - 1), v.astype(np.int32)).astype(np.uint8)
    return f16_bits(d), q


def _affine(x: np.ndarray, steps: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1 core: returns (fp16 d, fp16 m, q uint8[n, 32])."""
    min_, max_ = _first_min_max(x)
    d = (max_ - min_) / _F(steps)
    with np.errstate(divide="ignore"):
        id_ = np.where(d != 0, _F(1.0) / d, _F(0.0)).astype(_F)
    v = _trunc_int((x - min_[:, None]) * id_[:, None] + _F(0.5))
    if clamp:  # MIN(15, (int8_t)v)
        q = np.minimum(np.int32(steps), v.astype(np.int8).astype(np.int32)).astype(np.uint8)
    else:  # (uint8_t)v
        q = v.astype(np.uint8)
    return f16_bits(d), f16_bits(min_), q


class _SymmetricBlocks:
    """Q4_0/Q5_0 quantizer (mixin before QuantFormat): ``_nmax`` levels either side of zero (8 / 16)."""
    _nmax: ClassVar[int]

    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        _no_imatrix(cls, w)
        d, q = _symmetric(np.asarray(x, _F), cls._nmax)
        return cls._pack(d, q)

    @classmethod
    def quantize_weighted_rows(cls, rows, imatrix):
        return _weighted_rows(rows, imatrix, _weighted_symmetric(cls._nmax, cls._pack))


class _AffineBlocks:
    """Q4_1/Q5_1 quantizer (mixin before QuantFormat): ``_steps`` levels above the minimum (15 / 31);
    ``_clamp``: the C code's ``MIN(15, (int8_t)v)`` (Q4_1) rather than ``(uint8_t)v`` (Q5_1)."""
    _steps: ClassVar[int]
    _clamp: ClassVar[bool]

    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        _no_imatrix(cls, w)
        d, m, q = _affine(np.asarray(x, _F), cls._steps, clamp=cls._clamp)
        return cls._pack(d, m, q)

    @classmethod
    def quantize_weighted_rows(cls, rows, imatrix):
        return _weighted_rows(rows, imatrix, _weighted_affine(cls._steps, cls._pack))


class Q4_0(_SymmetricBlocks, QuantFormat, qtype=T.Q4_0):
    _nmax = 8

    @staticmethod
    def _pack(d, q):
        return np.concatenate([u16_bytes(d), _pack_nibbles(q)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 0)
        v = _unpack_nibbles(q[:, 2:18]).astype(np.int32) - 8
        return v.astype(_F) * d[:, None]


class Q4_1(_AffineBlocks, QuantFormat, qtype=T.Q4_1):
    _steps, _clamp = 15, True

    @staticmethod
    def _pack(d, m, q):
        return np.concatenate([u16_bytes(d), u16_bytes(m), _pack_nibbles(q)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d, m = f16_at(q, 0), f16_at(q, 2)
        v = _unpack_nibbles(q[:, 4:20])
        return v.astype(_F) * d[:, None] + m[:, None]


class Q5_0(_SymmetricBlocks, QuantFormat, qtype=T.Q5_0):
    _nmax = 16

    @staticmethod
    def _pack(d, q):
        return np.concatenate([u16_bytes(d), _pack_high_bits(q), _pack_nibbles(q)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 0)
        v = (_unpack_nibbles(q[:, 6:22]) | _unpack_high_bits(q[:, 2:6])).astype(np.int32) - 16
        return v.astype(_F) * d[:, None]


class Q5_1(_AffineBlocks, QuantFormat, qtype=T.Q5_1):
    _steps, _clamp = 31, False

    @staticmethod
    def _pack(d, m, q):
        return np.concatenate([u16_bytes(d), u16_bytes(m), _pack_high_bits(q), _pack_nibbles(q)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d, m = f16_at(q, 0), f16_at(q, 2)
        v = _unpack_nibbles(q[:, 8:24]) | _unpack_high_bits(q[:, 4:8])
        return v.astype(_F) * d[:, None] + m[:, None]


class Q8_0(QuantFormat, qtype=T.Q8_0):
    @chunked(CHUNK_BLOCKS)
    def quantize_blocks(cls, x, w=None):
        # ggml ignores importance weights for Q8_0 (round-to-nearest is already optimal): so do we
        x = np.asarray(x, _F)
        amax = np.max(np.abs(x), axis=1)
        d = amax / _F(127.0)
        with np.errstate(divide="ignore"):
            id_ = np.where(d != 0, _F(1.0) / d, _F(0.0)).astype(_F)
        qs = _trunc_int(round_half_away(x * id_[:, None])).astype(np.int8)
        return np.concatenate([u16_bytes(f16_bits(d)), qs.view(np.uint8)], axis=1)

    @classmethod
    def dequantize_blocks(cls, q):
        d = f16_at(q, 0)
        return q[:, 2:34].view(np.int8).astype(_F) * d[:, None]
