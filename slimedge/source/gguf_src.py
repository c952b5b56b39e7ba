"""An F32/F16/BF16 GGUF file as conversion source (to requantize it, e.g. F16 → Q4_K_M).

How: ``gguf.GGUFReader`` parses the header (metadata and tensor table) and is then dropped; the
metadata is carried over (minus the keys the new file sets itself: architecture, file type,
quantization version, alignment) and tensors keep their GGUF names. Each tensor is a
:class:`GGUFTensorRef` (a :class:`~slimedge.source.base.TensorRef`): its data is read with plain
reads at its offset (whole or a range of rows) when asked, never through a memory map, so resident
memory stays near one slice. The hyper-parameters come from :meth:`GGUFSource.model_info` (one reader:
``ModelInfo.from_metadata``). A file that is already quantized is refused: requantizing quantized
weights compounds the error, and the original float model gives a better result.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.types import FLOAT_TYPES
from .base import TensorRef

log = logging.getLogger(__name__)

# keys the output file writes itself
_SKIP_KEYS = {Keys.General.ARCHITECTURE, Keys.General.FILE_TYPE, Keys.General.QUANTIZATION_VERSION,
              Keys.General.ALIGNMENT}


def field_value(field):
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


@dataclass(frozen=True)
class GGUFTensorRef(TensorRef):
    """One tensor of the source GGUF (``dtype`` is its GGML type name; only float types are ever read)."""

    @classmethod
    def from_reader(cls, t, file: Path) -> "GGUFTensorRef":
        """From a ``gguf.GGUFReader`` tensor: GGUF ne order -> NumPy order, absolute data offset."""
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        return cls(t.name, T(t.tensor_type).name, shape, file, int(t.data_offset))

    @property
    def qtype(self) -> T:
        return T[self.dtype]


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
        except (ValueError, IndexError, OSError, struct.error, KeyError) as exc:
            raise SlimedgeError(f"{self.path}: not a readable GGUF file ({exc}); re-download or re-convert it") from None
        self.metadata: dict[str, tuple] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key in _SKIP_KEYS:
                continue
            try:
                self.metadata[key] = field_value(field)
            except (ValueError, IndexError) as exc:
                log.warning("%s: dropping metadata key %s (%s)", self.path, key, exc)
        arch_field = reader.fields.get(Keys.General.ARCHITECTURE)
        if arch_field is None:
            raise SlimedgeError(f"{self.path}: no general.architecture key; not a model GGUF")
        self.arch = bytes(arch_field.parts[arch_field.data[0]].tobytes()).decode("utf-8")
        self.tensors: dict[str, GGUFTensorRef] = {}
        quantized = []
        for t in reader.tensors:
            ref = GGUFTensorRef.from_reader(t, self.path)
            if ref.qtype not in FLOAT_TYPES:
                quantized.append(ref)
            self.tensors[ref.name] = ref
        if quantized:
            kinds = sorted({r.qtype.name for r in quantized})
            raise SlimedgeError(
                f"{self.path}: already quantized ({', '.join(kinds)}, e.g. {quantized[0].name}); requantizing "
                f"compounds the error, so convert from the original F32/F16/BF16 model instead")

    @property
    def name(self) -> str:
        val = self.metadata.get(Keys.General.NAME)
        return val[0].decode("utf-8", "replace") if val else self.path.stem

    def model_info(self):
        """The hyper-parameters (``slimedge.quant.model_info.ModelInfo``); one-line error naming a missing key."""
        from ..quant.model_info import ModelInfo

        values = {k: v[0] for k, v in self.metadata.items()}
        values[Keys.General.ARCHITECTURE] = self.arch
        return ModelInfo.from_metadata(values, where=str(self.path))
