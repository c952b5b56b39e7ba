"""What is in a GGUF file: metadata, tensor table, sizes, bits per weight, optional value statistics.

``read_info(path) -> GGUFInfo`` parses the header from a memory map (tensor data is never read;
values and type ids are ``gguf``'s constants) and checks the file the way llama.cpp's loader does:
magic and version, every header item inside the file, row lengths that fit the type's block, tensor
offsets aligned and contiguous, and every tensor's data inside the file. Anything wrong (empty, truncated, corrupt, not
GGUF, a directory) becomes one :class:`SlimedgeError` line naming the file.

Block and byte sizes are :mod:`slimedge.quant.types`' (which also knows the types llama.cpp has and
the gguf package does not yet). Value statistics of the tensors are :mod:`slimedge.gguf_stats`'.

Example::

    info = read_info("model-q4_k_m.gguf")
    info.arch, info.n_params, info.bpw, info.type_counts   # 'llama', 1100048384, 4.85, {'Q4_K': 134, ...}
    info.tensors[0].name, info.tensors[0].shape, info.tensors[0].type   # 'token_embd.weight', (32000, 2048), 'Q4_K'
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, LlamaFileType

from .errors import SlimedgeError
from .quant.types import block_size, tensor_nbytes



@dataclass
class GGUFTensorInfo:
    """One entry of a GGUF file's tensor table (``slimedge.memory.TensorSize`` is what estimates need)."""

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
    tensors: list[GGUFTensorInfo] = field(default_factory=list)  # in file order
    byte_order: str = "<"  # "<" little-endian (every llama.cpp file), ">" big-endian

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

    def tensor(self, name: str) -> GGUFTensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise SlimedgeError(f"{self.path}: no tensor named {name!r}")


class _Corrupt(Exception):
    """The header is malformed; ``truncated``: it runs past the end of the file."""

    def __init__(self, what: str, truncated: bool = False):
        super().__init__(what)
        self.truncated = truncated


_SCALARS = {GGUFValueType.UINT8: "u1", GGUFValueType.INT8: "i1", GGUFValueType.UINT16: "u2",
            GGUFValueType.INT16: "i2", GGUFValueType.UINT32: "u4", GGUFValueType.INT32: "i4",
            GGUFValueType.FLOAT32: "f4", GGUFValueType.UINT64: "u8", GGUFValueType.INT64: "i8",
            GGUFValueType.FLOAT64: "f8", GGUFValueType.BOOL: "?"}
_STRUCT = {"u1": "B", "i1": "b", "u2": "H", "i2": "h", "u4": "I", "i4": "i", "f4": "f", "u8": "Q", "i8": "q",
           "f8": "d", "?": "?"}
_MIN_ITEM = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}  # smallest encoding of one array item


class _Header:
    """A bounds-checked cursor over the memory-mapped header (GGUF v2/v3, either byte order).

    Own parser rather than gguf.GGUFReader: that one builds several NumPy arrays per vocabulary
    entry (tens of seconds for a 150k-token vocabulary) and reads short arrays past the end of a
    truncated file without complaint. Tests check both agree on well-formed files.
    """

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos, self.end = buf, size, 0, "<"

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise _Corrupt(f"{what} at byte {self.pos} runs past the end of the file ({self.size} bytes)", True)
        at, self.pos = self.pos, self.pos + n
        return at

    def scalar(self, code: str, what: str):
        fmt = self.end + _STRUCT[code]
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def strings(self, n: int, what: str) -> list[str]:
        """``n`` strings in a row (vocabularies): one tight loop."""
        buf, size, pos, out = self.buf, self.size, self.pos, []
        unpack = struct.Struct(self.end + "Q").unpack_from
        for i in range(n):
            if pos + 8 > size:
                self.pos = pos
                raise _Corrupt(f"{what}[{i}] at byte {pos} runs past the end of the file ({size} bytes)", True)
            (m,) = unpack(buf, pos)
            if pos + 8 + m > size:
                self.pos = pos
                raise _Corrupt(f"{what}[{i}] at byte {pos} runs past the end of the file ({size} bytes)", True)
            out.append(buf[pos + 8:pos + 8 + m].decode("utf-8", errors="replace"))
            pos += 8 + m
        self.pos = pos
        return out

    def string(self, what: str) -> str:
        n = self.scalar("u8", what + " length")
        at = self.take(n, what)
        return bytes(self.buf[at:at + n]).decode("utf-8", errors="replace")

    def count(self, what: str, min_item: int) -> int:
        n = self.scalar("u8", what)
        if n * min_item > self.size - self.pos:
            raise _Corrupt(f"{what} {n} at byte {self.pos - 8} cannot fit in the file",
                           truncated=n < 2 ** 40)
        return n

    def vtype(self, what: str) -> GGUFValueType:
        raw = self.scalar("u4", what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise _Corrupt(f"{what} has unknown value type {raw} at byte {self.pos - 4}") from None

    def value(self, vt: GGUFValueType, what: str) -> tuple[Any, str]:
        if vt == GGUFValueType.STRING:
            return self.string(what), "STRING"
        if vt != GGUFValueType.ARRAY:
            return self.scalar(_SCALARS[vt], what), vt.name
        sub = self.vtype(what + " item type")
        n = self.count(what + " length", _MIN_ITEM.get(sub, np.dtype(_SCALARS.get(sub, "u1")).itemsize))
        if sub in _SCALARS:
            dt = np.dtype(self.end + _SCALARS[sub])
            return np.frombuffer(self.buf, dt, n, self.take(n * dt.itemsize, what)).tolist(), f"ARRAY[{sub.name}]"
        if sub == GGUFValueType.STRING:
            return self.strings(n, what), "ARRAY[STRING]"
        items, sub_name = [], sub.name
        for i in range(n):
            v, sub_name = self.value(sub, f"{what}[{i}]")
            items.append(v)
        return items, f"ARRAY[{sub_name}]"


def _parse(p: str, buf, size: int) -> GGUFInfo:
    h = _Header(buf, size)
    h.take(4, "magic")
    version = h.scalar("u4", "version")
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        h.end, h.pos = ">", 4
        version = h.scalar("u4", "version")
    if version not in (2, 3):
        raise _Corrupt(f"GGUF version {version} (slimedge and llama.cpp read versions 2 and 3)")
    n_tensors = h.count("tensor count", 24)
    n_kv = h.count("metadata count", 13)
    metadata: dict[str, Any] = {}
    types: dict[str, str] = {}
    for _ in range(n_kv):
        key = h.string("metadata key")
        if key in metadata:
            raise _Corrupt(f"duplicate metadata key {key!r}")
        metadata[key], types[key] = h.value(h.vtype(f"metadata {key!r}"), f"metadata {key!r}")
    alignment = metadata.get("general.alignment", 32)
    if "general.alignment" in metadata and (types["general.alignment"] != "UINT32" or alignment <= 0
                                            or alignment & (alignment - 1)):
        raise _Corrupt(f"general.alignment {alignment!r} is not a power of two (UINT32)")
    raw = []
    for _ in range(n_tensors):
        name = h.string("tensor name")
        n_dims = h.scalar("u4", f"tensor {name!r} dimension count")
        if not 1 <= n_dims <= 4:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (1 to 4 allowed)")
        ne = [h.scalar("i8", f"tensor {name!r} shape") for _ in range(n_dims)]
        type_id = h.scalar("u4", f"tensor {name!r} type")
        offset = h.scalar("u8", f"tensor {name!r} offset")
        raw.append((name, ne, type_id, offset))
    data_offset = -(-h.pos // alignment) * alignment
    tensors: list[GGUFTensorInfo] = []
    seen: set[str] = set()
    expected = 0  # llama.cpp requires the tensors to follow each other, each padded to the alignment
    for name, ne, type_id, offset in raw:
        if name in seen:
            raise _Corrupt(f"duplicate tensor {name!r}")
        seen.add(name)
        try:
            qt = GGMLQuantizationType(type_id)
            block = block_size(qt)
        except (ValueError, KeyError):
            raise _Corrupt(f"tensor {name!r} has unknown type id {type_id}") from None
        if any(x < 0 for x in ne) or ne[0] % block:
            raise _Corrupt(f"tensor {name!r} has shape {ne} (GGUF order); its row length does not fit "
                           f"{qt.name} blocks of {block}")
        n_elem = int(np.prod(ne, dtype=object))
        n_bytes = tensor_nbytes(tuple(reversed(ne)), qt)
        if offset != expected:
            raise _Corrupt(f"tensor {name!r} has data offset {offset}, expected {expected}")
        expected += -(-n_bytes // alignment) * alignment
        if data_offset + offset + n_bytes > size:
            raise _Corrupt(f"tensor {name!r} needs bytes up to {data_offset + offset + n_bytes} but the file has "
                           f"{size}", truncated=True)
        tensors.append(GGUFTensorInfo(name, tuple(reversed(ne)), qt.name, n_bytes, n_elem, data_offset + offset))
    return GGUFInfo(p, size, version, alignment, data_offset, metadata, types, tensors, h.end)


def one_line(exc: Exception) -> str:
    """An exception's message on one line, cut at 160 characters (for a user-facing error line)."""
    s = " ".join(str(exc).split())
    return (s[:160] + "...") if len(s) > 160 else s or type(exc).__name__


def read_info(path: str | os.PathLike) -> GGUFInfo:
    """Header, metadata and tensor table of a GGUF file, checked as llama.cpp's loader would."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise SlimedgeError(f"{p}: is a directory, not a GGUF file")
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise SlimedgeError(f"{p}: empty file, not a GGUF model")
            magic = f.read(4)
            if magic != b"GGUF":
                hint = " (convert Hugging Face weights with `slimedge convert`)" if p.endswith(".safetensors") else ""
                raise SlimedgeError(f"{p}: not a GGUF file (starts with {magic!r}, expected b'GGUF'){hint}")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                try:
                    return _parse(p, buf, size)
                except _Corrupt as exc:
                    if exc.truncated:
                        raise SlimedgeError(f"{p}: truncated GGUF file: {exc}; the file is incomplete, "
                                            f"re-create or re-download it") from None
                    raise SlimedgeError(f"{p}: corrupt or unsupported GGUF file: {one_line(exc)}; "
                                        f"re-create or re-download it") from None
    except FileNotFoundError:
        raise SlimedgeError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise SlimedgeError(f"{p}: is a directory, not a GGUF file") from None
    except OSError as exc:
        raise SlimedgeError(f"{p}: cannot read ({exc.strerror or exc})") from None


def _tokens(info: GGUFInfo) -> list:
    return list(info.metadata.get("tokenizer.ggml.tokens") or [])


def _mtp_head(info: GGUFInfo) -> bool:
    arch = info.metadata.get("general.architecture")
    return bool(info.metadata.get(f"{arch}.nextn_predict_layers")) and \
        not any(t.name.startswith("blk.0.") for t in info.tensors)


def is_mtp_head(path: Path) -> bool:
    """A multi-token-prediction head alone (``convert --mtp``, the converter's ``--mtp``): ``nextn_predict_layers``
    stated and no tensor of the model's first layer. llama.cpp runs it only beside its model."""
    return _mtp_head(read_info(path))


def vocab_problem(model: Path, draft: Path, label: str | None = None) -> str | None:
    """One line saying why ``draft`` cannot draft for ``model`` (another vocabulary: the two GGUFs'
    ``tokenizer.ggml.tokens`` differ; or a multi-token-prediction head, not a model), or None."""
    label = label or str(draft)
    d = read_info(draft)
    if _mtp_head(d):
        return (f"{label}: a multi-token-prediction head (convert --mtp), not a model: llama.cpp runs it beside the "
                f"model it belongs to (llama-server -m MODEL.gguf -md {Path(draft).name} --spec-type draft-mtp); "
                f"give --draft a small model of its own")
    a, b = _tokens(read_info(model)), _tokens(d)
    if not a or not b:
        return f"{label}: the draft or the model has no tokenizer.ggml.tokens; both need their vocabulary"
    if len(a) != len(b):
        return (f"{label}: the draft's vocabulary has {len(b)} tokens, the model's {len(a)}; a draft must share the "
                f"model's tokenizer (a smaller model of the same family, or one distilled from it)")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return (f"{label}: the draft's token {i} is {y!r}, the model's is {x!r}; a draft must share the "
                    f"model's tokenizer")
    return None
