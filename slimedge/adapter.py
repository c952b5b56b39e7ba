"""LoRA adapters: a PEFT adapter folder to llama.cpp's LoRA GGUF, or folded into its base (``--merge``).

Public API::

    from slimedge.adapter import convert_adapter, convert_merged
    convert_adapter("my-lora", "TinyLlama", "my-lora.gguf", ftype="f16")
    convert_merged("my-lora", "TinyLlama", "merged-q4km.gguf", QuantSpec("Q4_K_M"))

How: the base's Hugging Face folder is opened as for ``convert`` and its architecture table
(:mod:`slimedge.arch`) maps every base tensor to its GGUF name; each LoRA pair of the adapter
(:mod:`slimedge.source.lora`) is matched to the base tensor it changes (same HF name, same shape, else a
one-line error: an adapter of another base). The GGUF holds ``<gguf name>.lora_a`` (A: ggml [in, r]) and
``.lora_b`` (B: ggml [r, out]) per pair, in the adapter file's order, with ``general.type = adapter``,
``adapter.type = lora`` and ``adapter.lora.alpha`` (llama.cpp scales by alpha / r). An architecture's row
transform (Llama's q/k rope permutation) applies to B's rows, as llama.cpp's converter does; a transform
that is not a linear map of rows cannot be moved onto B and is refused. An embedding pair (PEFT
``lora_embedding_A/B``) is stored as llama.cpp reads it: ``lora_a`` is A transposed. Types: f32, f16, bf16,
q8_0 (a q8_0 tensor whose rows are not a multiple of 32 values falls back to F16, as llama.cpp's converter).

``--merge``: every targeted base tensor becomes a :class:`~slimedge.source.lora.MergedRef` (rows read as
``W + scale * B @ A``) and the normal one-pass conversion (:func:`slimedge.convert.convert`) quantizes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFValueType, Keys

from . import __version__
from .errors import SlimedgeError

log = logging.getLogger(__name__)
STR, U32, F32 = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.FLOAT32
ADAPTER_TYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
                 "bf16": GGMLQuantizationType.BF16, "q8_0": GGMLQuantizationType.Q8_0}


@dataclass
class MappedPair:
    """One LoRA pair under its base's GGUF name: ``lora_a`` / ``lora_b`` as written (NumPy order)."""

    gguf: str  # base tensor's GGUF name, e.g. "blk.0.attn_q.weight"
    pair: object  # slimedge.source.lora.LoraPair
    lora_a: np.ndarray  # float32[r, in] (an embedding's: [vocab, r])
    lora_b: np.ndarray  # float32[out, r] (an embedding's: [dim, r])


@dataclass
class AdapterResult:
    out: Path
    arch: str  # GGUF architecture of the base
    alpha: float
    pairs: list[MappedPair]
    seconds: float
    file_bytes: int


def _open_base(base: str | Path):
    from .arch import get_arch
    from .source import is_gguf
    from .source.hf import HFSource
    from .source.hub import resolve_source

    path = resolve_source(base)
    if is_gguf(path) or path.is_file():
        raise SlimedgeError(f"{path}: --base must be the base model's Hugging Face folder (config.json + "
                            f"safetensors), the one the adapter was trained on")
    source = HFSource(path)
    return source, get_arch(source.config, str(path / "config.json"))


def _refuse_other_base(adapter, what: str) -> SlimedgeError:
    trained = adapter.config.get("base_model_name_or_path")
    hint = f" (it was trained on {trained})" if trained else ""
    return SlimedgeError(f"{adapter.dir}: {what}; this adapter is for another base model{hint}; pass its base "
                         f"as --base")


def _check_row_linear(arch, name: str, rows: np.ndarray, moved: np.ndarray) -> None:
    """The arch transform T moved onto a LoRA factor is exact only when T(L @ R) == T(L) @ R (a linear map of
    rows: a permutation, a per-row scale); checked on a random R."""
    rng = np.random.default_rng(0)
    r = rng.standard_normal((rows.shape[1], rows.shape[1])).astype(np.float32)
    want, got = arch.transform(name, rows @ r), moved @ r
    if want.shape != got.shape or not np.allclose(want, got, rtol=1e-4, atol=1e-5 * float(np.abs(want).max() + 1)):
        raise SlimedgeError(f"{name}: {arch.hf_arch} rewrites this tensor in a way a LoRA pair cannot carry; "
                            f"merge the adapter instead (slimedge convert ADAPTER --base BASE --merge)")


def map_adapter(adapter, source, arch) -> list[MappedPair]:
    """Every pair of ``adapter`` under the GGUF name of the base tensor it changes, factors transformed as
    the base's weights are; one-line errors for pairs that do not fit the base."""
    from .arch.base import Arch

    by_origin = {t.origin: t for t in arch.tensors(source)}
    transforms = type(arch).transform is not Arch.transform
    mapped = []
    for pair in adapter.pairs:
        ref = source.tensors.get(pair.base)
        if pair.base.endswith("lm_head.weight") and (ref is None or arch.hp.tied):
            raise SlimedgeError(f"{adapter.dir}: the adapter targets {pair.base}, but the base ties it to the token "
                                f"embedding, so llama.cpp has no output tensor to apply it to (retrain without "
                                f"lm_head)")
        if ref is None:
            raise _refuse_other_base(adapter, f"it changes {pair.base}, which the base does not have")
        if tuple(ref.shape) != pair.delta_shape:
            raise _refuse_other_base(adapter, f"{pair.base} is {list(ref.shape)} in the base but the LoRA pair "
                                              f"makes {list(pair.delta_shape)}")
        t = by_origin.get(ref.where)
        if t is None:
            raise SlimedgeError(f"{adapter.dir}: the adapter targets {pair.base}, which is not a tensor of the "
                                f"{arch.arch} GGUF; llama.cpp cannot apply it (retrain without that module)")
        a, b = pair.a.load(), pair.b.load()
        rows, cols = (a.T, b.T) if pair.embedding else (b, a)  # delta = rows @ cols, rows along the base's
        moved = arch.transform(t.name, np.ascontiguousarray(rows)) if transforms else rows
        if transforms and moved is not rows:
            _check_row_linear(arch, t.name, rows, moved)
        lora_a, lora_b = (moved, b) if pair.embedding else (a, moved)
        mapped.append(MappedPair(t.name, pair, np.ascontiguousarray(lora_a, np.float32),
                                 np.ascontiguousarray(lora_b, np.float32)))
    return mapped


def _tensor_type(ftype: GGMLQuantizationType, shape: tuple[int, ...]) -> GGMLQuantizationType:
    if ftype == GGMLQuantizationType.Q8_0 and shape[-1] % 32:
        return GGMLQuantizationType.F16  # as llama.cpp's converter falls back
    return ftype


def convert_adapter(adapter_dir: str | Path, base: str | Path, out: str | Path, ftype: str = "f32", *,
                    overwrite: bool = False) -> AdapterResult:
    """Write llama.cpp's LoRA GGUF of the PEFT adapter ``adapter_dir`` trained on ``base`` (an HF folder)."""
    from .quant import quantize
    from .source.lora import PeftAdapter
    from .writer import GGUFStreamWriter, check_output_path

    t0 = time.monotonic()
    qtype = ADAPTER_TYPES.get(ftype.strip().lower())
    if qtype is None:
        raise SlimedgeError(f"--type {ftype}: an adapter is written as f32, f16, bf16 or q8_0")
    out = check_output_path(Path(out), overwrite)
    adapter = PeftAdapter(adapter_dir)
    source, arch = _open_base(base)
    mapped = map_adapter(adapter, source, arch)
    with GGUFStreamWriter(out, arch.arch, overwrite=overwrite) as w:
        w.add_kv(Keys.General.TYPE, "adapter", STR)
        w.add_kv(Keys.Adapter.TYPE, "lora", STR)
        w.add_kv(Keys.General.NAME, adapter.name, STR)
        w.add_kv(Keys.Adapter.LORA_ALPHA, adapter.alpha, F32)
        tokens = adapter.invocation_tokens
        if tokens:
            w.add_kv(Keys.Adapter.ALORA_INVOCATION_TOKENS, tokens, GGUFValueType.ARRAY, U32)
        w.add_kv(Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION, U32)
        w.add_kv("slimedge.version", __version__, STR)
        w.add_kv("slimedge.adapter.base", source.name, STR)
        items = [(f"{m.gguf}.lora_{s}", x) for m in mapped for s, x in (("a", m.lora_a), ("b", m.lora_b))]
        types = [_tensor_type(qtype, x.shape) for _, x in items]
        for (name, x), q in zip(items, types):
            w.add_tensor_info(name, x.shape, q)
        w.begin_data()
        for (name, x), q in zip(items, types):
            w.write_tensor(name, x if q == GGMLQuantizationType.F32 else quantize(x, q, what=name))
    size = out.stat().st_size
    log.info("%s: LoRA adapter for %s, %d pairs, alpha %g", out, arch.arch, len(mapped), adapter.alpha)
    return AdapterResult(out, arch.arch, adapter.alpha, mapped, time.monotonic() - t0, size)


def merge_hook(adapter_dir: str | Path, scale: float = 1.0):
    """A ``source_hook`` for :func:`slimedge.convert.convert`: each base tensor the adapter changes is read as
    ``W + scale * alpha / r * B @ A`` (before the architecture's transform, as the merged checkpoint would be)."""
    from .source.lora import MergedRef, PeftAdapter

    adapter = PeftAdapter(adapter_dir)

    def hook(source, arch) -> None:
        used = {t.origin for t in arch.tensors(source)}
        for pair in adapter.pairs:
            ref = source.tensors.get(pair.base)
            if pair.base.endswith("lm_head.weight") and (ref is None or arch.hp.tied):
                raise SlimedgeError(f"{adapter.dir}: the adapter targets {pair.base}, but the base ties it to the "
                                    f"token embedding; merging would change the embedding too (untie the base first)")
            if ref is None:
                raise _refuse_other_base(adapter, f"it changes {pair.base}, which the base does not have")
            if tuple(ref.shape) != pair.delta_shape:
                raise _refuse_other_base(adapter, f"{pair.base} is {list(ref.shape)} in the base but the LoRA pair "
                                                  f"makes {list(pair.delta_shape)}")
            if ref.where not in used:
                raise SlimedgeError(f"{adapter.dir}: the adapter targets {pair.base}, which the {arch.arch} GGUF "
                                    f"does not contain; its change would be lost")
            if getattr(ref, "stored_type", None) is not None or ref.dtype not in ("F32", "F16", "BF16", "F64"):
                raise SlimedgeError(f"{ref.file}: {pair.base} is stored quantized; merge into a float checkpoint")
            source.tensors[pair.base] = MergedRef.of(ref, pair, scale * adapter.scale(pair))
        log.info("merging %d LoRA pairs of %s (alpha %g, scale %g)", len(adapter.pairs), adapter.dir,
                 adapter.alpha, scale)

    return hook


def convert_merged(adapter_dir: str | Path, base: str | Path, out: str | Path, spec=None, *, scale: float = 1.0,
                   **kwargs):
    """Fold the adapter into ``base`` and convert the result as :func:`slimedge.convert.convert` does (one
    streaming pass: the delta is added to each slice of rows as it is read)."""
    from .convert import convert
    from .quant.mixes import QuantSpec

    return convert(base, out, spec or QuantSpec(), source_hook=merge_hook(adapter_dir, scale), **kwargs)
