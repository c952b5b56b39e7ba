"""Write a vision-language checkpoint's projector as llama.cpp's mmproj GGUF (read by libmtmd).

Public API::

    from slimedge.mmproj import convert_mmproj, plan_mmproj
    r = convert_mmproj("SmolVLM-256M", "mmproj-SmolVLM-256M-F16.gguf", mmproj_type="f16")
    print(plan_mmproj("SmolVLM-256M", "q8_0").table())     # types and sizes, no weights read

How: the checkpoint is opened lazily (``slimedge.source.hf``), its projector table
(``slimedge.arch.vision``) maps the vision tower's tensors to mmproj names and gives the ``clip.*`` keys and
each tensor's type (llama.cpp's converter rules: norms, biases, position embeddings F32, a few tensors forced
to F16/F32 per family). The writer (``slimedge.writer``) declares every tensor, then streams them one by one
(a projector is small: each tensor is read whole) into a temporary file renamed into place at the end.
The pairing keys (see ``slimedge/arch/vision/base.py``) tie the file to the text GGUF of the same checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, Keys

from . import __version__
from .arch.base import KV, STR, U32
from .errors import SlimedgeError
from .progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)


@dataclass
class MmprojResult:
    out: Path
    projector_type: str  # llama.cpp's, e.g. "gemma3"
    tensors: list[tuple[str, tuple[int, ...], GGMLQuantizationType]]  # GGUF name, NumPy shape, type
    seconds: float
    file_bytes: int


@dataclass
class MmprojPlan:
    """What :func:`convert_mmproj` would write: one type per tensor, no weights read."""

    source: Path
    projector_type: str
    mmproj_type: str
    tensors: list[tuple[str, tuple[int, ...], GGMLQuantizationType]]  # GGUF name, NumPy shape, type

    def table(self) -> str:
        from .quant.types import tensor_nbytes

        w = max((len(n) for n, _, _ in self.tensors), default=6)
        lines = [f"{'mmproj tensor':<{w}}  {'shape':>18}  {'type':<6} {'MB':>9}"]
        total = 0
        for name, shape, q in self.tensors:
            nbytes = tensor_nbytes(shape, q)
            total += nbytes
            lines.append(f"{name:<{w}}  {'x'.join(map(str, shape)):>18}  {q.name:<6} {nbytes / 1e6:9.2f}")
        lines.append(f"{len(self.tensors)} tensors, {total / 1e6:.2f} MB of tensor data ({self.projector_type} vision "
                     f"projector, --mmproj-type {self.mmproj_type})")
        return "\n".join(lines)


def default_mmproj_path(text_out: str | Path, name: str, mmproj_type: str = "f16") -> Path:
    """``mmproj-<name>-<TYPE>.gguf`` in the folder of the text model's output file."""
    return Path(text_out).parent / f"mmproj-{name}-{mmproj_type.upper()}.gguf"


def read_preprocessor(model_dir: Path) -> dict:
    """``preprocessor_config.json`` merged with ``processor_config.json``'s ``image_processor`` (as llama.cpp's
    converter reads them); {} when neither exists."""
    merged: dict = {}
    for fname, inner in (("preprocessor_config.json", "media_proc_cfg"), ("processor_config.json",
                                                                           "image_processor")):
        path = model_dir / fname
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise SlimedgeError(f"{path}: not readable JSON ({exc}); fix or re-download it") from None
        if not isinstance(cfg, dict):
            raise SlimedgeError(f"{path}: expected a JSON object")
        if isinstance(cfg.get(inner), dict):
            cfg = {**cfg, **cfg[inner]}
        merged.update(cfg)
    return merged


def projector_of(source):
    """The source's projector object, or a one-line error saying why there is none."""
    from .arch.vision import get_projector, is_vision_model, supported_projectors

    config = source.config
    hf_arch = (config.get("architectures") or ["?"])[0]
    if not is_vision_model(config):
        raise SlimedgeError(f"{source.model_dir}: {hf_arch} has no vision tower (no vision_config in "
                            f"config.json); there is no projector to convert")
    proj = get_projector(config, read_preprocessor(source.model_dir))
    if proj is None:
        raise SlimedgeError(f"{source.model_dir}: slimedge does not convert {hf_arch}'s vision projector; "
                            f"projectors: {', '.join(supported_projectors())}")
    return proj


def _vision_source(src: str | Path) -> Path | None:
    """``src``'s folder when it is a VLM whose projector slimedge writes; None otherwise (with a warning when it is
    a VLM whose projector is skipped: no module for it, or no preprocessor_config.json)."""
    from .arch.vision import get_projector, is_vision_model
    from .source import is_gguf
    from .source.hf import load_config
    from .source.hub import resolve_source

    path = resolve_source(src)
    if is_gguf(path) or not path.is_dir():
        return None
    config = load_config(path)
    if not is_vision_model(config):
        return None
    hf_arch = (config.get("architectures") or ["?"])[0]
    proj = get_projector(config, read_preprocessor(path))
    if proj is None:
        log.warning("%s: the text model is written; %s's vision projector is skipped (slimedge does not convert "
                    "it yet)", path, hf_arch)
        return None
    try:
        proj.image_mean_std()
    except SlimedgeError as exc:  # a checkpoint saved without its processor: the text model still converts
        log.warning("%s; the text model is written, the vision projector skipped", exc)
        return None
    return path


def mmproj_beside(src: str | Path, text_out: str | Path, mmproj_type: str = "f16", *, overwrite: bool = False,
                  progress: Progress = NULL_PROGRESS, threads: int | None = None):
    """For ``convert``: checks now, before the text model is written (the type, the output path), and returns
    a function writing ``src``'s projector to ``mmproj-<name>-<TYPE>.gguf`` beside ``text_out`` (-> its
    :class:`MmprojResult`); None when ``src`` has no vision tower, or a projector slimedge does not convert, or
    no preprocessor_config.json (then a warning says the projector was skipped)."""
    from .arch.vision import mmproj_type as parse_type
    from .source.hf import HFSource
    from .writer import check_output_path

    parse_type(mmproj_type)
    path = _vision_source(src)
    if path is None:
        return None
    out = check_output_path(default_mmproj_path(text_out, HFSource(path).name, mmproj_type), overwrite)
    return lambda: convert_mmproj(path, out, mmproj_type, overwrite=overwrite, progress=progress, threads=threads)


def plan_mmproj(src: str | Path, mmproj_type: str = "f16") -> MmprojPlan | None:
    """For ``convert --dry-run``: the projector's tensors and types, or None when ``src`` has none to write."""
    from .arch.vision import mmproj_type as parse_type

    parse_type(mmproj_type)
    path = _vision_source(src)
    if path is None:
        return None
    _, proj, tensors, types = _mapped(path, mmproj_type)
    return MmprojPlan(path, proj.projector_type, mmproj_type,
                      [(t.name, t.shape, q) for t, q in zip(tensors, types)])


def _mapped(model_dir: Path, mmproj_type: str):
    """(source, projector, output tensors, their types); reads no weights."""
    from .arch.vision import mmproj_type as parse_type
    from .source.hf import HFSource

    requested, _ = parse_type(mmproj_type)
    source = HFSource(model_dir)
    proj = projector_of(source)
    tensors = proj.tensors(source)
    return source, proj, tensors, [proj.out_type(proj.hf_of[t.name], t.name, t.shape, requested) for t in tensors]


def _text_arch(config: dict) -> str | None:
    from .arch import get_arch

    try:
        return get_arch(config).arch
    except SlimedgeError:
        return None


def convert_mmproj(model_dir: str | Path, out: str | Path, mmproj_type: str = "f16", *, overwrite: bool = False,
                   progress: Progress = NULL_PROGRESS, threads: int | None = None) -> MmprojResult:
    """Write ``model_dir``'s vision projector to ``out`` with tensors of ``mmproj_type`` (f32/f16/bf16/q8_0)
    where llama.cpp's converter would use that type."""
    from .arch.vision import mmproj_type as parse_type
    from .source.card import general_metadata
    from .writer import GGUFStreamWriter, check_output_path

    t0 = time.monotonic()
    _, ftype = parse_type(mmproj_type)
    out = check_output_path(Path(out), overwrite)
    from .source.hub import resolve_source

    source, proj, tensors, types = _mapped(resolve_source(model_dir), mmproj_type)  # a folder or a cached Hub id
    dtypes = ",".join(sorted({ref.dtype for ref in source.tensors.values()}))
    kv = [KV(Keys.General.TYPE, "mmproj", STR), KV(Keys.General.NAME, source.name, STR),
          KV("slimedge.version", __version__, STR), KV("slimedge.source.architecture", proj.hf_arch, STR),
          KV("slimedge.source.dtype", dtypes, STR)]
    text_arch = _text_arch(source.config)
    if text_arch:
        kv.append(KV("slimedge.mmproj.text_arch", text_arch, STR))
    kv += general_metadata(source.model_dir, [(t.name, t.shape) for t in tensors], source.hub_repo)
    kv.append(KV(Keys.General.FILE_TYPE, ftype, U32))
    kv += proj.metadata() + [KV(Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION, U32)]  # llama.cpp's order

    from .quant import quantize

    with GGUFStreamWriter(out, "clip", overwrite=overwrite) as w:
        for e in kv:
            w.add_kv(e.key, e.value, e.vtype, e.sub_type)
        for t, q in zip(tensors, types):
            w.add_tensor_info(t.name, t.shape, q)
        w.begin_data()
        progress.start(len(tensors), desc=f"mmproj {source.name}")
        try:
            for t, q in zip(tensors, types):
                x = t.load()
                if tuple(x.shape) != tuple(t.shape):
                    raise SlimedgeError(f"{t.origin}: has shape {list(x.shape)}, expected {list(t.shape)}")
                if not np.isfinite(x).all():
                    raise SlimedgeError(f"{t.origin}: NaN/Inf values in the weights; the checkpoint is damaged "
                                        f"(re-download or re-export it)")
                data = x if q == GGMLQuantizationType.F32 else quantize(x, q, threads=threads, what=t.name)
                w.write_tensor(t.name, data)
                progress.update(1, label=t.name)
        finally:
            progress.close()
    size = out.stat().st_size
    log.info("%s: %s projector, %d tensors, %.1f MB", out, proj.projector_type, len(tensors), size / 1e6)
    return MmprojResult(out, proj.projector_type, [(t.name, t.shape, q) for t, q in zip(tensors, types)],
                        time.monotonic() - t0, size)
