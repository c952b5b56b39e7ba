"""A release folder a Hugging Face Hub user recognises: ``slimedge build SRC --types Q8_0,Q4_K_M,... -o DIR``.

What it holds: one GGUF per type named the Hub way (``Model-Name-Q4_K_M.gguf``), an Ollama ``Modelfile``
(for the target's default type, or the first one), ``manifest.json`` (format ``slimedge-release``: source
files with sha256, the target profile, per-file type, size, bits per weight, tensor types, memory
estimate for the target and — with ``text`` — perplexity and KL divergence vs the unquantized model;
every file's size and sha256) and a ``README.md`` model card with Hub front matter
(:func:`slimedge.bundle.card.render_release_card`). A vision-language source also gives its projector once,
``mmproj-<Name>-F16.gguf`` (``mmproj_type``; ``no_mmproj`` leaves it out), which pairs with every type's file
(the manifest's ``mmproj`` entry, the per-type estimates include it, the Modelfile's second ``FROM``, LM Studio's
folder holds it beside the models; llama-server ``-hf`` fetches it with the model).

How: every type is checked (headers only) before any conversion; each GGUF is converted straight from
the source (one streaming pass per type, :func:`slimedge.convert.convert`) into a hidden temporary
folder that is renamed into place only when complete (:mod:`slimedge.publish`). With ``text`` the
unquantized reference is converted once (:func:`slimedge.bench.runner.ref_to_gguf`) and each file is
scored against it through llama.cpp (:func:`slimedge.bench.run_bench`). ``lmstudio=DIR`` also lays the
GGUFs out as LM Studio wants them, ``DIR/<publisher>/<Name>-GGUF/<file>.gguf`` (hard links where the
file system allows, copies otherwise). The card's ``license`` comes from the source: a Hub folder's
README front matter, or a GGUF's ``general.license``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .. import __version__
from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..publish import Publication
from ..targets import Target, load_target
from .manifest import MANIFEST, list_files, write_json_atomic

log = logging.getLogger(__name__)

RELEASE_FORMAT = "slimedge-release"
RELEASE_FORMAT_VERSION = 1
DEFAULT_QUANTIZED_BY = "slimedge"


def model_name(src: Path) -> str:
    """The name files are called after: the Hub repo's (from a hub cache path ``models--ORG--NAME``), the
    folder's, or a GGUF's stem without a trailing type."""
    from ..source.hub import hub_repo_of

    repo = hub_repo_of(src)
    name = repo.split("/")[-1] if repo else (src.name if src.is_dir() else
                                             re.sub(r"[-._](f32|f16|bf16)$", "", src.stem, flags=re.I))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def gguf_file_name(name: str, qtype: str) -> str:
    return f"{name}-{qtype.upper()}.gguf"


def front_matter(text: str) -> dict:
    """The YAML front matter of a model card (``---`` ... ``---``); {} when absent or unreadable."""
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not m:
        return {}
    try:
        import yaml

        data = yaml.safe_load(m.group(1))
        return data if isinstance(data, dict) else {}
    except ImportError:  # PyYAML absent (it comes with the serve extra): top-level scalars only
        return {k.strip(): v.strip().strip("'\"") for k, _, v in (ln.partition(":") for ln in m.group(1).splitlines())
                if v.strip() and not ln.startswith((" ", "-", "#"))}
    except Exception:  # a malformed card is no reason to refuse the build
        return {}


def source_facts(src: Path) -> dict:
    """``base_model`` (Hub id when known) and ``license`` of the source, as far as it says."""
    from ..source.hub import hub_repo_of

    base = hub_repo_of(src) or model_name(src)
    if src.is_file():
        from ..gguf_info import read_info

        meta = read_info(src).metadata
        return {"base_model": str(meta.get("general.base_model.0.repo_url") or base).removeprefix("https://huggingface.co/"),
                "license": meta.get("general.license")}
    card = src / "README.md"
    fm = front_matter(card.read_text(encoding="utf-8", errors="replace")) if card.is_file() else {}
    lic = fm.get("license")
    return {"base_model": base, "license": str(lic) if lic else None,
            "license_name": fm.get("license_name"), "license_link": fm.get("license_link")}


def _types(types: str | list[str]) -> list[str]:
    out = []
    for t in (types.split(",") if isinstance(types, str) else types):
        t = t.strip().upper()
        if t and t not in out:
            out.append(t)
    if not out:
        raise SlimedgeError("--types: give one or more types separated by commas, e.g. Q8_0,Q6_K,Q4_K_M,Q3_K_M")
    if {"AUTO", "FIT"} & set(out):
        raise SlimedgeError("--types: 'auto' and 'fit' pick one type for a bundle; a release names its types")
    return out


def _quantized(src: Path) -> bool:
    from ..gguf_info import read_info
    from ..quant.types import FLOAT_TYPE_NAMES

    return bool({t.type for t in read_info(src).tensors if len(t.shape) >= 2} - FLOAT_TYPE_NAMES)


def build_release(src: str | Path, target: str | Path | Target, out_dir: str | Path, types: str | list[str], *,
                  text: str | Path | None = None, lmstudio: str | Path | None = None, base_model: str | None = None,
                  quantized_by: str | None = None, overwrite: bool = False, threads: int | None = None,
                  progress: Progress = NULL_PROGRESS, imatrix: str | Path | None = None, mmproj_type: str = "f16",
                  no_mmproj: bool = False) -> Path:
    """Write a release folder of ``src`` with one GGUF per type (see module docstring); returns ``out_dir``.
    ``imatrix``: an importance matrix for the quantizers of every type (``convert --imatrix``). ``mmproj_type``
    (f16, bf16, q8_0, f32): the vision projector's, for a vision-language source; ``no_mmproj``: text only."""
    from ..source.hub import resolve_source
    from .build import _check_paths, planned_shape, quant_spec

    src, out = resolve_source(src), Path(out_dir)
    tgt = target if isinstance(target, Target) else load_target(target)
    qtypes = _types(types)
    _check_paths(src, out, overwrite)
    if text is not None and not Path(text).is_file():
        raise SlimedgeError(f"{text}: --text file not found")
    if src.is_file() and _quantized(src):
        raise SlimedgeError(f"{src}: already quantized; a release converts from the float (F16/F32) GGUF or the "
                            "Hugging Face folder")
    for t in qtypes:  # unknown types and unsupported models are refused before any conversion
        planned_shape(src, quant_spec(tgt, t))
    vision = not no_mmproj and _has_projector(src, mmproj_type)
    name = model_name(src)
    facts = source_facts(src)
    if base_model:
        facts["base_model"] = base_model
    by = quantized_by or DEFAULT_QUANTIZED_BY

    out.parent.mkdir(parents=True, exist_ok=True)
    pub = Publication(out, folder=True, overwrite=overwrite)
    try:
        from ..convert import convert

        files = []
        for t in qtypes:
            path = pub.path / gguf_file_name(name, t)
            convert(src, path, quant_spec(tgt, t), threads=threads, overwrite=True, progress=progress, imatrix=imatrix)
            files.append((t, path))
        entries = [_entry(t, p, tgt) for t, p in files]
        mm = _projector(src, name, mmproj_type, files, entries, tgt, threads, progress) if vision else None
        ref = _measure(src, files, entries, Path(text), tgt, threads, progress) if text is not None else None
        manifest = _manifest(src, tgt, name, facts, by, entries, ref, pub.path / files[0][1].name)
        if mm is not None:
            manifest["mmproj"] = mm
        _write_files(pub.path, manifest, tgt)
        pub.commit()
    except BaseException:
        pub.abort()
        raise
    if lmstudio is not None:
        lay_out_lmstudio(out, Path(lmstudio), publisher=by, overwrite=overwrite)
    log.info("release %s: %s", out, ", ".join(qtypes))
    return out


def _entry(qtype: str, path: Path, tgt: Target) -> dict:
    from ..gguf_info import read_info
    from ..memory import estimate, fits, shape_from_gguf
    from .build import _tensor_types

    info = read_info(path)
    est = estimate(shape_from_gguf(path), tgt.runtime, hardware=tgt.hardware)
    return {"file": path.name, "type": qtype, "file_type": info.file_type_name, "size": path.stat().st_size,
            "model_size": info.total_tensor_bytes, "n_params": info.n_params, "bpw": info.bpw,
            "tensor_types": _tensor_types(info), "memory_estimate": est.to_dict(), "fits_target": fits(est, tgt),
            "perplexity": None, "kld_mean": None, "top1_agreement": None}


def _has_projector(src: Path, mmproj_type: str) -> bool:
    """A vision-language HF folder whose projector slimedge converts (the type checked before any conversion)."""
    from ..arch.vision import mmproj_type as parse_type
    from .projector import has_projector

    parse_type(mmproj_type)
    return has_projector(src)


def _projector(src: Path, name: str, mmproj_type: str, files, entries: list[dict], tgt: Target, threads,
               progress) -> dict:
    """``mmproj-<name>-<TYPE>.gguf`` beside the type files, paired with each; every entry's estimate gains it."""
    from dataclasses import fields

    from ..gguf_info import read_info
    from ..memory import MemoryEstimate, fits
    from ..mmproj import convert_mmproj, default_mmproj_path
    from .projector import ROLE, estimate_with_projector, pairing_problem, projector_facts

    out = default_mmproj_path(files[0][1], name, mmproj_type)
    convert_mmproj(src, out, mmproj_type, overwrite=True, progress=progress, threads=threads)
    for _, path in files:
        problem = pairing_problem(path, out)
        if problem:  # both come from the same checkpoint: a converter bug, not a user error
            raise RuntimeError(problem)
    facts = projector_facts(out)
    for (_, path), e in zip(files, entries):
        meta = read_info(path).metadata
        n_embd = int(meta[f"{meta['general.architecture']}.embedding_length"])
        e["memory_estimate"] = estimate_with_projector(e["memory_estimate"], facts, n_embd, tgt)
        est = MemoryEstimate(**{f.name: e["memory_estimate"][f.name] for f in fields(MemoryEstimate)})
        e["fits_target"] = fits(est, tgt)
    pm = entries[0]["memory_estimate"]["mmproj"]
    return {"file": out.name, "role": ROLE, "projector_type": facts["projector_type"],
            "file_type": facts["file_type"], "type": mmproj_type.upper(), "image_size": facts["image_size"],
            "n_embd": facts["n_embd"], "tokens_per_image": pm["tokens_per_image"], "size": out.stat().st_size,
            "weights": pm["weights"], "compute": pm["compute"], "source": str(src.resolve())}


def _measure(src: Path, files, entries, text: Path, tgt: Target, threads, progress) -> dict:
    """Perplexity and KL divergence of every file vs the unquantized model (converted once), through llama.cpp."""
    from ..bench import run_bench
    from ..bench.runner import ref_to_gguf

    ctx = tgt.bench.ppl_ctx
    with tempfile.TemporaryDirectory(prefix="slimedge-release-ref-") as td:
        ref = ref_to_gguf(src, Path(td), threads, progress)
        ref_ppl = None
        for (_, path), entry in zip(files, entries):
            rec = run_bench(path, ref=ref, text=text, n_ctx=ctx, n_threads=threads, speed=False,
                            flash_attn=tgt.runtime.flash_attn, progress=progress)
            entry.update(perplexity=rec["perplexity"], kld_mean=rec["kld_mean"], top1_agreement=rec["top1_agreement"])
            ref_ppl = rec["ref_perplexity"]
    return {"text": text.name, "n_ctx": ctx, "reference": "F32" if "f32" in ref.name else
            ("F16" if "f16" in ref.name else ref.name), "ref_perplexity": ref_ppl,
            "flash_attn": {True: "on", False: "off", None: "auto"}[tgt.runtime.flash_attn]}


def _manifest(src: Path, tgt: Target, name: str, facts: dict, by: str, entries: list[dict], ref: dict | None,
              first: Path) -> dict:
    from ..gguf_info import read_info
    from .build import source_files

    meta = read_info(first).metadata
    return {
        "format": RELEASE_FORMAT, "format_version": RELEASE_FORMAT_VERSION, "slimedge_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "name": name,
        "base_model": facts["base_model"], "license": facts.get("license"), "license_name": facts.get("license_name"),
        "license_link": facts.get("license_link"), "quantized_by": by,
        "source": {"path": str(src.resolve()), "kind": "gguf" if src.is_file() else "hf", "files": source_files(src)},
        "architecture": meta.get("general.architecture"), "target": tgt.to_dict(),
        "runtime": dict(tgt.to_dict()["runtime"], n_ctx=min(e["memory_estimate"]["n_ctx"] for e in entries)),
        "chat_template": meta.get("tokenizer.chat_template"), "models": entries, "quality": ref,
        "modelfile_model": _default_file(entries, tgt), "files": [],
    }


def _default_file(entries: list[dict], tgt: Target) -> str:
    want = tgt.quantization.type.upper()
    return next((e["file"] for e in entries if e["type"] == want), entries[0]["file"])


def _write_files(folder: Path, manifest: dict, tgt: Target) -> None:
    from .card import render_release_card
    from .modelfile import chat_family, render_modelfile

    manifest["chat_format"] = chat_family(manifest.get("chat_template"))
    mmproj = (manifest.get("mmproj") or {}).get("file")
    (folder / "Modelfile").write_text(render_modelfile(manifest["modelfile_model"], manifest["runtime"],
                                                       manifest.get("chat_template"), manifest["name"], mmproj=mmproj),
                                      encoding="utf-8")
    (folder / "README.md").write_text(render_release_card(manifest), encoding="utf-8")
    manifest["files"] = list_files(folder)
    write_json_atomic(folder / MANIFEST, manifest)


def read_release(folder: Path) -> dict:
    """A release folder's manifest, checked for the keys verify needs."""
    p = folder / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlimedgeError(f"{p}: unreadable ({exc}); the release is damaged, rebuild it") from None
    if m.get("format") != RELEASE_FORMAT or not isinstance(m.get("models"), list) or "files" not in m:
        raise SlimedgeError(f"{p}: not a slimedge release manifest; the release is damaged, rebuild it")
    if int(m.get("format_version", 0)) > RELEASE_FORMAT_VERSION:
        raise SlimedgeError(f"{p}: release format {m.get('format_version')} is newer than this slimedge understands; "
                            "upgrade slimedge")
    return m


def lmstudio_folder(root: Path, publisher: str, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", publisher).strip("-") or DEFAULT_QUANTIZED_BY
    return root / safe / f"{name}-GGUF"


def lay_out_lmstudio(release: Path, root: Path, *, publisher: str, overwrite: bool = False) -> Path:
    """``root/<publisher>/<Name>-GGUF/`` with the release's GGUFs (LM Studio's models-folder layout)."""
    m = read_release(release)
    dst = lmstudio_folder(root, publisher, m["name"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Publication(dst, folder=True, overwrite=overwrite) as pub:
        tmp = pub.path
        for f in [e["file"] for e in m["models"]] + ([m["mmproj"]["file"]] if m.get("mmproj") else []):
            try:  # the projector too: LM Studio pairs a model with the mmproj*.gguf in its folder
                os.link(release / f, tmp / f)
            except OSError:  # another file system, or no hard links there
                shutil.copyfile(release / f, tmp / f)
    return dst
