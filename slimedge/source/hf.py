"""Read a Hugging Face model folder lazily: ``config.json`` plus safetensors weights.

How: each ``*.safetensors`` file starts with an 8-byte little-endian header length and a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` (offsets relative to the end of the header).
We parse that header ourselves (no torch) and accept F32, F16, BF16 and F64 tensors; each becomes a
:class:`SafetensorsRef` (a :class:`~slimedge.source.base.TensorRef`: plain reads at the tensor's offset
only when asked, whole or a range of rows, widened or narrowed to float32), so resident memory stays
near one slice of a tensor. Sharded checkpoints list their files in ``model.safetensors.index.json``.

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

from ..errors import SlimedgeError
from .base import STORAGE_DTYPES, TensorRef

log = logging.getLogger(__name__)

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header size
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.bin", "*.ckpt")


@dataclass(frozen=True)
class SafetensorsRef(TensorRef):
    """One tensor of a safetensors file (``dtype`` is the header's: "F32", "F16", "BF16" or "F64")."""

    nbytes: int  # bytes of data in the file


def read_safetensors_header(path: Path, raw: dict | None = None) -> dict[str, SafetensorsRef]:
    """Parse and validate one safetensors file's header: name -> :class:`SafetensorsRef` (file order).

    ``raw``: further dtypes accepted (name -> NumPy dtype), the quantized storage of a quantized checkpoint
    (:data:`slimedge.source.quantized.RAW_DTYPES`), read only through :mod:`slimedge.source.quantized`."""
    sizes = {**STORAGE_DTYPES, **(raw or {})}
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
    out: dict[str, SafetensorsRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SlimedgeError(f"{path}: corrupt safetensors entry for tensor {name}; re-download it") from None
        if dtype not in sizes:
            raise SlimedgeError(f"{path}: tensor {name} has dtype {dtype}; slimedge reads F32, F16, BF16 and "
                                f"F64 checkpoints (dequantize the model first)")
        nbytes = prod(shape) * sizes[dtype].itemsize
        if end - begin != nbytes or begin < 0:
            raise SlimedgeError(f"{path}: corrupt safetensors entry for tensor {name} "
                                f"({end - begin} bytes for shape {list(shape)} {dtype}); re-download it")
        if base + end > size:
            raise SlimedgeError(f"{path}: truncated: tensor {name} ends at byte {base + end} but the file has "
                                f"{size} bytes; re-download it")
        out[name] = SafetensorsRef(name, dtype, shape, path, base + begin, nbytes)
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
        # ... but the wrapper owns lm_head: its tie_word_embeddings decides (transformers writes the text
        # config's default, true, even for an untied Gemma3ForConditionalGeneration)
        top = {k: config[k] for k in ("tie_word_embeddings",) if k in config}
        config = {**config, **config["text_config"], **top}
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
    """A Hugging Face model folder: ``config`` (dict) and ``tensors`` (HF name -> :class:`SafetensorsRef`)."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        if not self.model_dir.exists():
            raise SlimedgeError(f"{self.model_dir}: no such folder")
        if not self.model_dir.is_dir():
            raise SlimedgeError(f"{self.model_dir}: expected a Hugging Face model folder or a .gguf file")
        self.config = load_config(self.model_dir)
        from .quantized import RAW_DTYPES, quantization_of, wrap

        self.quantization = quantization_of(self.config, self.model_dir)  # None, or FP8/MXFP4/NVFP4
        self.files = _weight_files(self.model_dir)
        self.tensors: dict[str, SafetensorsRef] = {}
        for f in self.files:
            for name, ref in read_safetensors_header(f, RAW_DTYPES if self.quantization else None).items():
                if name in self.tensors:
                    raise SlimedgeError(f"{f}: tensor {name} also appears in {self.tensors[name].file.name}")
                self.tensors[name] = ref
        if self.quantization is not None:  # quantized groups become lazy dequantizing (or passing) references
            self.tensors = wrap(self.tensors, self.quantization, self.model_dir)
        log.info("%s: %d tensors in %d file(s)", self.model_dir, len(self.tensors), len(self.files))

    @property
    def hub_repo(self) -> str | None:
        """``org/name`` when the folder is a snapshot in the Hugging Face cache."""
        from .hub import hub_repo_of

        return hub_repo_of(self.model_dir)

    @property
    def name(self) -> str:
        """The model's name: the Hub repo's (a cache snapshot is named after its commit), else the folder's."""
        repo = self.hub_repo
        return repo.split("/")[1] if repo else self.model_dir.resolve().name

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
