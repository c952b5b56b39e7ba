"""What both sources share: a reference to one float tensor stored in a file, read as float32 on demand.

:class:`TensorRef` knows a tensor's name, shape (NumPy order), storage type, file and byte offset;
:meth:`~TensorRef.load` reads all of it and :meth:`~TensorRef.load_rows` a range of rows (leading
dimensions flattened), both with plain reads at the offset (no memory map: mapped pages would stay
resident, so memory would grow to the whole file), into a caller's reused float32 buffer when given.
F16/BF16 values are widened exactly, in place; F64 is narrowed. The Hugging Face
(:class:`~slimedge.source.hf.SafetensorsRef`) and GGUF (:class:`~slimedge.source.gguf_src.GGUFTensorRef`)
references only add how they are found in their file.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from ..errors import SlimedgeError

# storage type name (safetensors' dtype, GGML's type name) -> NumPy storage dtype
STORAGE_DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
                                       "F64": np.dtype("<f8")}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live; :meth:`load` / :meth:`load_rows` read them as float32."""

    name: str  # the source's name: HF "model.layers.0.self_attn.q_proj.weight", GGUF "blk.0.attn_q.weight"
    dtype: str  # storage type, a key of STORAGE_DTYPES: "F32", "F16", "BF16", "F64"
    shape: tuple[int, ...]  # NumPy order
    file: Path
    offset: int  # absolute byte offset of the data in ``file``

    @property
    def where(self) -> str:
        return f"{self.name} in {self.file.name}"

    @property
    def n_rows(self) -> int:
        """Rows of the tensor seen as float32[n_rows, shape[-1]] (1 for a vector)."""
        return prod(self.shape[:-1])

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        """float32[shape], read from disk now (bf16/f16 widened exactly).

        ``out``: optional float32 buffer of at least ``prod(shape)`` elements to fill and return a view
        of (reusing buffers avoids page-faulting fresh memory for every tensor). 2-byte types are read
        into the buffer's upper half and widened in place, front to back, so no second buffer is needed.
        """
        return self._read(0, prod(self.shape), out).reshape(self.shape)

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """float32[stop - start, shape[-1]]: rows ``[start, stop)`` of the tensor seen as
        float32[n_rows, shape[-1]] (leading dims flattened), read from disk now; ``out`` as in :meth:`load`."""
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        cols = self.shape[-1] if self.shape else 1
        return self._read(start * cols, (stop - start) * cols, out).reshape(stop - start, cols)

    def _read(self, first: int, n: int, out: np.ndarray | None) -> np.ndarray:
        return read_float32(self.file, self.offset, self.dtype, first, n, out, self.name)


def read_raw(ref, first: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8[n]: bytes ``[first, first + n)`` of a 1-byte-per-value tensor (quantized storage: FP8, packed
    FP4, block scales), read with plain reads (into ``out`` when given)."""
    buf = np.empty(n, np.uint8) if out is None else out.reshape(-1).view(np.uint8)[:n]
    _read_exactly(ref.file, ref.offset + first, buf, ref.name)
    return buf


def read_float32(path: Path, offset: int, dtype: str, first: int, n: int, out: np.ndarray | None,
                 name: str) -> np.ndarray:
    """float32[n]: values ``[first, first + n)`` of a ``dtype`` ("F32", "F16", "BF16", "F64") array stored
    at byte ``offset`` of ``path``, read with plain reads (into ``out``'s first n values when given).

    2-byte types are read into the buffer's upper half and widened in place, front to back.
    """
    out = np.empty(n, np.float32) if out is None else out.reshape(-1)[:n]
    size = STORAGE_DTYPES[dtype].itemsize
    offset += first * size
    if size == 4:
        _read_exactly(path, offset, out.view(np.uint8), name)
    elif size == 2:
        raw = out.view(np.uint8)[2 * n:]
        _read_exactly(path, offset, raw, name)
        _widen_in_place(out, raw.view(np.uint16 if dtype == "BF16" else np.float16))
    else:  # F64: narrow through a temporary
        tmp = np.empty(n, np.float64)
        _read_exactly(path, offset, tmp.view(np.uint8), name)
        np.copyto(out, tmp, casting="same_kind")
    return out


_CHUNK = 1 << 20


def _widen_in_place(out: np.ndarray, raw: np.ndarray) -> None:
    """out[k] = float32(raw[k]) where ``raw`` (2-byte values) occupies the upper half of ``out``'s bytes.

    Chunk [a, b) writes bytes [4a, 4b) and reads bytes [2n + 2a, 2n + 2b): it never reaches raw values
    of later chunks (4b <= 2n + 2b since b <= n); NumPy copies the one chunk that overlaps its own input.
    bf16 is the top half of a float32; f16 converts exactly.
    """
    bf16 = raw.dtype == np.uint16
    u32 = out.view(np.uint32)
    for a in range(0, out.size, _CHUNK):
        b = min(a + _CHUNK, out.size)
        if bf16:
            np.left_shift(raw[a:b], np.uint32(16), out=u32[a:b], dtype=np.uint32)
        else:
            np.copyto(out[a:b], raw[a:b], casting="same_kind")


def _read_exactly(path: Path, offset: int, buf: np.ndarray, name: str) -> None:
    """Fill ``buf`` (uint8) with the bytes of ``path`` at ``offset``."""
    view = memoryview(buf).cast("B")
    got = 0
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            while got < len(view):
                k = f.readinto(view[got:])
                if not k:
                    break
                got += k
    except OSError as exc:
        raise SlimedgeError(f"{path}: cannot read tensor {name}: {exc.strerror or exc}") from None
    if got != len(view):
        raise SlimedgeError(f"{path}: truncated while reading tensor {name}; re-download the file")


# ---- the scales of quantized checkpoints (FP8 and NVFP4 sources share them) ----

def _e4m3fn_table() -> np.ndarray:
    """float32 value of every float8_e4m3fn byte (sign, 4 exponent bits biased 7, 3 mantissa bits; S.1111.111
    is NaN, no infinities)."""
    u = np.arange(256)
    exp, man = (u >> 3) & 0xF, u & 7
    mag = np.where(exp == 0, man * 2.0 ** -9, (1 + man / 8) * 2.0 ** (exp - 7))
    mag[(u & 0x7F) == 0x7F] = np.nan
    return np.where(u & 0x80, -mag, mag).astype(np.float32)


E4M3FN = _e4m3fn_table()


def read_scale(ref) -> np.ndarray:
    """A (small) scale tensor of a quantized checkpoint, whole, as float32 (float storage or float8_e4m3fn)."""
    if ref.dtype in STORAGE_DTYPES:
        return read_float32(ref.file, ref.offset, ref.dtype, 0, prod(ref.shape), None, ref.name).reshape(ref.shape)
    if ref.dtype == "F8_E4M3":
        return E4M3FN[read_raw(ref, 0, prod(ref.shape))].reshape(ref.shape)
    raise SlimedgeError(f"{ref.file}: scale tensor {ref.name} has dtype {ref.dtype}; expected a float type")
