"""The format registry: one class per GGML tensor type, block-level NumPy quantize/dequantize.

Every format subclasses :class:`QuantFormat` with ``qtype=...``; that registers it, once: a second class
for a type already registered is refused (a shared, abstract base takes no ``qtype``). A subclass only
implements two vectorized block functions (no Python loop over blocks or rows):

* ``quantize_blocks(x: float32[n_blocks, block_size], w: float32[n_blocks, block_size] | None)
  -> uint8[n_blocks, type_size]``  (``w``: optional importance weights, e.g. an imatrix row)
* ``dequantize_blocks(q: uint8[n_blocks, type_size]) -> float32[n_blocks, block_size]``

Block and byte sizes come from :mod:`slimedge.quant.types` (``gguf.GGML_QUANT_SIZES``). Row-level helpers
(:func:`quantize_rows`, :func:`dequantize_rows`) split rows into blocks, check the input shapes, and check
that a format returned the shape and dtype above (a wrong one is a bug in the format: ``TypeError``).
This module is the readable reference; ``slimedge.quant.backend`` may route to C kernels.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import SlimedgeError
from . import types

REGISTRY: dict[GGMLQuantizationType, type["QuantFormat"]] = {}


class QuantFormat:
    """Base of all formats. Subclass with ``class Q8_0(QuantFormat, qtype=GGMLQuantizationType.Q8_0)``."""

    qtype: ClassVar[GGMLQuantizationType]
    block_size: ClassVar[int]  # weights per block
    type_size: ClassVar[int]  # bytes per block

    def __init_subclass__(cls, qtype: GGMLQuantizationType | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if qtype is None:  # an abstract base shared by several formats: not registered
            return
        if qtype in REGISTRY:
            have = REGISTRY[qtype]
            raise TypeError(f"{qtype.name} is registered twice: by {have.__module__}.{have.__qualname__} and "
                            f"by {cls.__module__}.{cls.__qualname__}")
        cls.qtype = qtype
        cls.block_size, cls.type_size = types.block_size(qtype), types.type_size(qtype)
        REGISTRY[qtype] = cls

    @classmethod
    def quantize_blocks(cls, x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError(f"{cls.qtype.name}: quantize not implemented")

    @classmethod
    def dequantize_blocks(cls, q: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{cls.qtype.name}: dequantize not implemented")

    @classmethod
    def bits_per_weight(cls) -> float:
        return 8.0 * types.bytes_per_element(cls.qtype)

    @classmethod
    def row_bytes(cls, n_per_row: int) -> int:
        return types.row_bytes(cls.qtype, n_per_row)


def qtype_of(name: str | int | GGMLQuantizationType) -> GGMLQuantizationType:
    """Parse ``'q4_k'``, ``'Q4_K'``, ``12`` or an enum into a GGML type (single types only, not mixes)."""
    if isinstance(name, (int, np.integer)):  # GGMLQuantizationType included (an IntEnum)
        return types.ggml_type(name)
    try:
        return types.ggml_type(str(name))
    except KeyError:
        known = ", ".join(t.name for t in REGISTRY)
        raise SlimedgeError(f"unknown tensor type {name!r}; known types: {known}") from None


def get_format(qtype: str | int | GGMLQuantizationType) -> type[QuantFormat]:
    t = qtype_of(qtype)
    try:
        return REGISTRY[t]
    except KeyError:
        known = ", ".join(t.name for t in REGISTRY)
        raise SlimedgeError(f"tensor type {t.name} is not supported by slimedge; supported: {known}") from None


def check_row_length(fmt: type[QuantFormat], n_per_row: int, what: str = "tensor") -> None:
    if n_per_row % fmt.block_size:
        raise SlimedgeError(
            f"{what}: row length {n_per_row} is not a multiple of the {fmt.qtype.name} block size "
            f"{fmt.block_size}; choose another type for it (e.g. --tensor-type '<name>=f16')")


def _ieee(func):
    """Run ``func`` with NumPy's float warnings off: the reference does ggml's float arithmetic, where a block of
    subnormal, huge or non-finite values overflows to inf/NaN exactly as in C (and gives ggml's bytes); NumPy's
    "overflow encountered" warnings about that say nothing a user could act on."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return func(*args, **kwargs)

    return wrapper


@_ieee
def quantize_rows(x: np.ndarray, qtype, imatrix: np.ndarray | None = None, what: str = "tensor") -> np.ndarray:
    """NumPy reference: quantize ``x: float32[..., n_per_row]`` -> ``uint8[..., row_bytes]``.

    ``imatrix``: optional ``float32[n_per_row]`` importance of each column (same for every row).
    """
    fmt = get_format(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_per_row = x.shape[-1]
    check_row_length(fmt, n_per_row, what)
    blocks = x.reshape(-1, fmt.block_size)
    w = None
    if imatrix is not None:
        imatrix = np.asarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n_per_row,):
            raise SlimedgeError(f"{what}: importance vector has shape {imatrix.shape}, expected ({n_per_row},)")
        if hasattr(fmt, "quantize_weighted_rows"):  # needs whole-row statistics (legacy formats)
            rows = x.reshape(-1, n_per_row)
            q = _returned(fmt, "quantize_weighted_rows", fmt.quantize_weighted_rows(rows, imatrix),
                          (rows.shape[0], fmt.row_bytes(n_per_row)), np.uint8)
            return q.reshape(*x.shape[:-1], fmt.row_bytes(n_per_row))
        w = np.broadcast_to(imatrix.reshape(1, -1, fmt.block_size),
                            (blocks.size // n_per_row, n_per_row // fmt.block_size, fmt.block_size)
                            ).reshape(-1, fmt.block_size)
    q = _returned(fmt, "quantize_blocks", fmt.quantize_blocks(blocks, w), (blocks.shape[0], fmt.type_size), np.uint8)
    return q.reshape(*x.shape[:-1], fmt.row_bytes(n_per_row))


def _returned(fmt: type[QuantFormat], what: str, out, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``out`` when it is an array of ``shape`` and ``dtype``; else the format is wrong (``TypeError``)."""
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype:
        got = f"{out.dtype}{list(out.shape)}" if isinstance(out, np.ndarray) else type(out).__name__
        raise TypeError(f"{fmt.__module__}.{fmt.__qualname__}.{what} returned {got}, expected "
                        f"{np.dtype(dtype)}{list(shape)}")
    return out


def quantized_rows(q: np.ndarray, fmt: type[QuantFormat], n_per_row: int | None = None) -> tuple[np.ndarray, int]:
    """Check quantized rows ``q[..., row_bytes]`` of ``fmt`` -> (contiguous ``uint8`` view, values per row)."""
    q = np.ascontiguousarray(q).view(np.uint8)
    row_bytes = q.shape[-1] if q.ndim else q.size
    if row_bytes % fmt.type_size:
        raise SlimedgeError(f"{fmt.qtype.name}: {row_bytes} bytes per row is not a multiple of the block size "
                            f"{fmt.type_size} bytes")
    n = types.row_length(fmt.qtype, row_bytes)
    if n_per_row is not None and n != n_per_row:
        raise SlimedgeError(f"{fmt.qtype.name}: expected {n_per_row} values per row, data holds {n}")
    return q, n


@_ieee
def dequantize_rows(q: np.ndarray, qtype, n_per_row: int | None = None) -> np.ndarray:
    """NumPy reference: ``uint8[..., row_bytes]`` -> ``float32[..., n_per_row]``."""
    fmt = get_format(qtype)
    q, n = quantized_rows(q, fmt, n_per_row)
    blocks = q.reshape(-1, fmt.type_size)
    x = _returned(fmt, "dequantize_blocks", fmt.dequantize_blocks(blocks), (blocks.shape[0], fmt.block_size),
                  np.float32)
    return x.reshape(*q.shape[:-1], n)


# ---- float formats -------------------------------------------------------------------------------

class F32(QuantFormat, qtype=GGMLQuantizationType.F32):
    @classmethod
    def quantize_blocks(cls, x, w=None):
        return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8).reshape(-1, 4)

    @classmethod
    def dequantize_blocks(cls, q):
        return np.ascontiguousarray(q).view(np.float32).reshape(-1, 1)


class F16(QuantFormat, qtype=GGMLQuantizationType.F16):
    @classmethod
    def quantize_blocks(cls, x, w=None):  # IEEE round-to-nearest-even, as ggml (F16C) does
        return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16).view(np.uint8).reshape(-1, 2)

    @classmethod
    def dequantize_blocks(cls, q):
        return np.ascontiguousarray(q).view(np.float16).astype(np.float32).reshape(-1, 1)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even; NaNs stay quiet NaNs."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(is_nan, ((u >> 16) | 64).astype(np.uint16), rounded)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(b).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


class BF16(QuantFormat, qtype=GGMLQuantizationType.BF16):
    @classmethod
    def quantize_blocks(cls, x, w=None):
        return f32_to_bf16_bits(x).view(np.uint8).reshape(-1, 2)

    @classmethod
    def dequantize_blocks(cls, q):
        return bf16_bits_to_f32(q).reshape(-1, 1)
