"""LoRA adapters in a bundle: packed beside the model (role ``adapter``), checked against it, applied at run time.

``slimedge build ... --lora ADAPTER [--lora-scale S]`` (repeatable): each ADAPTER is a PEFT folder
(converted against the build's Hugging Face source with :func:`slimedge.adapter.convert_adapter`, F16) or an
adapter GGUF already converted (copied). The manifest lists each under ``adapters`` as
``{"file", "role": "adapter", "scale", "alpha", "architecture", "source"}``; the files are checksummed with the
rest. :func:`check_pairing` is what ``verify`` adds: each adapter is a LoRA GGUF of the model's architecture
whose every ``<tensor>.lora_a`` / ``.lora_b`` pair fits a tensor of the model (ggml: A [in, r], B [r, out]).
The launcher (``run``, ``serve``) applies them with llama.cpp's ``llama_set_adapters_lora`` at their scales.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import SlimedgeError

log = logging.getLogger(__name__)
ROLE = "adapter"
ADAPTER_TYPE = "f16"  # PEFT adapters converted by build: LoRA pairs are small, F16 keeps them near exact


def _info(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(metadata, tensor name -> ggml shape ne) of a GGUF, header only."""
    from ..gguf_info import read_info

    info = read_info(path)
    return info.metadata, {t.name: tuple(int(d) for d in reversed(t.shape)) for t in info.tensors}


def adapter_arch(path: Path) -> str:
    """The architecture an adapter GGUF is for; one-line error when ``path`` is not a LoRA adapter GGUF."""
    meta, _ = _info(path)
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise SlimedgeError(f"{path}: not a LoRA adapter GGUF (general.type {meta.get('general.type')!r}); give a "
                            f"PEFT adapter folder or a GGUF from `slimedge convert ADAPTER --base BASE`")
    return str(meta.get("general.architecture"))


def pack_adapters(src: Path, model: Path, loras, folder: Path) -> list[dict]:
    """Put each ``(path, scale)`` of ``loras`` into ``folder`` as ``adapter-<i>-<name>.gguf``, checked against
    ``model`` (the bundle's GGUF); returns the manifest entries."""
    from ..source import is_gguf

    entries = []
    for i, (path, scale) in enumerate(loras):
        path = Path(path)
        out = folder / f"adapter-{i}-{path.stem if path.is_file() else path.resolve().name}.gguf"
        if is_gguf(path):
            if not path.is_file():
                raise SlimedgeError(f"{path}: no such adapter file")
            shutil.copyfile(path, out)
        else:
            if is_gguf(src):
                raise SlimedgeError(f"{path}: a PEFT adapter is converted against its base's Hugging Face folder, "
                                    f"but the build's source is {src.name}; build from the HF folder or give the "
                                    f"adapter as a GGUF (slimedge convert ADAPTER --base BASE -o adapter.gguf)")
            from ..adapter import convert_adapter

            convert_adapter(path, src, out, ADAPTER_TYPE, overwrite=True)
        problem = pairing_problem(model, out, label=str(path))
        if problem:
            raise SlimedgeError(problem)
        meta, _ = _info(out)
        entries.append({"file": out.name, "role": ROLE, "scale": float(scale),
                        "alpha": float(meta.get("adapter.lora.alpha", 0.0)),
                        "architecture": str(meta.get("general.architecture")), "source": str(path.resolve())})
    return entries


def pairing_problem(model: Path, adapter: Path, label: str | None = None) -> str | None:
    """One line naming why ``adapter`` does not apply to ``model`` (another architecture, a tensor the model
    lacks, a shape that does not fit), or None."""
    label = label or str(adapter)
    try:
        arch = adapter_arch(adapter)
    except SlimedgeError as exc:
        return str(exc)
    mmeta, mtensors = _info(model)
    if arch != mmeta.get("general.architecture"):
        return (f"{label}: a LoRA adapter for {arch}, but the model is {mmeta.get('general.architecture')}; "
                f"it belongs to another base model")
    _, atensors = _info(adapter)
    for name, ne_a in atensors.items():
        if not name.endswith(".lora_a"):
            continue
        base = name[: -len(".lora_a")]
        ne_b, ne_w = atensors.get(base + ".lora_b"), mtensors.get(base)
        if ne_b is None:
            return f"{label}: {name} has no {base}.lora_b; the adapter is damaged, reconvert it"
        if ne_w is None:
            return f"{label}: changes {base}, which the model does not have; it belongs to another base model"
        emb = base.startswith("token_embd.")  # llama.cpp's embedding pair: A [r, vocab], B [r, dim]
        fits = (ne_w[0] == ne_b[1] and ne_w[1] == ne_a[1]) if emb else (ne_w[0] == ne_a[0] and ne_w[1] == ne_b[1])
        if not fits or ne_a[1 if not emb else 0] != ne_b[0]:
            return (f"{label}: {base} is {list(ne_w)} in the model but the adapter's pair is A {list(ne_a)}, "
                    f"B {list(ne_b)}; it belongs to another base model")
    return None


def check_pairing(bundle: Path, manifest: dict) -> list[str]:
    """``verify``'s problems with a bundle's adapters (one line each)."""
    problems = []
    for e in manifest.get("adapters", []):
        if not isinstance(e, dict) or not isinstance(e.get("file"), str):
            problems.append(f"{bundle / 'manifest.json'}: an 'adapters' entry is not {{file, scale}}; rebuild")
            continue
        path = bundle / e["file"]
        if not path.is_file():
            problems.append(f"{path}: missing (an adapter of the bundle); restore it or rebuild the bundle")
            continue
        problem = pairing_problem(bundle / manifest["model"], path)
        if problem:
            problems.append(problem)
    return problems


def modelfile_adapters(manifest: dict) -> list[tuple[str, float]]:
    """(file, scale) of each adapter, for the Modelfile's ``ADAPTER`` lines."""
    return [(e["file"], float(e.get("scale", 1.0))) for e in manifest.get("adapters", [])]


def add_to_estimate(manifest: dict, model: Path, folder: Path, target) -> None:
    """The bundle's memory estimate with its adapters' weights added (llama.cpp holds each LoRA pair in memory
    beside the model's tensors); refused with the numbers when that no longer fits ``target``."""
    from dataclasses import replace

    from ..memory import check_fits, estimate, shape_from_gguf

    n = sum((folder / e["file"]).stat().st_size for e in manifest.get("adapters", []))
    est = estimate(shape_from_gguf(model), target.runtime, hardware=target.hardware)
    est = replace(est, weights_ram=est.weights_ram + n)
    check_fits(est, target, what=f"{manifest['name']} with {len(manifest['adapters'])} LoRA adapter(s)")
    manifest["memory_estimate"] = dict(est.to_dict(), adapters_ram=n)
