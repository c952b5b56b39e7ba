"""Architectures: one small module per family, each an :class:`~slimedge.arch.base.Arch` table.

Adding an architecture = adding one module to this folder: its :class:`Arch` subclass registers its
Hugging Face names where it is defined (``Arch.__init_subclass__``), and :func:`load_families` imports
every module of the package the first time an architecture is looked up, so there is no list to edit.
Modules whose name starts with ``_`` are helpers, not families; shared rows live in ``base.py`` and the
family they come from (``llama.LLAMA_TENSORS``, ``moe.MoEArch``, ...).
``get_arch(config)`` picks the class from ``config.json``'s ``architectures`` entry.
"""

from __future__ import annotations

from .base import KV, Arch, HParams, OutTensor, get_arch, gguf_name, load_families, supported_architectures

__all__ = ["Arch", "HParams", "KV", "OutTensor", "get_arch", "gguf_name", "load_families",
           "supported_architectures"]
