"""``slimedge serve MODEL.gguf|BUNDLE``: llama-cpp-python's OpenAI-compatible server with a target's settings.

How: a bundle gives its model file, its runtime settings (the profile it was built for, context already
capped at the model's training context), its name and whether the GGUF carries a chat template; a bare
GGUF gets the runtime settings of ``--target`` (default ``cpu``) with the context capped the same way
(:func:`slimedge.memory.estimate`), and its own name and template from its metadata. The server itself
is :func:`slimedge.bundle.server_runtime.serve` — the same file a bundle carries beside its launcher, whose
``./run --serve`` runs it (both standalone, so bundles need no slimedge) — and its user errors become
:class:`SlimedgeError`. In front
of llama-cpp-python's app sits :mod:`slimedge.bundle.serve_guard` (malformed or out-of-range requests get
the 4xx an OpenAI-compatible server gives; settable body, max_tokens and concurrency limits). An embedding
model (manifest ``embedding``, or a GGUF that states a pooling type) is loaded for ``/v1/embeddings`` and its
generation endpoints answer one 400 line. A model with a vision projector (a bundle's ``mmproj``, or ``--mmproj
FILE`` beside a GGUF, checked to pair with it) takes OpenAI ``image_url`` content parts: data URLs; local files
only under ``--image-dir``; remote URLs only with ``--allow-remote-images`` (bundle/vision_runtime.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlimedgeError
from . import launcher, server_runtime

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
API_KEY_ENV = server_runtime.API_KEY_ENV
DEFAULT_PORT = server_runtime.DEFAULT_PORT


@dataclass
class ServedModel:
    model: Path  # the GGUF
    runtime: dict  # runtime settings (slimedge.targets.Runtime fields)
    name: str  # the id /v1/models lists
    has_template: bool  # the GGUF carries tokenizer.chat_template
    adapters: list = field(default_factory=list)  # (LoRA adapter GGUF, scale) applied after loading
    embedding: dict | None = None  # an embedding model's {"pooling", "normalize"}: /v1/embeddings only
    draft: dict | None = None  # the bundle's speculative draft {"path", "draft_max"} (launcher.draft_of)
    mmproj: Path | None = None  # the vision projector: chat messages may carry images


def resolve(path: str | Path, target: str | Path | None = None, mmproj: str | Path | None = None) -> ServedModel:
    """What to serve from a bundle folder or a GGUF file (``target``, ``mmproj``: only for a GGUF; a bundle has
    its own)."""
    path = Path(path)
    if path.is_dir() and mmproj is not None:
        raise SlimedgeError(f"{path}: a bundle serves its own vision projector; leave --mmproj out (or rebuild the "
                            "bundle with `slimedge build ... --mmproj FILE`)")
    if path.is_dir():
        from .manifest import read_manifest

        if target is not None:
            raise SlimedgeError(f"{path}: a bundle runs with the settings of the target it was built for; "
                                "leave --target out (or serve its model.gguf with --target)")
        m = read_manifest(path)
        model = path / m["model"]
        if not model.is_file():
            raise SlimedgeError(f"{model}: the bundle's model is missing; run `slimedge verify {path}`")
        return ServedModel(model, dict(m.get("runtime", {})), str(m.get("name") or path.name),
                           bool(m.get("chat_template")), launcher.adapters_of(m, path), m.get("embedding"),
                           launcher.draft_of(m, path), launcher.mmproj_of(m, path))
    if not path.is_file():
        raise SlimedgeError(f"{path}: not found; give a .gguf file or a bundle folder")
    from ..gguf_info import read_info
    from ..memory import estimate, shape_from_gguf
    from ..source import is_gguf
    from ..targets import load_target

    if not is_gguf(path):
        raise SlimedgeError(f"{path}: not a GGUF file; give a .gguf file or a bundle folder")
    tgt = load_target(target or "cpu")
    est = estimate(shape_from_gguf(path), tgt.runtime, hardware=tgt.hardware)
    runtime = dict(tgt.to_dict()["runtime"], n_ctx=est.n_ctx)
    meta = read_info(path).metadata
    if mmproj is not None:
        from .projector import pairing_problem

        problem = pairing_problem(path, Path(mmproj)) if Path(mmproj).is_file() else f"{mmproj}: no such mmproj file"
        if problem:
            raise SlimedgeError(problem)
    return ServedModel(path, runtime, str(meta.get("general.name") or path.stem),
                       bool(meta.get("tokenizer.chat_template")), embedding=launcher.embedding_of(meta),
                       mmproj=None if mmproj is None else Path(mmproj))


def serve(path: str | Path, *, host: str = LOOPBACK, port: int = DEFAULT_PORT, api_key: str | None = None,
          target: str | Path | None = None, n_ctx: int | None = None, n_gpu_layers: int | None = None,
          threads: int | None = None, verbose: bool = False, max_tokens_limit: int | None = None,
          max_body_bytes: int | None = None, max_concurrent: int | None = None, mmproj: str | Path | None = None,
          image_dir: str | Path | None = None, allow_remote_images: bool = False) -> None:
    """Serve ``path`` (GGUF or bundle) until SIGTERM/Ctrl-C; see the module docstring. The ``max_*``
    limits (None: the defaults of :class:`slimedge.bundle.serve_guard.Limits`) bound what one request
    may ask for and how many may wait; requests outside them get OpenAI-style 4xx answers."""
    try:
        server_runtime.check_host(host, api_key)  # refused before anything is read
    except server_runtime.ServeError as exc:
        raise SlimedgeError(str(exc)) from None
    sm = resolve(path, target, mmproj)
    if sm.mmproj is None and (image_dir is not None or allow_remote_images):
        raise SlimedgeError(f"{path}: --image-dir / --allow-remote-images need a model with a vision projector "
                            "(a bundle built from a vision-language model, or --mmproj FILE)")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise SlimedgeError(f"--image-dir {image_dir}: not a folder; give the folder local images may be read from")
    rt = sm.runtime
    log.info("serving %s (%s) on %s:%d, context %s, GPU layers %s", sm.name, sm.model, host, port,
             n_ctx or rt.get("n_ctx"), rt.get("n_gpu_layers") if n_gpu_layers is None else n_gpu_layers)
    try:
        server_runtime.serve(sm.model, rt, alias=sm.name, host=host, port=port, api_key=api_key, n_ctx=n_ctx,
                             n_gpu_layers=n_gpu_layers, threads=threads or rt.get("n_threads") or None,
                             has_template=sm.has_template, verbose=verbose, adapters=sm.adapters,
                             embedding=bool(sm.embedding), draft=sm.draft, mmproj=sm.mmproj,
                             image_dir=None if image_dir is None else Path(image_dir),
                             allow_remote_images=allow_remote_images,
                             limits=dict(max_tokens=max_tokens_limit, max_body_bytes=max_body_bytes,
                                         max_concurrent=max_concurrent))
    except server_runtime.ServeError as exc:
        raise SlimedgeError(str(exc)) from None
