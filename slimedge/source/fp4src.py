"""FP4 checkpoints as sources: gpt-oss's MXFP4 experts and ModelOpt / compressed-tensors NVFP4 weights.

Both store 4-bit E2M1 codes two to a byte (element ``2i`` in the low nibble, ``2i + 1`` in the high one)
beside their scales; GGML's blocks hold the same codes in another order (byte ``j`` of a group: element
``j`` low, element ``j + g/2`` high, for a group of ``g`` = 32 (MXFP4) or 16 (NVFP4) values) and put the
scales in front. :func:`to_ggml` moves the bits (the C kernels' ``repack_fp4`` in one pass, else NumPy with
one 65536-entry table lookup per byte pair; the codes index the same E2M1 table in both: no value changes),
so a reference hands the converter GGML bytes directly (``stored_type``, ``raw_rows``) or floats
(``load_rows``: those bytes dequantized by :mod:`slimedge.quant`), row range by row range. The stored bytes
of a row range are memory-mapped only while it is repacked (:func:`_mapped`), so memory stays near a slice.

* :class:`MXFP4Ref`: ``X_blocks`` (uint8 ``[..., rows, n_blocks, 16]``) and ``X_scales`` (uint8 E8M0
  ``[..., rows, n_blocks]``) read as the tensor ``X`` of shape ``[..., rows, 32 n_blocks]`` (rows are output
  features, as GGUF wants). gpt-oss fuses gate and up with their rows interleaved: :meth:`MXFP4Ref.rows`
  gives every ``step``-th row (``ref.rows(0, 2)`` the gate, ``ref.rows(1, 2)`` the up projection), itself
  passing through.
* :class:`NVFP4Ref`: ModelOpt's ``X.weight`` (uint8 ``[rows, cols/2]``), ``X.weight_scale`` (E4M3 per 16
  values), ``X.weight_scale_2`` (per tensor) and ``X.input_scale``; compressed-tensors' ``weight_packed`` and
  ``*_global_scale`` (the reciprocals) are read alike. Passed through, the per-tensor scales become the
  ``.scale`` / ``.input_scale`` tensors llama.cpp's converter writes (when not 1); read as floats, the
  weight scale is multiplied in. Per-expert NVFP4 weights stacked by :class:`slimedge.arch.moe.StackedRef` pass
  through as one 3-D NVFP4 tensor with per-expert scale vectors (:func:`stacked_scales`), as the converter merges
  them.
"""

from __future__ import annotations

import mmap
from math import prod

import numpy as np
from gguf import GGMLQuantizationType as T

from ..errors import SlimedgeError


def _pair_table() -> np.ndarray:
    """uint16[65536]: for source bytes (a, b) = (byte i, byte i + g/4) of a group, the two GGML bytes
    (2i, 2i + 1) little-endian: (a lo | b lo << 4, a hi | b hi << 4)."""
    v = np.arange(65536, dtype=np.uint32)
    a, b = v & 0xFF, v >> 8
    return ((a & 0xF) | ((b & 0xF) << 4) | (((a >> 4) | (b & 0xF0)) << 8)).astype(np.uint16)


_PAIRS = _pair_table()


def repack_codes(src: np.ndarray) -> np.ndarray:
    """uint8[n, g/2] packed codes (element 2i low, 2i+1 high) -> GGML order (byte j: element j low, j + g/2 high)."""
    h = src.shape[1] // 2
    idx = src[:, :h].astype(np.uint16)
    idx |= src[:, h:].astype(np.uint16) << 8
    return _PAIRS[idx].view(np.uint8)


def to_ggml(codes: np.ndarray, scales: np.ndarray, n_sub: int, g: int, mask: int, row_blocks: int = 0,
            step: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """GGML blocks uint8[n_blocks, n_sub (g + 1)] from ``codes`` (uint8[n_blocks * n_sub * g], groups of g bytes)
    and ``scales`` (uint8[n_blocks * n_sub]): per block the n_sub scales ``& mask``, then the repacked groups;
    with ``row_blocks`` (blocks per row) only every ``step``-th row from the first. The C kernels'
    ``repack_fp4`` when built (one pass, memory speed), else :func:`repack_codes`. ``out``: a reused
    contiguous buffer of at least that many bytes to fill (and return a view of)."""
    from ..quant import backend

    n = scales.size // n_sub
    rb = row_blocks or n
    n_out = ((n // rb - 1) // step + 1) * rb if n else 0
    size = n_out * n_sub * (g + 1)
    out = np.empty(size, np.uint8) if out is None else out.reshape(-1).view(np.uint8)[:size]
    out = out.reshape(n_out, n_sub * (g + 1))
    if backend._K is not None:
        backend._K.repack_fp4(codes, scales, out, n_sub, g, mask, rb, step)
        return out
    codes = codes.reshape(-1, rb * n_sub * g)[::step].reshape(n_out * n_sub, g)
    out[:, :n_sub] = (scales.reshape(-1, rb * n_sub)[::step] & np.uint8(mask)).reshape(n_out, n_sub)
    out[:, n_sub:] = repack_codes(codes).reshape(n_out, n_sub * g)
    return out


def _mapped(ref, first: int, n: int) -> np.ndarray:
    """uint8[n]: bytes ``[first, first + n)`` of a 1-byte-per-value tensor, memory-mapped: the repacking then
    reads straight from the page cache, and only the rows it keeps (no copy of a span twice their size). The
    array holds the only reference to its map, so the region is unmapped as soon as the caller drops it:
    resident memory stays near one slice."""
    if n == 0:
        return np.empty(0, np.uint8)
    start = ref.offset + first
    base = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        with open(ref.file, "rb") as f:
            mm = mmap.mmap(f.fileno(), start - base + n, offset=base, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise SlimedgeError(f"{ref.file}: cannot read tensor {ref.name}: {exc}") from None
    return np.frombuffer(mm, np.uint8, count=n, offset=start - base)


class _FP4Ref:
    """What both references share: rows, loading floats from :meth:`raw_rows`, the row view."""

    name: str
    shape: tuple[int, ...]
    stored_type: T
    keep_with_float = False  # whether a float --type keeps the stored type (llama.cpp's converter does for NVFP4)

    @property
    def n_rows(self) -> int:
        return prod(self.shape[:-1])

    def _check(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        return self.load_rows(0, self.n_rows, out).reshape(self.shape)

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        from ..quant import dequantize

        cols = self.shape[-1]
        x = dequantize(self.raw_rows(start, stop), self.stored_type, cols).reshape(stop - start, cols)
        x = self._scaled(x)
        if out is None:
            return x
        dst = out.reshape(-1)[:x.size].reshape(x.shape)
        np.copyto(dst, x)
        return dst

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        return x

    def raw_rows(self, start: int, stop: int, step: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def extra_tensors(self, gguf_name: str) -> list[tuple[str, np.ndarray]]:
        """Tensors written beside the passed-through weight ``gguf_name`` (none by default)."""
        return []

    def rows(self, offset: int, step: int) -> "RowView":
        return RowView(self, offset, step)


class MXFP4Ref(_FP4Ref):
    """gpt-oss's ``X_blocks`` + ``X_scales`` as the tensor ``X`` (see the module docstring)."""

    dtype = "MXFP4"
    stored_type = T.MXFP4

    def __init__(self, name: str, blocks, scales):
        bs, ss = tuple(blocks.shape), tuple(scales.shape)
        if len(bs) < 3 or bs[-1] != 16 or ss != bs[:-1]:
            raise SlimedgeError(f"{blocks.file}: MXFP4 tensors {blocks.name} {list(bs)} and {scales.name} {list(ss)} "
                                f"do not fit ([..., rows, blocks, 16] and [..., rows, blocks]); the checkpoint is "
                                f"damaged")
        self.name, self.blocks, self.scales, self.file = name, blocks, scales, blocks.file
        self.shape = (*bs[:-2], bs[-2] * 32)
        self.nbytes = blocks.nbytes + scales.nbytes

    @property
    def where(self) -> str:
        return f"{self.name} (MXFP4: {self.blocks.name}, {self.scales.name}) in {self.file.name}"

    def raw_rows(self, start: int, stop: int, step: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        """uint8[rows, 17 blocks]: GGML MXFP4 blocks of rows ``start, start + step, ...`` below ``stop`` (the
        span is mapped, only those rows repacked), into the reused buffer ``out`` when given."""
        self._check(start, stop)
        nb = self.shape[-1] // 32
        n = (stop - start) * nb
        if not n:
            return np.empty((0, nb * 17), np.uint8)
        blocks, scales = _mapped(self.blocks, start * nb * 16, n * 16), _mapped(self.scales, start * nb, n)
        return to_ggml(blocks, scales, 1, 16, 0xFF, nb, step, out).reshape(-1, nb * 17)


class NVFP4Ref(_FP4Ref):
    """An NVFP4 weight with its scales (see the module docstring); ``invert``: compressed-tensors' global
    scales, the reciprocals of ModelOpt's."""

    dtype = "NVFP4"
    stored_type = T.NVFP4
    keep_with_float = True

    def __init__(self, weight, scale, scale2=None, input_scale=None, invert: bool = False):
        ws, ss = tuple(weight.shape), tuple(scale.shape)
        cols = 2 * ws[-1]
        if len(ws) < 2 or ss != (*ws[:-1], cols // 16) or cols % 64:
            raise SlimedgeError(f"{weight.file}: NVFP4 weight {weight.name} {list(ws)} and scale {scale.name} "
                                f"{list(ss)} do not fit ([rows, cols/2] and [rows, cols/16], cols a multiple of 64)"
                                f"; the checkpoint is damaged or in a layout slimedge does not read")
        self.name, self.weight, self.scale, self.file = weight.name, weight, scale, weight.file
        self.shape = (*ws[:-1], cols)
        self.nbytes = weight.nbytes + scale.nbytes
        self.scale2 = self._scalar(scale2, invert)
        self.input_scale = self._scalar(input_scale, invert)

    @staticmethod
    def _scalar(ref, invert: bool) -> np.float32 | None:
        if ref is None:
            return None
        from .base import read_scale

        v = read_scale(ref).reshape(-1)
        if v.size != 1:
            raise SlimedgeError(f"{ref.file}: {ref.name} has {v.size} values; NVFP4 takes one per tensor")
        return np.float32(1.0) / v[0] if invert else v[0]

    @property
    def where(self) -> str:
        return f"{self.name} (NVFP4, scales {self.scale.name}) in {self.file.name}"

    def raw_rows(self, start: int, stop: int, step: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        """uint8[rows, 36 blocks]: GGML NVFP4 blocks (4 UE4M3 scales, 32 code bytes) of rows ``start, start +
        step, ...`` below ``stop`` (into ``out`` when given)."""
        self._check(start, stop)
        cols = self.shape[-1]
        n = (stop - start) * cols // 64  # E4M3 scales are positive: their low 7 bits are the UE4M3 byte
        if not n:
            return np.empty((0, cols // 64 * 36), np.uint8)
        codes, scales = _mapped(self.weight, start * cols // 2, n * 32), _mapped(self.scale, start * cols // 16, n * 4)
        return to_ggml(codes, scales, 4, 8, 0x7F, cols // 64, step, out).reshape(-1, cols // 64 * 36)

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        if self.scale2 is not None:
            x *= self.scale2
        return x

    def extra_tensors(self, gguf_name: str) -> list[tuple[str, np.ndarray]]:
        """``<name>.scale`` and ``<name>.input_scale`` (float32[1]) where not 1, as llama.cpp's converter."""
        base, extra = gguf_name.removesuffix(".weight"), []
        for suffix, v in ((".scale", self.scale2), (".input_scale", self.input_scale)):
            if v is not None and abs(float(v) - 1.0) >= 1e-6:
                extra.append((base + suffix, np.array([v], np.float32)))
        return extra


def stacked_scales(refs: list, gguf_name: str) -> list[tuple[str, np.ndarray]]:
    """``<name>.scale`` and ``<name>.input_scale`` of experts ``refs`` stacked into the passed-through ``gguf_name``:
    float32[n_expert] (1 where an expert has none), each left out when all are within 1e-6 of 1 (``np.allclose``),
    as llama.cpp's converter writes merged NVFP4 experts; nothing for other stored types."""
    if not all(isinstance(r, NVFP4Ref) for r in refs):
        return []
    base, extra = gguf_name.removesuffix(".weight"), []
    for suffix, attr in ((".scale", "scale2"), (".input_scale", "input_scale")):
        v = np.array([1.0 if getattr(r, attr) is None else float(getattr(r, attr)) for r in refs], np.float32)
        if not np.allclose(v, 1.0, atol=1e-6):
            extra.append((base + suffix, v))
    return extra


class RowView:
    """Rows ``offset, offset + step, ...`` of ``base`` (``[..., rows, cols]``, rows a multiple of ``step``) as a
    tensor of shape ``[..., rows / step, cols]``: a span of base rows is read, every ``step``-th kept."""

    def __init__(self, base, offset: int, step: int):
        if not 0 <= offset < step or base.shape[-2] % step:
            raise ValueError(f"{base.name}: cannot take rows {offset}::{step} of {list(base.shape)}")
        self.base, self.offset, self.step = base, offset, step
        self.name = f"{base.name}[rows {offset}::{step}]"
        self.shape = (*base.shape[:-2], base.shape[-2] // step, base.shape[-1])
        self.file, self.dtype = base.file, base.dtype
        for attr in ("stored_type", "keep_with_float"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    @property
    def where(self) -> str:
        return f"rows {self.offset}::{self.step} of {self.base.where}"

    @property
    def n_rows(self) -> int:
        return prod(self.shape[:-1])

    def _span(self, start: int, stop: int) -> tuple[int, int]:
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        first = self.offset + self.step * start  # base row of view row r: offset + step * r, across matrices too
        return first, (first + self.step * (stop - start - 1) + 1) if stop > start else first

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        return self.load_rows(0, self.n_rows, out).reshape(self.shape)

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        a, b = self._span(start, stop)
        x = self.base.load_rows(a, b)[::self.step]
        if out is None:
            return np.ascontiguousarray(x)
        dst = out.reshape(-1)[:x.size].reshape(x.shape)
        np.copyto(dst, x)
        return dst

    def raw_rows(self, start: int, stop: int, step: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        a, b = self._span(start, stop)
        if step == 1 or stop == start:
            return self.base.raw_rows(a, b, self.step, out)
        return self.base.raw_rows(a, b, self.step)[::step]

    def extra_tensors(self, gguf_name: str) -> list[tuple[str, np.ndarray]]:
        return self.base.extra_tensors(gguf_name)

    def rows(self, offset: int, step: int) -> "RowView":
        return RowView(self, offset, step)


def wrap_mxfp4(tensors: dict) -> None:
    """Replace each ``X_blocks`` / ``X_scales`` pair of ``tensors`` by an :class:`MXFP4Ref` named ``X``."""
    for name in [n for n in tensors if n.endswith("_blocks")]:
        stem = name[:-len("_blocks")]
        scales = tensors.get(stem + "_scales")
        if scales is None:
            raise SlimedgeError(f"{tensors[name].file}: MXFP4 tensor {name} has no {stem}_scales beside it; the "
                                f"checkpoint is incomplete")
        tensors[stem] = MXFP4Ref(stem, tensors.pop(name), tensors.pop(stem + "_scales"))


def wrap_nvfp4(tensors: dict, compressed: bool) -> None:
    """Replace each NVFP4 weight and its scales by an :class:`NVFP4Ref` (FP8 layers are left to the caller)."""
    if compressed:  # compressed-tensors' names -> ModelOpt's (the global scales stay reciprocals: invert)
        for name in [n for n in tensors if n.endswith(".weight_packed")]:
            tensors[name[:-len("_packed")]] = tensors.pop(name)
    s2, inp = (".weight_global_scale", ".input_global_scale") if compressed else (".weight_scale_2", ".input_scale")
    for name in [n for n in tensors if n.endswith(".weight")]:
        weight, scale = tensors[name], tensors.get(name + "_scale")
        if scale is None or weight.dtype != "U8" or len(scale.shape) < 2:
            continue  # a float weight, or FP8 with a per-tensor/per-row scale
        stem = name[:-len(".weight")]
        tensors[name] = NVFP4Ref(weight, tensors.pop(name + "_scale"), tensors.pop(stem + s2, None),
                                 tensors.pop(stem + inp, None), invert=compressed)
