"""Model sources, read lazily: a Hugging Face folder (``hf``) or a float GGUF file (``gguf_src``).

Both expose ``tensors`` (name -> :class:`~slimedge.source.base.TensorRef`, with ``shape``, ``where``,
``load() -> float32`` and ``load_rows``) so nothing is read before it is needed. Quantized Hugging Face
checkpoints (FP8, gpt-oss MXFP4, NVFP4: :mod:`.quantized`, :mod:`.fp4src`) expose the same references, which
dequantize row ranges as they are read or hand over their stored blocks (:mod:`.passthrough`). :func:`is_gguf` tells
which kind a path is. The submodules (numpy, gguf) load on first use of their names, so importing
this package stays light.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["HFSource", "GGUFSource", "TensorRef", "is_gguf", "load_config", "read_safetensors_header"]

_LAZY = {"HFSource": "hf", "load_config": "hf", "read_safetensors_header": "hf", "GGUFSource": "gguf_src",
         "TensorRef": "base"}


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` is (or, not existing yet, is named as) a GGUF file: a file starting with the
    ``GGUF`` magic, or a missing or unreadable path ending in ``.gguf``; a folder never is."""
    path = Path(path)
    if path.is_dir():
        return False
    if path.is_file():
        try:
            with open(path, "rb") as f:
                return f.read(4) == b"GGUF"
        except OSError:  # unreadable: judge by the name, so the reader names the problem
            pass
    return path.suffix.lower() == ".gguf"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
