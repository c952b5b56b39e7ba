"""``slimedge build``: a model (HF folder or GGUF) + a target profile → a runnable bundle folder.

Steps: load the target; pick the type (``--type``; ``fit`` = the first of the profile's
``quantization.candidates`` whose memory estimate fits the budget; ``auto`` = the quality-driven mix of
``convert --type auto``, measured on ``--calib`` text, filling the budget; else the profile's default);
estimate memory from the conversion plan and refuse, with the numbers, what does not fit — before
any conversion; convert (``slimedge.convert``) into a temp folder next to the output; write the
launcher ``run``, ``Modelfile``, ``README.md`` and ``manifest.json`` (sha256 of every file);
rename the folder into place. ``archive=True`` also writes ``<out>.tar.gz``.

An already-quantized GGUF is packed as it is (no ``--type``); a float GGUF or HF folder is converted.
"""

from __future__ import annotations

import logging
import shutil
import stat
import time
from pathlib import Path

from .. import __version__
from ..errors import SlimedgeError
from ..memory import (MemoryEstimate, ModelShape, TensorSize, check_fits, estimate, fits, shape_from_gguf,
                      shape_from_model_info)
from ..progress import NULL_PROGRESS, Progress
from ..publish import Publication
from ..quant.types import FLOAT_TYPE_NAMES, file_type_name
from ..source import is_gguf
from ..targets import Target, load_target
from .launcher import embedding_of
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, file_entry, list_files, write_json_atomic

log = logging.getLogger(__name__)

# the two --type words that are not type names: the best of the profile's candidates that fits the target,
# and the quality-driven mix (measured sensitivities; `convert --type auto`'s) filling the target's budget
FIT, AUTO = "fit", "auto"

MODEL_FILE = "model.gguf"
# the files every bundle carries beside its launcher `run` (standalone: standard library and llama-cpp-python),
# which loads them from there: the shared runtime and server, the server's request checks, --bench's probes
LAUNCHER_FILES = {"server_runtime.py": Path(__file__).with_name("server_runtime.py"),
                  "serve_guard.py": Path(__file__).with_name("serve_guard.py"),
                  "machine.py": Path(__file__).parents[1] / "bench" / "machine.py"}


def _file_type(ftype: int | None) -> str:
    """``general.file_type`` -> ``'Q4_K_M'`` (``'?'`` when absent or unknown to gguf)."""
    try:
        return "?" if ftype is None else file_type_name(ftype)
    except ValueError:
        return "?"


def quant_spec(target: Target, qtype: str):
    from ..quant.mixes import QuantSpec

    q = target.quantization
    return QuantSpec(ftype=qtype.upper(), overrides=[(o.pattern, o.type.upper()) for o in q.overrides],
                     output_tensor_type=q.output_tensor_type.upper() or None,
                     token_embedding_type=q.token_embedding_type.upper() or None)


def _hf_shape(plan) -> ModelShape:
    """Hyperparameters for the estimate from the plan's model info (the converter's one reading of
    config.json); tensor sizes from the plan. Per-layer values: the largest bounds memory."""
    return shape_from_model_info(plan.model, [TensorSize(t.name, t.nbytes, t.n_params, t.qtype.name)
                                              for t in plan.tensors])


def planned_shape(src: Path, spec) -> ModelShape:
    """The shape the converted file will have (reads headers only)."""
    from ..convert import plan

    p = plan(src, spec)
    if is_gguf(src):
        base = shape_from_gguf(src)
        base.tensors = [TensorSize(t.name, t.nbytes, t.n_params, t.qtype.name) for t in p.tensors]
        return base
    return _hf_shape(p)


def source_files(src: Path) -> list[dict]:
    if src.is_file():
        return [dict(file_entry(src.parent, src), path=src.name)]
    return [file_entry(src, p) for p in sorted(src.iterdir())
            if p.is_file() and (p.suffix in (".json", ".safetensors", ".model", ".jinja", ".txt"))]


def choose_type(src: Path, target: Target, requested: str | None) -> tuple[str, str, ModelShape, MemoryEstimate]:
    """(type, chosen_by, planned shape, estimate), refusing with the numbers what does not fit.
    ``requested``: a type or mix name, ``fit`` (the best profile candidate that fits) or None."""
    if requested and requested.lower() == FIT:
        cands = target.quantization.candidates or (target.quantization.type,)
        tried = []
        for c in cands:
            shape = planned_shape(src, quant_spec(target, c))
            est = estimate(shape, target.runtime, hardware=target.hardware)
            if fits(est, target):
                return c.upper(), FIT, shape, est
            tried.append(f"{c} needs {est.required_ram / (1 << 30):.2f} GiB RAM"
                         + (f" / {est.total_vram / (1 << 30):.2f} GiB VRAM" if est.total_vram else ""))
        raise SlimedgeError(
            f"{src}: no --type fit candidate fits target {target.name!r} (RAM budget "
            f"{target.hardware.memory_budget_gb:g} GiB, VRAM {target.hardware.vram_gb:g} GiB): {'; '.join(tried)}; "
            "use a smaller model, a smaller runtime.n_ctx or a target with more memory")
    qtype = (requested or target.quantization.type).upper()
    shape = planned_shape(src, quant_spec(target, qtype))
    est = estimate(shape, target.runtime, hardware=target.hardware)
    check_fits(est, target, what=f"{src.name} as {qtype}")
    return qtype, ("--type" if requested else "target profile"), shape, est


def _tensor_types(info) -> dict:
    out: dict[str, dict] = {}
    for t in info.tensors:
        d = out.setdefault(t.type, {"count": 0, "bytes": 0, "n_params": 0})
        d["count"] += 1
        d["bytes"] += t.n_bytes
        d["n_params"] += t.n_elements
    for d in out.values():
        d["bpw"] = round(8.0 * d["bytes"] / d["n_params"], 4) if d["n_params"] else 0.0
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))


def write_bundle_files(tmp: Path, manifest: dict) -> None:
    """Launcher, Modelfile, README and manifest (with checksums) into ``tmp`` (model already there)."""
    from .modelfile import chat_family, render_modelfile

    run = tmp / "run"
    run.write_text(Path(__file__).with_name("launcher.py").read_text(encoding="utf-8"), encoding="utf-8")
    run.chmod(run.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    for name, src in LAUNCHER_FILES.items():  # what the launcher loads from beside itself, in every bundle
        (tmp / name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    for role, name in (("draft", "draft.py"), ("mmproj", "vision_runtime.py")):  # loaded by the launcher from
        if manifest.get(role):  # beside it: the draft-model class (speculative decoding), the image handling
            cls = Path(__file__).with_name(name)
            (tmp / cls.name).write_text(cls.read_text(encoding="utf-8"), encoding="utf-8")
    manifest["chat_format"] = chat_family(manifest.get("chat_template"))
    from .adapters import modelfile_adapters

    (tmp / "Modelfile").write_text(render_modelfile(manifest["model"], manifest["runtime"],
                                                    manifest.get("chat_template"), manifest["name"],
                                                    modelfile_adapters(manifest),
                                                    mmproj=(manifest.get("mmproj") or {}).get("file"),
                                                    embedding=bool(manifest.get("embedding"))), encoding="utf-8")
    refresh(tmp, manifest)


def refresh(bundle: Path, manifest: dict) -> None:
    """Re-render README.md from ``manifest`` and rewrite the manifest with fresh checksums (not of
    ``bench/``: devices add their measurements there after the build)."""
    from .card import render_card
    from .launcher import BENCH_DIR

    (bundle / "README.md").write_text(render_card(manifest), encoding="utf-8")
    manifest["files"] = [f for f in list_files(bundle) if not f["path"].startswith(BENCH_DIR + "/")]
    write_json_atomic(bundle / MANIFEST, manifest)


def record_bench(bundle: str | Path, record: dict) -> None:
    """Append a ``slimedge bench`` record to a bundle's manifest and README (checksums refreshed)."""
    from .manifest import read_manifest

    bundle = Path(bundle)
    m = read_manifest(bundle)
    m.setdefault("bench", []).append(record)
    refresh(bundle, m)


def build_bundle(src: str | Path, target: str | Path | Target, out_dir: str | Path, *, type: str | None = None,
                 archive: bool = False, overwrite: bool = False, threads: int | None = None,
                 progress: Progress = NULL_PROGRESS, imatrix: str | Path | None = None,
                 calib: str | Path | None = None, tune=None, loras=(), draft: str | Path | None = None,
                 draft_max: int | None = None, mmproj: str | Path | None = None, mmproj_type: str = "f16",
                 no_mmproj: bool = False) -> Path:
    """Build a bundle of ``src`` for ``target`` in ``out_dir``; returns ``out_dir`` (see module docstring).

    ``type``: a mix/type name, ``"fit"`` (the best profile candidate that fits), ``"auto"`` (the quality-driven
    mix that fills the budget, :func:`fill_budget`; needs ``calib``, text file or folder, and an HF source), or
    None for the profile's default. Nothing is left at ``out_dir`` unless the whole bundle was written.
    ``imatrix``: an importance matrix file for the quantizers (``convert --imatrix``).
    ``tune`` (:class:`slimedge.tune.convert.TuneOptions`): the quantized model's block scales tuned against
    the teacher (``slimedge tune``) before packing; the manifest records the run and its KL divergences.
    ``loras``: (PEFT folder or adapter GGUF, scale) pairs packed beside the model (:mod:`.adapters`).
    ``draft``: a draft model (HF folder or GGUF, same vocabulary) for speculative decoding, drafting up to
    ``draft_max`` tokens per step (:mod:`.drafts`).
    ``mmproj``: a vision projector GGUF to pack beside the model; without it a vision-language HF folder's
    projector is converted (``mmproj_type``) unless ``no_mmproj`` (:mod:`.projector`).
    """
    from ..source.hub import resolve_source

    src, out = resolve_source(src), Path(out_dir)
    tgt = target if isinstance(target, Target) else load_target(target)
    _check_paths(src, out, overwrite)
    if mmproj is not None and no_mmproj:
        raise SlimedgeError("--mmproj FILE and --no-mmproj contradict each other: give one")
    spec, type = None, _type_request(type, calib, src)
    if type == AUTO:
        spec, qtype, chosen_by, packed_as_is = *fill_budget(src, tgt, calib, imatrix, threads, progress), False
    else:
        qtype, chosen_by, packed_as_is = _choose(src, tgt, type)
    if imatrix is not None and packed_as_is:
        raise SlimedgeError(f"{src}: already quantized, packed as it is; --imatrix applies only when converting "
                            f"(give the HF folder or a float GGUF)")

    out.parent.mkdir(parents=True, exist_ok=True)
    pub = Publication(out, folder=True, overwrite=overwrite)  # a hidden temporary sibling folder
    try:
        model = pub.path / MODEL_FILE
        tuned = None
        if packed_as_is and tune is not None:
            from ..tune.convert import tune_quantized

            tuned = tune_quantized(src, src, model, tune, threads=threads, overwrite=True, progress=progress)
        elif packed_as_is:
            shutil.copyfile(src, model)
        elif tune is not None:
            from ..tune.convert import convert_and_tune

            tuned = convert_and_tune(src, model, spec or quant_spec(tgt, qtype), tune, threads=threads,
                                     overwrite=True, progress=progress, imatrix=imatrix)[1]
        else:
            from ..convert import convert

            convert(src, model, spec or quant_spec(tgt, qtype), threads=threads, overwrite=True, progress=progress,
                    imatrix=imatrix)
        manifest = _manifest(src, tgt, model, qtype, chosen_by)
        if loras:  # role "adapter": converted or copied, checked against the model, in the memory estimate
            from .adapters import add_to_estimate, pack_adapters

            manifest["adapters"] = pack_adapters(src, model, loras, pub.path)
            add_to_estimate(manifest, model, pub.path, tgt)
        if draft is not None:  # role "draft": converted or copied, same vocabulary, both models in the estimate
            from . import drafts

            manifest["draft"] = drafts.pack_draft(model, draft, pub.path, draft_max, threads)
            drafts.add_to_estimate(manifest, model, pub.path, tgt)
        if not no_mmproj:  # role "mmproj": converted or copied, paired with the model, in the estimate
            from . import projector

            entry = projector.pack_mmproj(src, model, None if mmproj is None else Path(mmproj), pub.path,
                                          mmproj_type, progress)
            if entry is not None:
                manifest["mmproj"] = entry
                projector.add_to_estimate(manifest, pub.path, tgt)
        if tuned is not None:
            from ..tune.convert import tune_teacher

            manifest["quantization"]["tuned"] = {
                "teacher": str(Path(tune_teacher(src, tune)).resolve()), "data": str(Path(tune.data).resolve()),
                "steps": tune.steps, "kl_before": tuned.kl_before, "kl_after": tuned.kl_after}
        write_bundle_files(pub.path, manifest)
        pub.commit()  # overwrite: swapped only now that the new bundle is complete; the old one back on failure
    except BaseException:
        pub.abort()
        raise
    if archive:
        from .archive import write_archive

        write_archive(out, overwrite=overwrite)
    log.info("bundle %s: %s, RAM %d bytes", out, qtype, manifest["memory_estimate"]["required_ram"])
    return out


def _type_request(type: str | None, calib, src: Path) -> str | None:
    """``type`` with ``fit`` / ``auto`` spelled canonically; refuses what cannot be; the old meaning of
    ``auto`` without ``--calib`` (now ``fit``) is kept for one release, with a deprecation warning."""
    word = (type or "").strip().lower()
    if word == AUTO and calib is None:
        log.warning("build --type auto without --calib is deprecated: it is spelled --type fit now (the best of the "
                    "profile's candidates that fits); --type auto --calib TEXT is the quality-driven mix")
        return FIT
    if word == AUTO and is_gguf(src):
        raise SlimedgeError(f"{src}: --type auto measures sensitivities with the Hugging Face model; give the HF "
                            "folder, or use --type fit (the best profile candidate that fits)")
    if calib is not None and word != AUTO:
        raise SlimedgeError("--calib is the text the quality-driven mix is measured on: it needs --type auto")
    return word if word in (AUTO, FIT) else type


def fill_budget(src: Path, tgt: Target, calib: str | Path, imatrix, threads: int | None,
                progress: Progress) -> tuple[object, str, str]:
    """(QuantSpec, type label, chosen_by) of the auto mix (:mod:`slimedge.calib.sensitivity`) with the
    largest tensor budget whose memory estimate still fits the target (bisection on the budget on the proxy's
    prices, measured once; the allocation at that budget then refined with exact prices). Candidate types are the
    base types of the profile's candidates."""
    from ..calib.sensitivity import DEFAULT_CHUNKS, DEFAULT_CTX, importance, read_text, refine_allocation, sensitivity
    from ..convert import plan
    from ..quant.allocate import DEFAULT_CANDIDATES, allocate, quantizable
    from ..quant.mixes import resolve_ftype
    from ..quant.types import tensor_nbytes

    allowed = {resolve_ftype(c)[1].name for c in (tgt.quantization.candidates or (tgt.quantization.type,))}
    types = tuple(t for t in DEFAULT_CANDIDATES if t in allowed) or DEFAULT_CANDIDATES
    base = plan(src)
    imp = importance(src, imatrix)
    sens = sensitivity(src, read_text(calib), imatrix=imp, types=types, threads=threads, progress=progress)
    fixed = base.total_bytes - sum(t.nbytes for t in quantizable(base))

    def fitting(budget: int):
        alloc = allocate(base, sens.costs, budget, target=f"fills {tgt.name}", types=types)
        spec = alloc.spec()
        shape = planned_shape(src, spec)
        return alloc, spec, fits(estimate(shape, tgt.runtime, hardware=tgt.hardware), tgt)

    lo = fixed + sum(min(tensor_nbytes(t.shape, q) for q in _types_of(t, types)) for t in quantizable(base))
    hi = base.total_bytes * 2  # F16 plan x 2 >= anything the candidates make
    alloc, spec, ok = fitting(lo)
    if not ok:
        check_fits(estimate(planned_shape(src, spec), tgt.runtime, hardware=tgt.hardware), tgt,
                   what=f"{src.name} as the smallest auto mix")
    for _ in range(24):
        if hi - lo <= max(1, base.total_bytes // 10_000):
            break
        mid = (lo + hi) // 2
        a, sp, ok = fitting(mid)
        if ok:
            lo, alloc, spec = mid, a, sp
        else:
            hi = mid
    refined = refine_allocation(src, read_text(calib), sens, base,
                                lambda costs: allocate(base, costs, lo, target=f"fills {tgt.name}", types=types),
                                alloc, imatrix=imp, ctx=DEFAULT_CTX, chunks=DEFAULT_CHUNKS, threads=threads,
                                device=None, refine=None, cache=None, progress=progress)
    sp = refined.spec()  # the same budget, priced exactly where it chooses: kept if it still fits
    if refined.types == alloc.types or fits(estimate(planned_shape(src, sp), tgt.runtime, hardware=tgt.hardware), tgt):
        alloc, spec = refined, sp
    return spec, f"auto mix {alloc.bits_per_weight:.2f} bpw", "auto (quality-driven mix, fills the budget)"


def _types_of(t, types):
    from gguf import GGMLQuantizationType as T

    from ..quant.allocate import candidate_types

    return [T[q] for q in candidate_types(t.name, t.shape, types)]


def _check_paths(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a missing or unusable source and an output that may not be replaced."""
    if not src.exists():
        raise SlimedgeError(f"{src}: not found; give a Hugging Face model folder or a .gguf file")
    if out.exists() and not overwrite:
        raise SlimedgeError(f"{out}: exists; pass --overwrite to replace it")
    if out.exists() and not (out / MANIFEST).is_file():
        raise SlimedgeError(f"{out}: exists and is not a bundle; refusing to replace it, choose another -o")
    if src.is_file() and not is_gguf(src):
        raise SlimedgeError(f"{src}: not a GGUF file; give a Hugging Face model folder or a .gguf file")
    if src.is_dir() and not (src / "config.json").is_file():
        raise SlimedgeError(f"{src}: no config.json; give a Hugging Face model folder or a .gguf file")


def _choose(src: Path, tgt: Target, type: str | None) -> tuple[str, str, bool]:
    """(type, chosen_by, packed as is). An already-quantized GGUF is copied unchanged (``type`` refused);
    anything else gets ``type``, the profile's type, or with ``fit`` the best candidate that fits. A model whose
    estimate exceeds the target's budget is refused with the numbers."""
    from ..gguf_info import read_info

    if is_gguf(src):
        info = read_info(src)
        if {t.type for t in info.tensors if len(t.shape) >= 2} - FLOAT_TYPE_NAMES:
            if type:
                raise SlimedgeError(f"{src}: already quantized ({info.file_type_name}); give the float (F16/F32) "
                                    "GGUF or the HF folder to choose --type, or leave --type out to pack it as is")
            qtype = _file_type(info.file_type)
            check_fits(estimate(shape_from_gguf(src), tgt.runtime, hardware=tgt.hardware), tgt,
                       what=f"{src.name} ({qtype})")
            return qtype, "source file (already quantized)", True
    qtype, chosen_by, _, _ = choose_type(src, tgt, type)
    return qtype, chosen_by, False


def _manifest(src: Path, tgt: Target, model: Path, qtype: str, chosen_by: str) -> dict:
    """The bundle's manifest, from the model file actually written (checksums are added when it is saved)."""
    from ..gguf_info import read_info

    info = read_info(model)
    shape = shape_from_gguf(model)
    est = estimate(shape, tgt.runtime, hardware=tgt.hardware)
    runtime = dict(tgt.to_dict()["runtime"], n_ctx=est.n_ctx)  # capped at the training context
    meta = info.metadata
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "slimedge_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "name": str(meta.get("general.name") or src.stem), "model": MODEL_FILE,
        "source": {"path": str(src.resolve()), "kind": "gguf" if src.is_file() else "hf",
                   "files": source_files(src)},
        "target": tgt.to_dict(),
        "quantization": {"type": qtype, "chosen_by": chosen_by, "file_type": info.file_type_name,
                         "tensor_types": _tensor_types(info), "n_params": info.n_params,
                         "model_size": info.total_tensor_bytes, "file_size": info.file_size,
                         "bpw": info.bpw},
        "runtime": runtime,  # the profile's, context capped at the model's training context
        "architecture": shape.arch,
        "hyperparameters": {k: getattr(shape, k) for k in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff",
                                                           "n_vocab", "key_length", "value_length",
                                                           "n_ctx_train")},
        "chat_template": meta.get("tokenizer.chat_template"),
        "embedding": embedding_of(meta),  # {"pooling", "normalize"} for an embedding model, else None
        "memory_estimate": est.to_dict(),
        "files": [],
        "bench": [],
    }
