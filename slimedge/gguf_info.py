"""What is in a GGUF file: metadata, tensor table, sizes, bits per weight, optional value statistics.

``read_info(path) -> GGUFInfo`` reads the header with ``gguf.GGUFReader`` (tensor data is only
memory-mapped, never read) and checks the file the way llama.cpp's loader does: magic and version,
every header item inside the file, row lengths that fit the type's block, tensor offsets aligned and
contiguous, and every tensor's data inside the file. Anything wrong (empty, truncated, corrupt, not
GGUF, a directory) becomes one :class:`SlimedgeError` line naming the file.

``tensor_stats(path)`` dequantizes each tensor (``slimedge.quant.dequantize``, row slabs so memory
stays bounded) and returns min/max/mean/std/rms and the count of non-finite values.

Example::

    info = read_info("model-q4_k_m.gguf")
    info.arch, info.n_params, info.bpw, info.type_counts   # 'llama', 1100048384, 4.85, {'Q4_K': 134, ...}
    info.tensors[0].name, info.tensors[0].shape, info.tensors[0].type   # 'token_embd.weight', (32000, 2048), 'Q4_K'
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType

from .errors import SlimedgeError

_PSEUDO_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # NumPy order: the last dimension is the row length (GGUF ne[0])
    type: str  # GGML type name, e.g. "Q4_K"
    n_bytes: int  # bytes of data in the file (without alignment padding)
    n_elements: int
    offset: int  # absolute file offset of the data

    @property
    def qtype(self) -> GGMLQuantizationType:
        return GGMLQuantizationType[self.type]

    @property
    def bpw(self) -> float:
        return 8.0 * self.n_bytes / self.n_elements if self.n_elements else 0.0


@dataclass
class GGUFInfo:
    path: str
    file_size: int  # bytes
    version: int  # GGUF format version
    alignment: int
    data_offset: int  # where the tensor data section starts
    metadata: dict[str, Any]  # key -> plain Python value (str, int, float, bool, full lists)
    metadata_types: dict[str, str]  # key -> GGUF value type, e.g. "STRING", "ARRAY[INT32]"
    tensors: list[TensorInfo] = field(default_factory=list)  # in file order

    @property
    def arch(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name")

    @property
    def file_type(self) -> int | None:
        v = self.metadata.get("general.file_type")
        return int(v) if isinstance(v, int) else None

    @property
    def file_type_name(self) -> str | None:
        ft = self.file_type
        if ft is None:
            return None
        try:
            return LlamaFileType(ft).name
        except ValueError:
            return f"unknown ({ft})"

    @property
    def total_tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bpw(self) -> float:
        """Bits per weight over all tensors (tensor bytes only, not the header)."""
        return 8.0 * self.total_tensor_bytes / self.n_params if self.n_params else 0.0

    @property
    def type_counts(self) -> dict[str, int]:
        """Tensor count per type, most frequent first."""
        return dict(Counter(t.type for t in self.tensors).most_common())

    @property
    def type_bytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.type] = out.get(t.type, 0) + t.n_bytes
        return out

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise SlimedgeError(f"{self.path}: no tensor named {name!r}")


class _Short(Exception):
    """The file ended inside a header item or a tensor's data."""

    def __init__(self, offset: int):
        self.offset = offset


class _StrictReader(GGUFReader):
    """GGUFReader that raises instead of silently reading short arrays past the end of the file."""

    def _get(self, offset, dtype, count=1, override_order=None):
        arr = super()._get(offset, dtype, count, override_order)
        if arr.shape[0] != int(count):
            raise _Short(int(offset))
        return arr


def _open(path: str | os.PathLike) -> tuple[GGUFReader, int]:
    p = os.fspath(path)
    if os.path.isdir(p):
        raise SlimedgeError(f"{p}: is a directory, not a GGUF file")
    try:
        size = os.path.getsize(p)
    except FileNotFoundError:
        raise SlimedgeError(f"{p}: no such file") from None
    except OSError as exc:
        raise SlimedgeError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise SlimedgeError(f"{p}: empty file, not a GGUF model")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise SlimedgeError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if magic != b"GGUF":
        hint = " (convert Hugging Face weights with `slimedge convert`)" if p.endswith(".safetensors") else ""
        raise SlimedgeError(f"{p}: not a GGUF file (starts with {magic!r}, expected b'GGUF'){hint}")
    try:
        return _StrictReader(p), size
    except _Short as exc:
        raise SlimedgeError(f"{p}: truncated: the header ends early (at byte {exc.offset} of {size}); "
                            f"the file is incomplete or corrupt, re-create or re-download it") from None
    except MemoryError:
        raise SlimedgeError(f"{p}: corrupt GGUF header (absurd sizes); re-create or re-download it") from None
    except (ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError, TypeError) as exc:
        raise SlimedgeError(f"{p}: corrupt or unsupported GGUF file ({_short(exc)}); "
                            f"re-create or re-download it") from None
    except OSError as exc:
        raise SlimedgeError(f"{p}: cannot read ({exc.strerror or exc})") from None


def _short(exc: Exception) -> str:
    s = " ".join(str(exc).split())
    return (s[:120] + "...") if len(s) > 120 else s or type(exc).__name__


def _decode(b) -> str:
    return bytes(b).decode("utf-8", errors="replace")


def _field_value(f) -> tuple[Any, str]:
    """A reader field as a plain Python value and its GGUF type description."""
    main = f.types[0]
    if main == GGUFValueType.STRING:
        return _decode(f.parts[-1]), "STRING"
    if main != GGUFValueType.ARRAY:
        return f.parts[-1].tolist()[0], main.name
    sub = f.types[-1] if len(f.types) > 1 else None
    if sub is None:  # empty array: element type is the first part
        try:
            sub = GGUFValueType(int(f.parts[0][0]))
        except ValueError:
            sub = None
        return [], f"ARRAY[{sub.name if sub else '?'}]"
    if len(f.types) > 2:  # nested arrays: gguf-py flattens them
        return f.contents(), "ARRAY[" * (len(f.types) - 1) + sub.name + "]" * (len(f.types) - 1)
    if sub == GGUFValueType.STRING:
        return [_decode(f.parts[i]) for i in f.data], "ARRAY[STRING]"
    if not f.data:
        return [], f"ARRAY[{sub.name}]"
    vals = np.concatenate([f.parts[i] for i in f.data])
    return vals.tolist(), f"ARRAY[{sub.name}]"


def read_info(path: str | os.PathLike) -> GGUFInfo:
    """Header, metadata and tensor table of a GGUF file, checked as llama.cpp's loader would."""
    p = os.fspath(path)
    reader, size = _open(p)
    try:
        metadata: dict[str, Any] = {}
        types: dict[str, str] = {}
        for key, f in reader.fields.items():
            if key in _PSEUDO_FIELDS:
                continue
            metadata[key], types[key] = _field_value(f)
        version = int(reader.fields["GGUF.version"].parts[0][0])
        alignment = int(reader.alignment)
        tensors: list[TensorInfo] = []
        expected = 0  # llama.cpp requires the tensors to follow each other, each padded to the alignment
        for t in reader.tensors:
            qt = GGMLQuantizationType(t.tensor_type)
            block, type_size = GGML_QUANT_SIZES[qt]
            ne = [int(x) for x in t.shape]
            if any(x < 0 for x in ne) or (ne and ne[0] % block):
                raise SlimedgeError(f"{p}: corrupt tensor {t.name!r}: row length {ne[0] if ne else '?'} does not "
                                    f"fit {qt.name} blocks of {block}; re-create the file")
            n_elem = int(np.prod(ne, dtype=object)) if ne else 1
            n_bytes = n_elem // block * type_size
            rel = t.data_offset - reader.data_offset
            if rel != expected:
                raise SlimedgeError(f"{p}: corrupt tensor table: tensor {t.name!r} has data offset {rel}, "
                                    f"expected {expected}; re-create the file")
            expected += -(-n_bytes // alignment) * alignment
            if t.data_offset + n_bytes > size:
                raise SlimedgeError(f"{p}: truncated: tensor {t.name!r} needs bytes up to {t.data_offset + n_bytes} "
                                    f"but the file has {size}; the file is incomplete, re-create or re-download it")
            tensors.append(TensorInfo(t.name, tuple(reversed(ne)), qt.name, n_bytes, n_elem, int(t.data_offset)))
        return GGUFInfo(p, size, version, alignment, int(reader.data_offset), metadata, types, tensors)
    except SlimedgeError:
        raise
    except (ValueError, KeyError, IndexError, OverflowError, TypeError) as exc:
        raise SlimedgeError(f"{p}: corrupt GGUF file ({_short(exc)}); re-create or re-download it") from None
    finally:
        del reader


# ---- statistics --------------------------------------------------------------------------------

@dataclass
class TensorStats:
    min: float
    max: float
    mean: float
    std: float
    rms: float
    n_nonfinite: int  # NaN and ±Inf values (left out of the other numbers)


_INT_TYPES = {"I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "F64": np.float64}


def _rows_as_float(raw: np.ndarray, t: TensorInfo) -> np.ndarray:
    """uint8[n_rows, row_bytes] -> float[n_rows, ne0] for one slab of a tensor."""
    if t.type in _INT_TYPES:
        return raw.view(_INT_TYPES[t.type]).astype(np.float64)
    from .quant import dequantize

    return dequantize(raw, t.type, t.shape[-1])


def tensor_stats(path: str | os.PathLike, info: GGUFInfo | None = None, names: list[str] | None = None,
                 slab_elements: int = 1 << 22) -> dict[str, TensorStats | str]:
    """Value statistics per tensor (dequantized); a string says why a tensor has none."""
    info = info or read_info(path)
    chosen = [t for t in info.tensors if names is None or t.name in names]
    data = np.memmap(info.path, mode="r", dtype=np.uint8)
    out: dict[str, TensorStats | str] = {}
    for t in chosen:
        ne0 = t.shape[-1] if t.shape else 1
        n_rows = t.n_elements // ne0 if ne0 else 0
        if n_rows == 0 or t.n_bytes == 0:
            out[t.name] = "empty tensor"
            continue
        row_bytes = t.n_bytes // n_rows
        rows = data[t.offset:t.offset + t.n_bytes].reshape(n_rows, row_bytes)
        step = max(1, slab_elements // max(ne0, 1))
        n, mean, m2, sq = 0, 0.0, 0.0, 0.0  # count, running mean, sum of squared deviations, sum of squares
        lo, hi = np.inf, -np.inf
        bad = 0
        try:
            for r0 in range(0, n_rows, step):
                x = np.asarray(_rows_as_float(np.ascontiguousarray(rows[r0:r0 + step]), t), dtype=np.float64)
                fin = np.isfinite(x)
                bad += int(x.size - fin.sum())
                x = x[fin]
                if x.size:  # merge this slab's moments into the running ones (Chan et al.)
                    nb, mb = x.size, float(x.mean())
                    m2b = float(np.square(x - mb).sum())
                    delta, tot = mb - mean, n + nb
                    mean += delta * nb / tot
                    m2 += m2b + delta * delta * n * nb / tot
                    n = tot
                    sq += float(np.dot(x, x))
                    lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        except (NotImplementedError, SlimedgeError) as exc:
            out[t.name] = f"no statistics: {_short(exc)}"
            continue
        if n == 0:
            out[t.name] = f"no finite values ({bad} NaN/Inf)"
            continue
        out[t.name] = TensorStats(lo, hi, mean, (m2 / n) ** 0.5, (sq / n) ** 0.5, bad)
    del data
    return out
