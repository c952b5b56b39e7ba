"""Architectures: one small module per family, each an :class:`~slimedge.arch.base.Arch` table.

Adding an architecture = adding one module and listing it in ``ARCH_MODULES``.
``get_arch(config)`` picks the class from ``config.json``'s ``architectures`` entry.
"""

from __future__ import annotations

from . import llama, mistral, phi3, qwen2  # noqa: F401  (importing registers them)
from . import gemma  # noqa: F401
from . import granite, olmo2, qwen3, smollm3  # noqa: F401
from . import lfm2, mixtral, qwen3moe  # noqa: F401
from .base import KV, Arch, HParams, OutTensor, get_arch, gguf_name, supported_architectures

ARCH_MODULES = (llama, mistral, qwen2, phi3, gemma, qwen3, smollm3, granite, olmo2, mixtral, qwen3moe, lfm2)

__all__ = ["Arch", "HParams", "KV", "OutTensor", "get_arch", "gguf_name", "supported_architectures"]
