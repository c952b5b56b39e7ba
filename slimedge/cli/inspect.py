"""``slimedge inspect FILE.gguf [--json] [--stats] [--full]``: what a GGUF file holds.

Human output: header line, metadata (long arrays shortened), tensor table (name, shape in NumPy
order, type, bytes, bits per weight; with ``--stats`` min/max/mean/std/rms of the dequantized
values), per-type totals, parameters, size and bits per weight. ``--json`` prints the same as one
JSON object (arrays longer than 64 items shortened unless ``--full``). The ``kind`` says what the file is (model,
mmproj, adapter, embedding); for a model, a vision projector or a LoRA adapter, the GGUFs beside it that pair with
it are named (``pairs_with``: a projector whose width and identity fit the model, an adapter whose pairs fit its
tensors: :func:`slimedge.bundle.projector.pairing_problem`, :func:`slimedge.bundle.adapters.pairing_problem`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import click

from ..gguf_info import GGUFInfo, read_info
from ..gguf_stats import TensorStats, tensor_stats

_JSON_ARRAY_MAX = 64


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _display(value: Any, width: int = 100) -> str:
    """One line for a metadata value; long arrays show their length and first items."""
    if isinstance(value, list):
        head = ", ".join(repr(v) for v in value[:6])
        more = ", ..." if len(value) > 6 else ""
        s = f"[{len(value)} items] [{head}{more}]"
    elif isinstance(value, str):
        s = repr(value)
    else:
        s = str(value)
    return s if len(s) <= width else s[: width - 3] + "..."


def _json_value(value: Any, full: bool) -> Any:
    if isinstance(value, list) and not full and len(value) > _JSON_ARRAY_MAX:
        return {"length": len(value), "first": value[:_JSON_ARRAY_MAX], "shortened": True}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _stats_dict(s: TensorStats | str | None) -> Any:
    if s is None or isinstance(s, str):
        return s
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in vars(s).items()}


def adapter_info(info: GGUFInfo) -> dict | None:
    """For a LoRA adapter GGUF (general.type = adapter): its type, alpha, the base architecture it applies to
    and its number of lora_a/lora_b pairs; None for anything else."""
    meta = info.metadata
    if meta.get("general.type") != "adapter":
        return None
    return {"type": meta.get("adapter.type"), "alpha": meta.get("adapter.lora.alpha"), "base_arch": info.arch,
            "pairs": sum(t.name.endswith(".lora_a") for t in info.tensors)}


def embedding_info(info: GGUFInfo) -> dict | None:
    """For an embedding model (a pooling type, or an encoder-only architecture): its pooling and whether its
    vectors are meant normalized; None for anything else."""
    from ..bundle.launcher import embedding_of

    return None if adapter_info(info) else embedding_of(info.metadata)


def mmproj_info(info: GGUFInfo) -> dict | None:
    """For a vision projector (mmproj) GGUF: its projector type, image and patch size, the width of the
    embeddings it feeds the text model, and the text model it was converted with (slimedge's keys); else None."""
    from ..bundle.projector import TEXT_ARCH, is_mmproj

    m = info.metadata
    if not is_mmproj(m):
        return None
    return {"projector_type": m.get("clip.projector_type") or m.get("clip.vision.projector_type"),
            "image_size": m.get("clip.vision.image_size"), "patch_size": m.get("clip.vision.patch_size"),
            "n_embd_text": m.get("clip.vision.projection_dim"), "text_model": m.get("general.name"),
            "text_arch": m.get(TEXT_ARCH)}


def kind_of(info: GGUFInfo) -> str:
    """What a GGUF is: ``adapter``, ``embedding``, ``mmproj`` or ``model`` (or its own ``general.type``)."""
    if adapter_info(info):
        return "adapter"
    if embedding_info(info):
        return "embedding"
    return "mmproj" if mmproj_info(info) else str(info.metadata.get("general.type") or "model")


def _pairs(model, other, other_kind: str) -> bool:
    from ..bundle import adapters, projector

    check = projector.pairing_problem if other_kind == "mmproj" else adapters.pairing_problem
    return check(model, other) is None


def pairs_with(info: GGUFInfo, limit: int = 32) -> list[str]:
    """The GGUFs in the same folder that pair with this one: for a model, the vision projectors and LoRA adapters
    that fit it; for an mmproj or an adapter, the models it fits (``slimedge.bundle.projector`` /
    ``slimedge.bundle.adapters`` pairing checks). Headers only; at most ``limit`` files looked at."""
    from pathlib import Path

    me, mine = Path(info.path), kind_of(info)
    if mine not in ("model", "mmproj", "adapter"):
        return []
    out = []
    for other in sorted(me.parent.glob("*.gguf"))[:limit]:
        if other.resolve() == me.resolve():
            continue
        try:
            theirs = kind_of(read_info(other))
            if mine == "model" and theirs in ("mmproj", "adapter"):
                ok = _pairs(me, other, theirs)
            elif mine in ("mmproj", "adapter") and theirs == "model":
                ok = _pairs(other, me, mine)
            else:
                ok = False
        except Exception:  # noqa: BLE001 - a damaged neighbour is not this file's problem
            ok = False
        if ok:
            out.append(other.name)
    return out


def to_json(info: GGUFInfo, stats: dict | None = None, full: bool = False) -> dict:
    adapter, embedding, mmproj = adapter_info(info), embedding_info(info), mmproj_info(info)
    return {
        "kind": kind_of(info),
        **({"adapter": adapter} if adapter else {}),
        **({"embedding": embedding} if embedding else {}),
        **({"mmproj": mmproj} if mmproj else {}),
        "pairs_with": pairs_with(info),
        "path": info.path, "file_size": info.file_size, "gguf_version": info.version,
        "alignment": info.alignment, "data_offset": info.data_offset,
        "arch": info.arch, "name": info.name, "file_type": info.file_type, "file_type_name": info.file_type_name,
        "n_tensors": len(info.tensors), "n_params": info.n_params,
        "total_tensor_bytes": info.total_tensor_bytes, "bpw": info.bpw,
        "type_counts": info.type_counts, "type_bytes": info.type_bytes,
        "metadata": {k: _json_value(v, full) for k, v in info.metadata.items()},
        "metadata_types": info.metadata_types,
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "type": t.type, "n_bytes": t.n_bytes,
             "n_elements": t.n_elements, "offset": t.offset, "bpw": t.bpw,
             **({"stats": _stats_dict(stats.get(t.name))} if stats is not None else {})}
            for t in info.tensors],
    }


def _print_human(info: GGUFInfo, stats: dict | None) -> None:
    echo = click.echo
    echo(f"{info.path}: GGUF v{info.version}, {_human_bytes(info.file_size)} ({info.file_size} bytes)")
    echo(f"arch: {info.arch}   name: {info.name}   file_type: {info.file_type_name}")
    adapter = adapter_info(info)
    if adapter:
        echo(f"kind: {str(adapter['type']).upper()} adapter for a {info.arch} base model (alpha {adapter['alpha']}, "
             f"{adapter['pairs']} pairs); apply it with `slimedge build --lora` or llama.cpp's --lora")
    embedding = embedding_info(info)
    if embedding:
        echo(f"kind: embedding model ({embedding['pooling']} pooling, vectors "
             f"{'normalized' if embedding['normalize'] else 'not normalized'}); load it with embedding=True "
             f"(llama-cpp-python) or --embedding (llama.cpp), or build a bundle and `run --embed TEXT`")
    mmproj = mmproj_info(info)
    if mmproj:
        made = f" from {mmproj['text_model']} ({mmproj['text_arch']})" if mmproj["text_arch"] else ""
        echo(f"kind: vision projector (mmproj, {mmproj['projector_type']}, {mmproj['image_size']} px images in "
             f"{mmproj['patch_size']} px patches) for a text model {mmproj['n_embd_text']} wide{made}; load it with "
             "its model: llama-server -m MODEL.gguf --mmproj FILE, or `slimedge build MODEL.gguf --mmproj FILE`")
    elif not (adapter or embedding):
        echo("kind: model")
    pairs = pairs_with(info)
    if pairs:
        echo(f"pairs with: {', '.join(pairs)} (in the same folder)")
    echo(f"\nmetadata ({len(info.metadata)} keys):")
    kw = max((len(k) for k in info.metadata), default=0)
    for k, v in info.metadata.items():
        echo(f"  {k:<{kw}}  {info.metadata_types[k]:<14} {_display(v)}")
    echo(f"\ntensors ({len(info.tensors)}):")
    nw = max((len(t.name) for t in info.tensors), default=4)
    header = f"  {'name':<{nw}}  {'shape':<18} {'type':<6} {'bytes':>12} {'bpw':>6}"
    if stats is not None:
        header += f"  {'min':>10} {'max':>10} {'mean':>10} {'std':>10} {'rms':>10}"
    echo(header)
    for t in info.tensors:
        shape = "x".join(str(d) for d in t.shape)
        line = f"  {t.name:<{nw}}  {shape:<18} {t.type:<6} {t.n_bytes:>12} {t.bpw:>6.2f}"
        if stats is not None:
            s = stats.get(t.name)
            if isinstance(s, TensorStats):
                line += "  " + " ".join(f"{v:>10.4g}" for v in (s.min, s.max, s.mean, s.std, s.rms))
                if s.n_nonfinite:
                    line += f"  ({s.n_nonfinite} NaN/Inf)"
            else:
                line += f"  {s}"
        echo(line)
    echo("\ntypes:")
    tb = info.type_bytes
    for typ, n in info.type_counts.items():
        echo(f"  {typ:<6} {n:>5} tensors  {_human_bytes(tb[typ]):>12}")
    echo(f"\ntotal: {len(info.tensors)} tensors, {info.n_params:,} parameters, "
         f"{_human_bytes(info.total_tensor_bytes)} of tensor data, {info.bpw:.3f} bits per weight")


@click.command("inspect")
@click.argument("file", type=str)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object).")
@click.option("--stats", is_flag=True, help="Dequantize each tensor and show min/max/mean/std/rms.")
@click.option("--full", is_flag=True, help="With --json: include long metadata arrays (vocabularies) in full.")
def cli(file: str, as_json: bool, stats: bool, full: bool) -> None:
    """Show a GGUF file's metadata, tensors, sizes and bits per weight.

    \b
    Examples:
      slimedge inspect tinyllama-q4km.gguf
      slimedge inspect tinyllama-q4km.gguf --stats          # min/max/mean/std/rms of every tensor
      slimedge inspect tinyllama-q4km.gguf --json | jq .type_counts
    """
    info = read_info(file)
    st = tensor_stats(file, info) if stats else None
    if as_json:
        click.echo(json.dumps(to_json(info, st, full), indent=1, ensure_ascii=False))
    else:
        _print_human(info, st)
