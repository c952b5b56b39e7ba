"""Model sources, read lazily: a Hugging Face folder (``hf``) or a float GGUF file (``gguf_src``).

Both expose ``tensors`` (name -> ref with ``shape``, ``where`` and ``load() -> float32``) so nothing is
read before it is needed.
"""

from __future__ import annotations

from .gguf_src import GGUFSource
from .hf import HFSource, TensorRef, load_config, read_safetensors_header

__all__ = ["HFSource", "GGUFSource", "TensorRef", "load_config", "read_safetensors_header"]
