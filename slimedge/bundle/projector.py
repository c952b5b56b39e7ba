"""A vision projector in a bundle (role ``mmproj``): packed beside the model, paired with it, in the estimate.

``slimedge build VLM_DIR`` converts the projector of a vision-language checkpoint with
:func:`slimedge.mmproj.convert_mmproj` (``--mmproj-type``, default f16; ``--no-mmproj`` leaves it out);
``slimedge build model.gguf --mmproj FILE`` (or an HF folder with ``--mmproj FILE``) copies a projector GGUF
already converted (slimedge's or llama.cpp's ``convert_hf_to_gguf.py --mmproj``). The file is ``mmproj.gguf``,
checksummed with the rest; the manifest's ``mmproj`` entry is ``{"file", "role": "mmproj", "projector_type",
"file_type", "image_size", "n_embd", "tokens_per_image", "source"}``.

Pairing (:func:`pairing_problem`, what ``verify`` and ``build`` check): the mmproj is llama.cpp's (``general.
architecture = clip``, ``general.type = mmproj``, a vision encoder); its ``clip.vision.projection_dim`` equals
the text model's ``{arch}.embedding_length`` (libmtmd refuses any other pair at load); and where both files carry
slimedge's identity keys (an mmproj slimedge wrote, see :mod:`slimedge.arch.vision.base`: ``general.name``, ``slimedge.source.architecture``,
``slimedge.source.dtype`` and the mmproj's ``slimedge.mmproj.text_arch`` = the model's architecture) they agree.
The memory estimate adds the projector's weights and its encoder's scratch for one image
(:func:`slimedge.memory.projector_memory`) and records the image tokens against the profile's context.
A release folder (:mod:`.release`) carries the projector as ``mmproj-<name>-<TYPE>.gguf`` (the Hub's naming)
with the same entry, paired with every type's file.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import SlimedgeError

log = logging.getLogger(__name__)
ROLE = "mmproj"
MMPROJ_FILE = "mmproj.gguf"
IDENTITY = ("general.name", "slimedge.source.architecture", "slimedge.source.dtype")  # in both files
TEXT_ARCH = "slimedge.mmproj.text_arch"  # the mmproj's: the text GGUF's general.architecture


def is_mmproj(meta: dict) -> bool:
    return meta.get("general.architecture") == "clip" and meta.get("general.type", "mmproj") == "mmproj"


def projector_facts(path: Path) -> dict:
    """What the manifest, ``inspect`` and the pairing need of an mmproj GGUF; one line when it is not one."""
    from ..gguf_info import read_info

    info = read_info(path)
    meta = info.metadata
    if not is_mmproj(meta):
        raise SlimedgeError(f"{path}: not a vision projector (mmproj) GGUF (general.architecture "
                            f"{meta.get('general.architecture')!r}); give the mmproj file llama.cpp's or slimedge's "
                            "converter wrote (slimedge convert VLM_DIR writes mmproj-<name>-F16.gguf)")
    if not meta.get("clip.has_vision_encoder"):
        raise SlimedgeError(f"{path}: an mmproj without a vision encoder (audio only?); slimedge bundles images only")
    return {"projector_type": str(meta.get("clip.projector_type") or meta.get("clip.vision.projector_type")),
            "file_type": info.file_type_name, "image_size": int(meta.get("clip.vision.image_size", 0)),
            "n_embd": int(meta.get("clip.vision.projection_dim", 0)), "name": meta.get("general.name"),
            "text_arch": meta.get(TEXT_ARCH), "meta": meta, "info": info}


def pairing_problem(model: Path, mmproj: Path, label: str | None = None) -> str | None:
    """One line naming why ``mmproj`` is not ``model``'s projector, or None when they pair."""
    from ..gguf_info import read_info

    label = label or str(mmproj)
    try:
        facts = projector_facts(mmproj)
    except SlimedgeError as exc:
        return str(exc)
    mmeta = read_info(model).metadata
    arch = mmeta.get("general.architecture")
    width = mmeta.get(f"{arch}.embedding_length")
    whose = f"{facts['name'] or 'another model'}" + (f" ({facts['text_arch']})" if facts["text_arch"] else "")
    if facts["n_embd"] != width:
        return (f"{label}: projects images to {facts['n_embd']} wide embeddings but {model.name} ({arch}) is "
                f"{width} wide; it is the projector of {whose}, not of this model: give the mmproj converted "
                "from the same checkpoint")
    pmeta = facts["meta"]
    slimedge_made = TEXT_ARCH in pmeta  # another converter's mmproj (llama.cpp's) has only the width to check
    keys = [k for k in IDENTITY if slimedge_made and k in pmeta and k in mmeta] + [TEXT_ARCH] * slimedge_made
    for k in keys:
        mine = arch if k == TEXT_ARCH else mmeta[k]
        if pmeta[k] != mine:
            return (f"{label}: {k} is {pmeta[k]!r} but {model.name}'s is {mine!r}; it is the projector of {whose}, "
                    "not of this model: give the mmproj converted from the same checkpoint")
    return None


def has_projector(src: Path) -> bool:
    """An HF folder whose checkpoint has a vision tower slimedge converts, with the preprocessor_config.json it
    needs; a VLM whose projector is skipped gets ``slimedge convert``'s warning saying why."""
    from ..mmproj import _vision_source

    return src.is_dir() and _vision_source(src) is not None


def pack_mmproj(src: Path, model: Path, mmproj: Path | None, folder: Path, mmproj_type: str = "f16",
                progress=None) -> dict | None:
    """``folder/mmproj.gguf`` from ``mmproj`` (copied) or converted from ``src`` (a VLM folder); checked against
    ``model``; returns the manifest entry, or None when there is no projector to bundle."""
    out = folder / MMPROJ_FILE
    if mmproj is not None:
        if not Path(mmproj).is_file():
            raise SlimedgeError(f"{mmproj}: no such mmproj file; give the projector GGUF of the model")
        projector_facts(Path(mmproj))  # not an mmproj: one line before copying
        shutil.copyfile(mmproj, out)
        origin = str(Path(mmproj).resolve())
    elif has_projector(src):
        from ..mmproj import convert_mmproj

        kw = {"progress": progress} if progress is not None else {}
        convert_mmproj(src, out, mmproj_type=mmproj_type, **kw)
        origin = str(src.resolve())
    else:
        return None
    problem = pairing_problem(model, out, label=str(mmproj or src))
    if problem:
        raise SlimedgeError(problem)
    facts = projector_facts(out)
    return {"file": MMPROJ_FILE, "role": ROLE, "projector_type": facts["projector_type"],
            "file_type": facts["file_type"], "image_size": facts["image_size"], "n_embd": facts["n_embd"],
            "source": origin}


def check_pairing(bundle: Path, manifest: dict) -> list[str]:
    """``verify``'s problems with a bundle's (or a release folder's) projector (one line each)."""
    e = manifest.get("mmproj")
    if not isinstance(e, dict) or not isinstance(e.get("file"), str) or "/" in e["file"] or ".." in e["file"]:
        return [f"{bundle / 'manifest.json'}: the 'mmproj' entry is not {{file, ...}}; rebuild the bundle"]
    path = bundle / e["file"]
    if not path.is_file():
        return [f"{path}: missing (the bundle's vision projector); restore it or rebuild the bundle"]
    if manifest.get("format") == "slimedge-release":  # a release: the projector of every type's file
        return [p for p in (pairing_problem(bundle / m["file"], path) for m in manifest["models"]) if p]
    if not (bundle / "vision_runtime.py").is_file():
        return [f"{bundle / 'vision_runtime.py'}: missing (the launcher's image handling); rebuild the bundle"]
    problem = pairing_problem(bundle / manifest["model"], path)
    return [problem] if problem else []


def add_to_estimate(manifest: dict, folder: Path, target) -> None:
    """The bundle's memory estimate (``manifest["memory_estimate"]``, with whatever adapters or draft it holds)
    plus the projector (:func:`estimate_with_projector`); records tokens per image in the ``mmproj`` entry.
    Refused with the numbers when that no longer fits ``target``."""
    e = manifest["mmproj"]
    manifest["memory_estimate"] = estimate_with_projector(
        manifest["memory_estimate"], projector_facts(folder / e["file"]), int(manifest["hyperparameters"]["n_embd"]),
        target, what=f"{manifest['name']} with its vision projector")
    e["tokens_per_image"] = manifest["memory_estimate"]["mmproj"]["tokens_per_image"]


def estimate_with_projector(old: dict, facts: dict, n_embd_text: int, target, what: str | None = None) -> dict:
    """A model's memory estimate (a :class:`slimedge.memory.MemoryEstimate` dict, extra keys kept) plus the
    projector of ``facts`` (:func:`slimedge.memory.projector_memory`: weights, encoder scratch) on the device the
    model's layers run on, with an ``mmproj`` part: tokens per image and how many images the context holds.
    ``what``: refuse with the numbers (naming it) when the sum no longer fits ``target``."""
    from dataclasses import fields

    from ..memory import MemoryEstimate, TensorSize, check_fits, projector_memory

    # libmtmd (llama-cpp-python's handler) attends with flash attention only when the model's context has it
    # switched on explicitly (a profile's flash_attn = true), not under llama.cpp's "auto"
    pm = projector_memory(facts["meta"], [TensorSize(t.name, t.n_bytes) for t in facts["info"].tensors],
                          n_embd_text, flash_attn=target.runtime.flash_attn is True)
    est = MemoryEstimate(**{f.name: old[f.name] for f in fields(MemoryEstimate)})
    gpu = est.n_gpu_layers != 0  # libmtmd runs the encoder on the GPU whenever the model uses one
    est.weights_vram += pm.weights if gpu else 0
    est.compute_vram += pm.compute if gpu else 0
    est.weights_ram += 0 if gpu else pm.weights
    est.compute_ram += 0 if gpu else pm.compute
    if what is not None:
        check_fits(est, target, what=what)
    extra = {k: v for k, v in old.items() if k not in est.to_dict()}
    return dict(est.to_dict(), **extra, mmproj={
        "weights": pm.weights, "compute": pm.compute, "tokens_per_image": pm.tokens_per_image,
        "images_per_context": est.n_ctx // pm.tokens_per_image, "on_gpu": gpu})


def server_command(manifest: dict) -> str:
    """llama.cpp's own server with the bundle's model and projector."""
    return f"llama-server -m {manifest['model']} --mmproj {manifest['mmproj']['file']}"
