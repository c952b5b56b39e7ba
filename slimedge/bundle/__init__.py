"""Bundles: a model plus everything needed to run it on one target device.

A bundle folder holds ``model.gguf``, ``manifest.json`` (checksums, target, quantization, memory
estimate, bench results), ``run`` (a llama-cpp-python launcher), ``Modelfile`` (Ollama) and
``README.md``. :func:`build_bundle` writes one, :func:`verify_bundle` checks one,
:func:`write_archive` / :func:`unpack_archive` pack and safely unpack ``.tar.gz`` copies.
:func:`build_release` writes a Hub-style release folder (one GGUF per type, model card), :func:`serve`
runs the OpenAI-compatible server; ``slimedge report`` (:mod:`.report`) adds device measurements to the card.
"""

from __future__ import annotations

__all__ = ["build_bundle", "verify_bundle", "write_archive", "unpack_archive", "record_bench", "build_release",
           "serve"]


def __getattr__(name: str):
    if name in ("build_bundle", "record_bench"):
        from . import build

        return getattr(build, name)
    if name == "verify_bundle":
        from .verify import verify_bundle

        return verify_bundle
    if name == "build_release":
        from .release import build_release

        return build_release
    if name == "serve":
        from .serve import serve

        return serve
    if name in ("write_archive", "unpack_archive"):
        from . import archive

        return getattr(archive, name)
    raise AttributeError(name)
