"""Block fields: a quantized block's integer codes and scale fields as NumPy arrays, and back (torch-free).

What for: ``slimedge tune`` (:mod:`slimedge.tune`) keeps every weight's integer code and learns the
block parameters — super-block scale ``d`` (and min ``dmin``), sub-block scales and mins — then writes
them back into the same bytes. Every supported type is read as one affine form per sub-block::

    w[block, sub, j] = (d[block] * sc[block, sub]) * codes[block, sub, j] + sign * (dmin[block] * mn[block, sub])

with ``sign`` -1 for the k-quants' subtracted mins, +1 for Q4_1/Q5_1's added ``m``; types without sub-scales
have ``sc = 1`` (and ``mn = 1`` where there is a block min), types without mins have no ``dmin`` term. The
products are float32 in ggml's order, so :func:`dequantize_fields` equals ``slimedge.quant.dequantize``
bit for bit (tests/quant/test_blockfields.py).

How, without a second copy of any layout:

* **codes** come from the registry's own dequantization (:mod:`.formats` ``dequantize_blocks``) of the
  blocks with their scale fields set to unit values (``d = 1``, ``sc = 1``, ``dmin = 0``): what comes out
  is exactly each weight's integer level (e.g. Q6_K's ``q - 32``, Q3_K's ``q - 4``);
* **scale fields** are read and written with :mod:`.kquant_pack`'s packers (``pack_scale_min_k4``,
  ``pack_q3_scales`` and their unpackers) and :mod:`.kquant_search`'s fp16 helpers; the only facts written
  here are where each scale field sits in its block (:data:`SPECS`), checked by the bit-exact tests;
* :func:`pack` writes new scale fields into a copy of the original blocks, whose code bytes are never
  touched, so codes cannot drift; ``pack(unpack(q), q) == q`` byte for byte;
* **new codes** (``pack(..., codes=True)``, for ``tune --learn-codes``) are written through each type's code
  bit map, which :func:`code_bits` finds by probing that same dequantization: every bit outside the scale
  fields is set alone in a zero block, and the one code it moves and by how much is read off (Q4_0's
  nibble bits add 1, 2, 4, 8 to a base of -8; Q3_K's high-mask bit adds 4 to ``low - 4``; ...).

The non-linear IQ4_NL and IQ4_XS have the same form with ``codes`` replaced by ``grid[codes]``, their 16-level
table: their codes are the table indices 0..15 (:func:`levels`), found by looking the unit blocks' levels up.

Supported: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS (:data:`SUPPORTED`). The
lattice i-quants (IQ1-IQ3) code groups of weights together, so they have no per-weight code to learn.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T

from .formats import get_format
from .iq4 import KVALUES, pack_xs_scales, unpack_xs_scales
from .kquant_pack import (
    pack_q3_scales,
    pack_scale_min_k4,
    unpack_q3_scales,
    unpack_scale_min_k4,
)
from .kquant_search import f16_at, f16_bits, u16_bytes

_F = np.float32
_ONE_F16 = 0x3C00  # fp16 bits of 1.0


@dataclass(frozen=True)
class FieldSpec:
    """Where a type's scale fields are and what values they take."""

    qtype: T
    n_sub: int                      # sub-blocks per block (1: the block scale only)
    d_at: int                       # byte offset of the fp16 (super-)block scale
    dmin_at: int | None = None      # byte offset of the fp16 min (k-quants' dmin, Q4_1/Q5_1's m)
    sub: str | None = None          # sub-scale packing: "k4" (Q4_K/Q5_K), "q3" (Q3_K), "q2" (Q2_K), "q6" (Q6_K),
                                    # "xs" (IQ4_XS)
    sub_at: int = 0                 # byte offset of the sub-scale field
    sc_range: tuple[int, int] = (1, 1)   # allowed integer sub-scales
    mn_range: tuple[int, int] = (1, 1)   # allowed integer sub-mins (k-quants) or (1, 1)
    min_sign: int = 0               # -1: w = ... - dmin*mn; +1: w = ... + m; 0: no min
    grid: tuple[int, ...] | None = None  # non-linear types: the code is an index into this sorted table of levels

    @property
    def has_min(self) -> bool:
        return self.min_sign != 0

    @property
    def has_sub(self) -> bool:
        return self.sub is not None

    @property
    def has_sub_min(self) -> bool:
        return self.sub in ("k4", "q2")


SPECS: dict[T, FieldSpec] = {s.qtype: s for s in (
    FieldSpec(T.Q2_K, 16, d_at=80, dmin_at=82, sub="q2", sub_at=0, sc_range=(0, 15), mn_range=(0, 15), min_sign=-1),
    FieldSpec(T.Q3_K, 16, d_at=108, sub="q3", sub_at=96, sc_range=(-32, 31)),
    FieldSpec(T.Q4_K, 8, d_at=0, dmin_at=2, sub="k4", sub_at=4, sc_range=(0, 63), mn_range=(0, 63), min_sign=-1),
    FieldSpec(T.Q5_K, 8, d_at=0, dmin_at=2, sub="k4", sub_at=4, sc_range=(0, 63), mn_range=(0, 63), min_sign=-1),
    FieldSpec(T.Q6_K, 16, d_at=208, sub="q6", sub_at=192, sc_range=(-128, 127)),
    FieldSpec(T.Q4_0, 1, d_at=0),
    FieldSpec(T.Q5_0, 1, d_at=0),
    FieldSpec(T.Q8_0, 1, d_at=0),
    FieldSpec(T.Q4_1, 1, d_at=0, dmin_at=2, min_sign=1),
    FieldSpec(T.Q5_1, 1, d_at=0, dmin_at=2, min_sign=1),
    FieldSpec(T.IQ4_NL, 1, d_at=0, grid=tuple(KVALUES.tolist())),
    FieldSpec(T.IQ4_XS, 8, d_at=0, sub="xs", sub_at=2, sc_range=(-32, 31), grid=tuple(KVALUES.tolist())),
)}
SUPPORTED: frozenset[str] = frozenset(t.name for t in SPECS)


def spec_of(qtype) -> FieldSpec:
    """The :class:`FieldSpec` of a type (KeyError for a type without learnable block fields)."""
    t = get_format(qtype).qtype
    return SPECS[t]


@dataclass
class BlockFields:
    """The blocks of one tensor as arrays (``nb`` blocks; see the module docstring for the formula)."""

    qtype: T
    codes: np.ndarray               # int16[nb, n_sub, block_size // n_sub]
    d: np.ndarray                   # float32[nb] (fp16 values)
    dmin: np.ndarray | None = None  # float32[nb] (fp16 values) where the type has a min
    sc: np.ndarray | None = None    # int16[nb, n_sub] where the type has sub-scales
    mn: np.ndarray | None = None    # int16[nb, n_sub] where the type has sub-mins

    @property
    def spec(self) -> FieldSpec:
        return SPECS[self.qtype]


def _sub_fields(s: FieldSpec, q: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(sc, mn) int16[nb, n_sub] from the blocks' bytes (None where the type has none)."""
    f = q[:, s.sub_at:]
    if s.sub == "k4":
        sc, mn = unpack_scale_min_k4(np.ascontiguousarray(f[:, :12]))
        return sc.astype(np.int16), mn.astype(np.int16)
    if s.sub == "q3":
        return unpack_q3_scales(np.ascontiguousarray(f[:, :12])).astype(np.int16), None
    if s.sub == "q2":
        b = f[:, :16]
        return (b & 0x0F).astype(np.int16), (b >> 4).astype(np.int16)
    if s.sub == "q6":
        return np.ascontiguousarray(f[:, :16]).view(np.int8).astype(np.int16), None
    if s.sub == "xs":
        return unpack_xs_scales(f[:, :6]).astype(np.int16), None
    return None, None


def _put_sub_fields(s: FieldSpec, q: np.ndarray, sc: np.ndarray, mn: np.ndarray | None) -> None:
    """Write sub-scales (and mins) into ``q`` in place (values must be in range)."""
    at = s.sub_at
    if s.sub == "k4":
        q[:, at:at + 12] = pack_scale_min_k4(sc.astype(np.uint8), mn.astype(np.uint8))
    elif s.sub == "q3":
        q[:, at:at + 12] = pack_q3_scales((sc.astype(np.int32) + 32).astype(np.uint8))
    elif s.sub == "q2":
        q[:, at:at + 16] = (sc.astype(np.uint8) & 0x0F) | (mn.astype(np.uint8) << 4)
    elif s.sub == "q6":
        q[:, at:at + 16] = sc.astype(np.int8).view(np.uint8)
    elif s.sub == "xs":
        q[:, at:at + 6] = pack_xs_scales(sc)


def _unit_blocks(s: FieldSpec, q: np.ndarray) -> np.ndarray:
    """A copy of ``q`` with d = 1, dmin = 0, every sub-scale 1 and sub-min 0: dequantizes to the codes."""
    u = q.copy()
    u[:, s.d_at:s.d_at + 2] = u16_bytes(np.full(len(q), _ONE_F16, np.uint16))
    if s.dmin_at is not None:
        u[:, s.dmin_at:s.dmin_at + 2] = 0
    if s.has_sub:
        ones = np.ones((len(q), s.n_sub), np.int16)
        _put_sub_fields(s, u, ones, np.zeros_like(ones) if s.has_sub_min else None)
    return u


def _codes(s: FieldSpec, q: np.ndarray) -> np.ndarray:
    """Each weight's integer code ``int32[nb, block_size]``: the unit blocks' dequantization, which for a
    non-linear type is a level of its table, then that level's index."""
    v = np.rint(get_format(s.qtype).dequantize_blocks(_unit_blocks(s, q))).astype(np.int32).reshape(len(q), -1)
    if s.grid is None:
        return v
    g = np.asarray(s.grid)
    idx = np.searchsorted(g, v)
    if not np.array_equal(g[idx.clip(0, len(g) - 1)], v):
        raise RuntimeError(f"{s.qtype.name}: a unit block dequantizes off its table")
    return idx.astype(np.int32)


def unpack(q: np.ndarray, qtype) -> BlockFields:
    """``uint8[nb, type_size]`` (or ``[rows, row_bytes]``) blocks of ``qtype`` -> :class:`BlockFields`."""
    s = spec_of(qtype)
    fmt = get_format(s.qtype)
    q = np.ascontiguousarray(q, dtype=np.uint8).reshape(-1, fmt.type_size)
    codes = _codes(s, q).astype(np.int16).reshape(len(q), s.n_sub, fmt.block_size // s.n_sub)
    sc, mn = _sub_fields(s, q)
    dmin = f16_at(q, s.dmin_at) if s.dmin_at is not None else None
    return BlockFields(s.qtype, codes, f16_at(q, s.d_at), dmin, sc, mn)


@dataclass(frozen=True)
class CodeBits:
    """A type's code bit map within one block: code ``j`` = ``base[j]`` + the ``value`` of each set bit of it."""

    base: np.ndarray       # int32[block_size]: each code with all its bits clear
    byte: np.ndarray       # int32[n_bits]: byte of each code bit within the block
    mask: np.ndarray       # uint8[n_bits]: that bit
    code: np.ndarray       # int32[n_bits]: the code it belongs to
    value: np.ndarray      # int32[n_bits]: what it adds (a power of two)
    lo: int                # the codes' common range
    hi: int


def code_bits(qtype) -> CodeBits:
    """The :class:`CodeBits` of a supported type, probed once on the registry's dequantization (module docstring)."""
    return _probe_code_bits(spec_of(qtype))


@functools.cache
def _probe_code_bits(s: FieldSpec) -> CodeBits:
    fmt = get_format(s.qtype)
    ts = fmt.type_size
    zero = np.zeros((1, ts), np.uint8)
    fixed = _unit_blocks(s, zero) == _unit_blocks(s, np.full((1, ts), 0xFF, np.uint8))  # the scale fields' bytes
    probes = [(b, k) for b in range(ts) if not fixed[0, b] for k in range(8)]
    blocks = np.zeros((len(probes), ts), np.uint8)
    for i, (b, k) in enumerate(probes):
        blocks[i, b] = 1 << k
    base = _codes(s, zero).reshape(-1)
    moved = _codes(s, blocks) - base
    nz = moved != 0
    if not np.all(nz.sum(1) == 1):
        raise RuntimeError(f"{s.qtype.name}: a code bit that moves {sorted(set(nz.sum(1)))} codes; not a bit map")
    code = nz.argmax(1).astype(np.int32)
    value = moved[np.arange(len(probes)), code]
    mag = np.abs(value)
    neg = value < 0  # a two's complement sign bit (Q8_0's bit 7 adds -128)
    n_neg = np.bincount(code[neg], minlength=base.size)
    if np.any(mag & (mag - 1)) or np.any(n_neg > 1) or np.any(mag[neg] <= np.bincount(
            code, weights=np.where(neg, 0, mag), minlength=base.size)[code[neg]]):
        raise RuntimeError(f"{s.qtype.name}: code bits adding {sorted(set(value.tolist()))}; not a binary code")
    lo = base + np.bincount(code, weights=np.where(neg, value, 0), minlength=base.size).astype(np.int32)
    hi = base + np.bincount(code, weights=np.where(neg, 0, value), minlength=base.size).astype(np.int32)
    if len(set(lo.tolist())) != 1 or len(set(hi.tolist())) != 1:
        raise RuntimeError(f"{s.qtype.name}: codes of different ranges within a block")
    return CodeBits(base, np.array([b for b, _ in probes], np.int32), np.array([1 << k for _, k in probes], np.uint8),
                    code, value, int(lo[0]), int(hi[0]))


def _put_codes(s: FieldSpec, q: np.ndarray, codes: np.ndarray) -> None:
    """Write ``codes`` (int[nb, block_size], in range) into the blocks ``q`` in place: one pass per bit position
    of a byte, in uint8 (every code byte's bits are code bits; a byte holds one code bit per position)."""
    cb = code_bits(s.qtype)
    v = codes.reshape(len(q), -1).astype(np.int16) - cb.base.astype(np.int16)  # [nb, block]: the set bits' sum
    sign = np.zeros(cb.base.size, np.int16)                         # each code's sign-bit value (0: none)
    sign[cb.code[cb.value < 0]] = cb.value[cb.value < 0]
    neg = v < 0                                                     # set the sign bit, the rest holds v - sign
    rest = (v - np.where(neg, sign, 0)).astype(np.uint8)
    neg = neg.view(np.uint8)
    q[:, np.unique(cb.byte)] = 0
    for k in range(8):
        at = cb.mask == (1 << k)
        idx, val, byte = cb.code[at], cb.value[at], cb.byte[at]
        pos = val > 0
        if pos.any():
            shift = np.log2(val[pos]).astype(np.uint8)
            q[:, byte[pos]] |= ((rest[:, idx[pos]] >> shift) & 1) << np.uint8(k)
        if not pos.all():
            q[:, byte[~pos]] |= neg[:, idx[~pos]] << np.uint8(k)


def _check_range(name: str, v: np.ndarray, lo_hi: tuple[int, int], qtype: T) -> None:
    if v.size and (int(v.min()) < lo_hi[0] or int(v.max()) > lo_hi[1]):
        raise ValueError(f"{qtype.name}: {name} outside {lo_hi[0]}..{lo_hi[1]} "
                         f"({int(v.min())}..{int(v.max())})")


def pack(fields: BlockFields, q: np.ndarray, codes: bool = False) -> np.ndarray:
    """The blocks ``q`` (the ones ``fields`` came from) with ``fields``' scales written in; codes untouched
    unless ``codes`` (then ``fields.codes`` are written too, through :func:`code_bits`).

    ``d``/``dmin`` are rounded to fp16; ``sc``/``mn`` (and codes) must be integers in the type's range (a
    ValueError otherwise: the caller clamps)."""
    s = fields.spec
    fmt = get_format(s.qtype)
    q = np.ascontiguousarray(q, dtype=np.uint8).reshape(-1, fmt.type_size)
    out = q.copy()
    if codes:
        cb = code_bits(s.qtype)
        _check_range("codes", fields.codes, (cb.lo, cb.hi), s.qtype)
        _put_codes(s, out, fields.codes)
    out[:, s.d_at:s.d_at + 2] = u16_bytes(f16_bits(np.asarray(fields.d, _F)))
    if s.dmin_at is not None:
        out[:, s.dmin_at:s.dmin_at + 2] = u16_bytes(f16_bits(np.asarray(fields.dmin, _F)))
    if s.has_sub:
        _check_range("sub-scales", fields.sc, s.sc_range, s.qtype)
        if s.has_sub_min:
            _check_range("sub-mins", fields.mn, s.mn_range, s.qtype)
        _put_sub_fields(s, out, fields.sc, fields.mn)
    return out


def scales(fields: BlockFields) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-sub-block float32 scale ``d*sc`` and signed min ``sign*dmin*mn`` (``[nb, n_sub]``), ggml's order."""
    s = fields.spec
    nb = len(fields.d)
    sc = fields.sc.astype(_F) if fields.sc is not None else np.ones((nb, s.n_sub), _F)
    scale = fields.d.astype(_F)[:, None] * sc
    if not s.has_min:
        return scale, None
    mn = fields.mn.astype(_F) if fields.mn is not None else np.ones((nb, s.n_sub), _F)
    return scale, _F(s.min_sign) * (fields.dmin.astype(_F)[:, None] * mn)


def levels(s: FieldSpec, codes: np.ndarray) -> np.ndarray:
    """float32 levels of integer ``codes``: the codes themselves, or a non-linear type's table entries."""
    return codes.astype(_F) if s.grid is None else np.asarray(s.grid, _F)[codes]


def dequantize_fields(fields: BlockFields) -> np.ndarray:
    """float32[nb, block_size]: the weights the fields describe (equal to ``slimedge.quant.dequantize``)."""
    scale, off = scales(fields)
    w = scale[:, :, None] * levels(fields.spec, fields.codes)
    if off is not None:
        w = w + off[:, :, None]
    return w.reshape(len(fields.d), -1)
