"""Read a Hugging Face model folder lazily: ``config.json`` plus safetensors weights.

How: each ``*.safetensors`` file starts with an 8-byte little-endian header length and a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` (offsets relative to the end of the header).
We parse that header ourselves (no torch; bf16 works) and read one tensor's bytes only when asked
(a read at an offset: no whole-file mmap), whole or a range of rows (``load_rows``), so resident
memory stays near one slice of a tensor.
Sharded checkpoints list their files in ``model.safetensors.index.json``.

Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are refused: unpickling runs arbitrary code.
Every problem is a one-line :class:`SlimedgeError` naming the file (and tensor) at fault.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from ..errors import SlimedgeError

log = logging.getLogger(__name__)

# safetensors dtype -> (NumPy storage dtype, how to widen to float32)
_DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
                                "F64": np.dtype("<f8")}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header size
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.bin", "*.ckpt")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live; :meth:`load` reads them as float32."""

    name: str  # HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
    dtype: str  # safetensors dtype: "F32", "F16", "BF16"
    shape: tuple[int, ...]  # NumPy order
    file: Path
    offset: int  # absolute byte offset of the data in ``file``
    nbytes: int

    @property
    def where(self) -> str:
        return f"{self.name} in {self.file.name}"

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        """float32[shape], read from disk now (bf16/f16 widened exactly).

        ``out``: optional float32 buffer of at least ``prod(shape)`` elements to fill and return a view
        of (reusing buffers avoids page-faulting fresh memory for every tensor). 2-byte types are read
        into the buffer's upper half and widened in place, front to back, so no second buffer is needed.
        """
        return self._read(0, prod(self.shape), out).reshape(self.shape)

    @property
    def n_rows(self) -> int:
        """Rows of the tensor seen as float32[n_rows, shape[-1]] (1 for a vector)."""
        return prod(self.shape[:-1])

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """float32[stop - start, shape[-1]]: rows ``[start, stop)`` of the tensor seen as
        float32[n_rows, shape[-1]] (leading dims flattened), read from disk now; ``out`` as in :meth:`load`."""
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        cols = self.shape[-1] if self.shape else 1
        return self._read(start * cols, (stop - start) * cols, out).reshape(stop - start, cols)

    def _read(self, first: int, n: int, out: np.ndarray | None) -> np.ndarray:
        return read_float32(self.file, self.offset, self.dtype, first, n, out, self.name)


def read_float32(path: Path, offset: int, dtype: str, first: int, n: int, out: np.ndarray | None,
                 name: str) -> np.ndarray:
    """float32[n]: values ``[first, first + n)`` of a ``dtype`` ("F32", "F16", "BF16", "F64") array stored
    at byte ``offset`` of ``path``, read with plain reads (into ``out``'s first n values when given).

    2-byte types are read into the buffer's upper half and widened in place, front to back.
    """
    out = np.empty(n, np.float32) if out is None else out.reshape(-1)[:n]
    size = _DTYPES[dtype].itemsize
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


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate one safetensors file's header: name -> :class:`TensorRef` (file order)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SlimedgeError(f"{path}: not a safetensors file (only {len(head)} bytes); re-download it")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise SlimedgeError(f"{path}: corrupt or truncated safetensors header (claims {n} bytes, "
                                    f"file has {size}); re-download it")
            raw = f.read(n)
    except OSError as exc:
        raise SlimedgeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise SlimedgeError(f"{path}: corrupt safetensors header ({exc}); re-download it") from None
    base = 8 + n
    out: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SlimedgeError(f"{path}: corrupt safetensors entry for tensor {name}; re-download it") from None
        if dtype not in _DTYPES:
            raise SlimedgeError(f"{path}: tensor {name} has dtype {dtype}; slimedge reads F32, F16 and BF16 "
                                f"checkpoints (dequantize the model first)")
        nbytes = prod(shape) * _DTYPES[dtype].itemsize
        if end - begin != nbytes or begin < 0:
            raise SlimedgeError(f"{path}: corrupt safetensors entry for tensor {name} "
                                f"({end - begin} bytes for shape {list(shape)} {dtype}); re-download it")
        if base + end > size:
            raise SlimedgeError(f"{path}: truncated: tensor {name} ends at byte {base + end} but the file has "
                                f"{size} bytes; re-download it")
        out[name] = TensorRef(name, dtype, shape, path, base + begin, nbytes)
    return out


def load_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise SlimedgeError(f"{path}: missing; a Hugging Face model folder needs config.json next to its weights")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SlimedgeError(f"{path}: not valid JSON ({exc}); fix or re-download it") from None
    except OSError as exc:
        raise SlimedgeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise SlimedgeError(f"{path}: expected a JSON object, found {type(config).__name__}")
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers keep the LM config inside
        config = {**config, **config["text_config"]}
    return config


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = list(dict.fromkeys(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SlimedgeError(f"{index}: corrupt index ({exc!s}); re-download it") from None
        files = [model_dir / n for n in names]
        for f in files:
            if not f.is_file():
                raise SlimedgeError(f"{f}: missing shard listed in {index.name}; download all shards")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    hf_files = [f for f in files if not f.name.startswith("consolidated")]
    if hf_files:  # Mistral repos also ship consolidated.safetensors (same weights, Mistral's own names)
        return hf_files
    if files:
        return files
    pickles = sorted({p for pat in PICKLE_PATTERNS for p in model_dir.glob(pat)})
    if pickles:
        raise SlimedgeError(
            f"{pickles[0]}: pickle checkpoints are refused because loading a pickle can run arbitrary code; "
            f"convert it to safetensors first (transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise SlimedgeError(f"{model_dir}: no *.safetensors weights found")


class HFSource:
    """A Hugging Face model folder: ``config`` (dict) and ``tensors`` (HF name -> :class:`TensorRef`)."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        if not self.model_dir.exists():
            raise SlimedgeError(f"{self.model_dir}: no such folder")
        if not self.model_dir.is_dir():
            raise SlimedgeError(f"{self.model_dir}: expected a Hugging Face model folder or a .gguf file")
        self.config = load_config(self.model_dir)
        self.files = _weight_files(self.model_dir)
        self.tensors: dict[str, TensorRef] = {}
        for f in self.files:
            for name, ref in read_safetensors_header(f).items():
                if name in self.tensors:
                    raise SlimedgeError(f"{f}: tensor {name} also appears in {self.tensors[name].file.name}")
                self.tensors[name] = ref
        log.info("%s: %d tensors in %d file(s)", self.model_dir, len(self.tensors), len(self.files))

    @property
    def name(self) -> str:
        return self.model_dir.resolve().name

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
