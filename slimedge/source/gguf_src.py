"""An F32/F16/BF16 GGUF file as conversion source (to requantize it, e.g. F16 → Q4_K_M).

How: ``gguf.GGUFReader`` parses the file; its metadata is carried over (minus the keys the new file
sets itself: architecture, file type, quantization version, alignment) and tensors keep their GGUF
names. Tensor data is read with plain reads at each tensor's offset (whole or a range of rows), not
through the reader's memory map, so resident memory stays near one slice. A file that is already
quantized is refused: requantizing quantized weights compounds the error, and the original float
model gives a better result.
"""

from __future__ import annotations

import logging
from math import prod
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.types import FLOAT_TYPES

log = logging.getLogger(__name__)

# keys the output file writes itself
_SKIP_KEYS = {Keys.General.ARCHITECTURE, Keys.General.FILE_TYPE, Keys.General.QUANTIZATION_VERSION,
              Keys.General.ALIGNMENT}


def _field_value(field):
    """(value, vtype, sub_type) of a reader field; strings stay bytes (token texts need not be UTF-8)."""
    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i].tobytes()) for i in field.data], main, sub
        if sub == GGUFValueType.ARRAY:
            raise ValueError("nested arrays")
        return [field.parts[i].tolist()[0] for i in field.data], main, sub
    if main == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]].tobytes()), main, None
    return field.parts[field.data[0]].tolist()[0], main, None


class GGUFTensorRef:
    """One float tensor of the source GGUF; :meth:`load` returns float32[shape]."""

    def __init__(self, t, file: Path):
        self.name = t.name
        self.qtype = T(t.tensor_type)
        self.shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF ne order -> NumPy order
        self.offset = int(t.data_offset)  # absolute byte offset of the data in ``file``
        self.file = file

    @property
    def where(self) -> str:
        return f"{self.name} in {self.file.name}"

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        """float32[shape] (``out``: optional float32 buffer to fill, as in ``TensorRef.load``)."""
        return self._read(0, prod(self.shape), out).reshape(self.shape)

    @property
    def n_rows(self) -> int:
        """Rows of the tensor seen as float32[n_rows, shape[-1]] (1 for a vector)."""
        return prod(self.shape[:-1])

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """float32[stop - start, shape[-1]]: rows ``[start, stop)`` (leading dims flattened), as in
        ``TensorRef.load_rows``; only those rows' pages of the memory map are touched."""
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        cols = self.shape[-1] if self.shape else 1
        return self._read(start * cols, (stop - start) * cols, out).reshape(stop - start, cols)

    def _read(self, first: int, n: int, out: np.ndarray | None) -> np.ndarray:
        # plain reads, not the reader's memory map: mapped pages would stay resident (RSS ~ the whole file)
        from .hf import read_float32

        return read_float32(self.file, self.offset, self.qtype.name, first, n, out, self.name)


class GGUFSource:
    """A float GGUF: ``arch``, ``metadata`` (key -> (value, vtype, sub_type)), ``tensors`` (name -> ref)."""

    def __init__(self, path: str | Path):
        from gguf import GGUFReader

        self.path = Path(path)
        self.model_dir = self.path
        try:
            reader = GGUFReader(self.path, "r")
        except FileNotFoundError:
            raise SlimedgeError(f"{self.path}: no such file") from None
        except (ValueError, IndexError, OSError, struct_error(), KeyError) as exc:
            raise SlimedgeError(f"{self.path}: not a readable GGUF file ({exc}); re-download or re-convert it") from None
        self.metadata: dict[str, tuple] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key in _SKIP_KEYS:
                continue
            try:
                self.metadata[key] = _field_value(field)
            except (ValueError, IndexError) as exc:
                log.warning("%s: dropping metadata key %s (%s)", self.path, key, exc)
        arch_field = reader.fields.get(Keys.General.ARCHITECTURE)
        if arch_field is None:
            raise SlimedgeError(f"{self.path}: no general.architecture key; not a model GGUF")
        self.arch = bytes(arch_field.parts[arch_field.data[0]].tobytes()).decode("utf-8")
        self.tensors: dict[str, GGUFTensorRef] = {}
        quantized = []
        for t in reader.tensors:
            ref = GGUFTensorRef(t, self.path)
            if ref.qtype not in FLOAT_TYPES:
                quantized.append(ref)
            self.tensors[ref.name] = ref
        if quantized:
            kinds = sorted({r.qtype.name for r in quantized})
            raise SlimedgeError(
                f"{self.path}: already quantized ({', '.join(kinds)}, e.g. {quantized[0].name}); requantizing "
                f"compounds the error, so convert from the original F32/F16/BF16 model instead")
        self._reader = reader  # keeps the memory map alive

    @property
    def name(self) -> str:
        val = self.metadata.get(Keys.General.NAME)
        return val[0].decode("utf-8", "replace") if val else self.path.stem

    def meta(self, key: str, default=None):
        val = self.metadata.get(key.format(arch=self.arch))
        return default if val is None else val[0]


def struct_error():
    import struct

    return struct.error
