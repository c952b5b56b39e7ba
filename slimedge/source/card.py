"""The ``general.*`` metadata llama.cpp's converter writes and LM Studio / Ollama display, for an HF folder.

What: ``general.basename``, ``general.finetune``, ``general.version``, ``general.organization``,
``general.size_label`` (``"1.1B"``, ``"8x7B"`` for a mixture of experts), ``general.license`` (+ name/link),
tags, languages, base models, and the sampling defaults of ``generation_config.json``.

How, as llama.cpp does it: gguf-py's public ``gguf.Metadata`` helpers read the model card's YAML front matter
(``README.md``), ``config.json``'s ``_name_or_path`` and the folder's name (``Org/Name-1.1B-Chat-v1.0`` →
basename ``Name``, size ``1.1B``, finetune ``Chat``, version ``v1.0``); a folder inside the Hugging Face cache
is named by its repo id, not its commit hash. Where no name carries a size, ``gguf.size_label`` computes it
from the tensors to be written, counted as ``GGUFWriter.get_total_parameter_count`` counts them (tensors
with ``_exps.`` in their name are expert tensors, ``[experts, rows, cols]``).
"""

from __future__ import annotations

import logging
from math import prod
from pathlib import Path

from gguf import GGUFValueType, Keys

from ..arch.base import KV

log = logging.getLogger(__name__)
STR, U32, F32 = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.FLOAT32
ARR = GGUFValueType.ARRAY


def parameter_counts(shapes: list[tuple[str, tuple[int, ...]]]) -> tuple[int, int, int, int]:
    """(total, shared, per-expert, expert count) parameters of GGUF tensors (name, NumPy shape)."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for name, shape in shapes:
        size = prod(shape)
        if "_exps." in name and len(shape) >= 3:
            count = shape[1 if name.endswith(".bias") else 0]  # NumPy order: experts first
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    return total, shared, expert, (expert_sum // n_expert_tensors if n_expert_tensors else 0)


def _sampling_keys() -> list[tuple[str, str, GGUFValueType]]:
    """(generation_config.json field, GGUF key, type) for the sampling keys this gguf version knows."""
    table = [("temperature", "SAMPLING_TEMP", F32), ("top_k", "SAMPLING_TOP_K", GGUFValueType.INT32),
             ("top_p", "SAMPLING_TOP_P", F32), ("min_p", "SAMPLING_MIN_P", F32)]
    return [(src, getattr(Keys.General, attr), t) for src, attr, t in table if hasattr(Keys.General, attr)]


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else None
    return str(value)


def general_metadata(model_dir: Path, shapes: list[tuple[str, tuple[int, ...]]], hub_repo: str | None = None
                     ) -> list[KV]:
    """The ``general.*`` keys (besides name/type) for the HF folder ``model_dir`` whose output tensors are
    ``shapes`` (GGUF name, NumPy shape); ``hub_repo``: its ``org/name`` when it is a Hub cache snapshot."""
    from gguf import Metadata, size_label

    total, shared, expert, n_expert = parameter_counts(shapes)
    try:
        card = Metadata.load_model_card(model_dir)
    except Exception as exc:  # a user's README.md: a bad front matter loses only the card's fields
        log.warning("%s: model card front matter not read (%s); general.license and tags left out",
                    model_dir / "README.md", " ".join(str(exc).split())[:200])
        card = {}
    try:
        hf_params = Metadata.load_hf_parameters(model_dir)
    except (ValueError, OSError):
        hf_params = {}  # config.json itself is checked (and reported) by the source reader
    name_path = model_dir
    if hub_repo is not None:
        name_or_path = hf_params.get("_name_or_path")
        if not (isinstance(name_or_path, str) and name_or_path.count("/") == 1):
            hf_params = {**hf_params, "_name_or_path": hub_repo}
        name_path = Path(hub_repo)
    try:
        meta = Metadata.apply_metadata_heuristic(Metadata(), card, hf_params, name_path, total)
    except Exception as exc:  # free-form card fields gguf's heuristics do not expect: drop the card only
        log.warning("%s: model card fields not understood (%s); general.license and tags left out",
                    model_dir / "README.md", " ".join(str(exc).split())[:200])
        meta = Metadata.apply_metadata_heuristic(Metadata(), {}, hf_params, name_path, total)
    if meta.size_label is None and total > 0:
        meta.size_label = size_label(total, shared, expert, n_expert)

    G = Keys.General
    kv = []
    for key, value in ((G.BASENAME, meta.basename), (G.FINETUNE, meta.finetune), (G.VERSION, meta.version),
                       (G.ORGANIZATION, meta.organization), (G.AUTHOR, meta.author),
                       (G.DESCRIPTION, meta.description), (G.SIZE_LABEL, meta.size_label),
                       (G.LICENSE, meta.license), (G.LICENSE_NAME, meta.license_name),
                       (G.LICENSE_LINK, meta.license_link), (G.URL, meta.url), (G.REPO_URL, meta.repo_url)):
        text = _text(value)
        if text:
            kv.append(KV(key, text, STR))
    for key, values in ((G.TAGS, meta.tags), (G.LANGUAGES, meta.languages)):
        values = [str(v) for v in values or [] if v is not None]
        if values:
            kv.append(KV(key, values, ARR, STR))
    bases = [b for b in meta.base_models or [] if isinstance(b, dict)]
    if bases:
        kv.append(KV(G.BASE_MODEL_COUNT, len(bases), U32))
        for i, base in enumerate(bases):
            for field, key in (("name", G.BASE_MODEL_NAME), ("organization", G.BASE_MODEL_ORGANIZATION),
                               ("version", G.BASE_MODEL_VERSION), ("repo_url", G.BASE_MODEL_REPO_URL)):
                if base.get(field):
                    kv.append(KV(key.format(id=i), str(base[field]), STR))
    try:
        gen = Metadata.load_generation_config(model_dir)
    except Exception:  # noqa: BLE001  (gguf already ignores an unreadable generation_config.json)
        gen = {}
    for src, key, vtype in _sampling_keys():
        value = gen.get(src) if isinstance(gen, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            kv.append(KV(key, int(value) if vtype == GGUFValueType.INT32 else float(value), vtype))
    return kv
