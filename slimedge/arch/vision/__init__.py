"""Vision projectors (llama.cpp's mmproj GGUF): one small module per family, each a :class:`Projector` table.

Adding a family = adding one module to this folder: its :class:`~.base.Projector` subclass registers the
Hugging Face ``architectures`` it handles where it is defined (a second registration of a name is refused),
and :func:`load_projectors` imports every module of the package the first time one is looked up. Modules
whose name starts with ``_`` are helpers (``_vit``: the shared ViT/SigLIP encoder rows).
``get_projector(config)`` gives the projector of a VLM checkpoint, or None (a text-only model, or a VLM
whose projector slimedge does not convert: :func:`is_vision_model` tells them apart).
"""

from __future__ import annotations

from .base import MMPROJ_TYPES, Projector, mmproj_type, registry

_LOADED = False


def load_projectors() -> None:
    """Import every family module of this package once (importing one registers its classes)."""
    global _LOADED
    if _LOADED:
        return
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
    _LOADED = True


def is_vision_model(config: dict) -> bool:
    """Whether a config.json describes a model with a vision tower (``vision_config``)."""
    return isinstance(config.get("vision_config"), dict)


def get_projector(config: dict, preprocessor: dict | None = None) -> Projector | None:
    """The projector for ``config``'s ``architectures[0]``, or None when it has none slimedge converts."""
    load_projectors()
    names = config.get("architectures")
    if not names or not isinstance(names, list) or not is_vision_model(config):
        return None
    cls = registry().get(names[0])
    return None if cls is None else cls(config, names[0], preprocessor)


def supported_projectors() -> list[str]:
    """HF architectures whose vision projector slimedge converts."""
    load_projectors()
    return sorted(registry())


__all__ = ["MMPROJ_TYPES", "Projector", "get_projector", "is_vision_model", "load_projectors", "mmproj_type",
           "supported_projectors"]
