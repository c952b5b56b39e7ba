"""A speculative-decoding draft in a bundle: packed beside the model (role ``draft``), checked against it, counted.

``slimedge build TARGET --draft DRAFT [--draft-max K]``: DRAFT is a Hugging Face folder (converted at
:data:`DRAFT_TYPE`) or a GGUF (copied as it is), saved as ``draft.gguf``. The manifest's ``draft`` entry is
``{"file", "role": "draft", "type", "draft_max", "source"}``; the file is checksummed with the rest and
:mod:`.draft` (the draft-model class) is copied beside the launcher, which decodes speculatively with it in
``run``, ``run --chat``, ``run --serve`` and ``slimedge serve``. A draft must share the model's vocabulary
(same tokens, in order): :func:`vocab_problem` compares the two GGUFs' ``tokenizer.ggml.tokens`` and is what
``build`` refuses and ``verify`` reports. The memory estimate adds the draft's weights, KV cache (at the
bundle's context) and compute buffers to the model's (:func:`slimedge.memory.combined`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import SlimedgeError
from ..gguf_info import vocab_problem

ROLE = "draft"
DRAFT_FILE = "draft.gguf"
DRAFT_TYPE = "Q8_0"  # an HF draft is converted at Q8_0: near the float model's proposals, half its bytes
DRAFT_MAX = 8  # most tokens drafted per target step (the launcher adapts below it)


def pack_draft(model: Path, draft, folder: Path, draft_max: int | None, threads: int | None = None) -> dict:
    """Put ``draft`` (HF folder or GGUF) into ``folder`` as ``draft.gguf``, checked against ``model``;
    returns the manifest entry."""
    from ..source import is_gguf

    path, out = Path(draft), folder / DRAFT_FILE
    k = DRAFT_MAX if draft_max is None else int(draft_max)
    if k < 1:
        raise SlimedgeError(f"--draft-max {k}: draft at least 1 token per step")
    if is_gguf(path):
        if not path.is_file():
            raise SlimedgeError(f"{path}: no such draft GGUF")
        shutil.copyfile(path, out)
        from ..gguf_info import read_info

        qtype = read_info(out).file_type_name or "as given"
    else:
        if not path.is_dir():
            raise SlimedgeError(f"{path}: no such draft; give a Hugging Face folder or a GGUF")
        from ..convert import convert
        from ..quant.mixes import QuantSpec

        convert(path, out, QuantSpec(DRAFT_TYPE), threads=threads, overwrite=True)
        qtype = DRAFT_TYPE
    problem = vocab_problem(model, out, label=str(path))
    if problem:
        raise SlimedgeError(problem)
    return {"file": out.name, "role": ROLE, "type": str(qtype), "draft_max": k, "source": str(path.resolve())}


def add_to_estimate(manifest: dict, model: Path, folder: Path, target) -> None:
    """The memory estimate of the model and its draft together (both weights, both KV caches at the
    bundle's context, both compute buffers); refused with the numbers when that no longer fits ``target``."""
    from dataclasses import replace

    from ..memory import check_fits, combined, estimate, shape_from_gguf

    main = estimate(shape_from_gguf(model), target.runtime, hardware=target.hardware)
    n = sum((folder / e["file"]).stat().st_size for e in manifest.get("adapters", []))
    main = replace(main, weights_ram=main.weights_ram + n)
    extra = estimate(shape_from_gguf(folder / manifest["draft"]["file"]), target.runtime, n_ctx=main.n_ctx,
                     hardware=target.hardware)
    est = combined(main, extra)
    check_fits(est, target, what=f"{manifest['name']} with its draft model")
    manifest["memory_estimate"] = dict(est.to_dict(), **({"adapters_ram": n} if n else {}),
                                       draft=extra.to_dict())


def check_draft(bundle: Path, manifest: dict) -> list[str]:
    """``verify``'s problems with a bundle's draft (one line each)."""
    e = manifest.get("draft")
    if not isinstance(e, dict) or not isinstance(e.get("file"), str) or "/" in e["file"] or ".." in e["file"]:
        return [f"{bundle / 'manifest.json'}: the 'draft' entry is not {{file, draft_max}}; rebuild the bundle"]
    path = bundle / e["file"]
    if not path.is_file():
        return [f"{path}: missing (the bundle's draft model); restore it or rebuild the bundle"]
    if not (bundle / "draft.py").is_file():
        return [f"{bundle / 'draft.py'}: missing (the launcher's draft-model class); rebuild the bundle"]
    problem = vocab_problem(bundle / manifest["model"], path)
    return [problem] if problem else []


def server_command(manifest: dict) -> str:
    """llama.cpp's own server with the bundle's model and draft (the pinned llama.cpp's flags: ``-md`` alone loads
    the draft without drafting; ``--spec-type draft-simple`` turns it on, ``--spec-draft-n-max`` replaced
    ``--draft-max``)."""
    e = manifest["draft"]
    return (f"llama-server -m {manifest['model']} -md {e['file']} --spec-type draft-simple "
            f"--spec-draft-n-max {e.get('draft_max', DRAFT_MAX)}")
