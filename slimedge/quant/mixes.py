"""Per-tensor type choice: llama.cpp's quantization mixes (Q4_K_M, ...) and user overrides.

Input: the GGUF tensor names and shapes of a model plus a :class:`QuantSpec`; output: one GGML type
per tensor. (Skeleton: single types only; the llama.cpp mix rules replace this.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gguf import GGMLQuantizationType as T

from ..errors import SlimedgeError
from .formats import get_format, qtype_of


@dataclass
class TensorSpec:
    name: str  # GGUF tensor name, e.g. "blk.0.attn_v.weight"
    shape: tuple[int, ...]  # NumPy order: the last dimension is the row length (GGUF ne[0])


@dataclass
class ModelInfo:
    arch: str  # GGUF architecture name: "llama", "qwen2", "phi3", ...
    n_layer: int
    n_head: int = 1
    n_head_kv: int = 1
    n_expert: int = 0


@dataclass
class QuantSpec:
    ftype: str = "F16"  # a mix (Q4_K_M, Q3_K_S, ...) or a single type (F32, F16, BF16, Q8_0, Q4_K, ...)
    overrides: list[tuple[str, str]] = field(default_factory=list)  # (regex on GGUF name, type), first match wins
    output_tensor_type: str | None = None  # type of output.weight (None: the mix decides)
    token_embedding_type: str | None = None  # type of token_embd.weight (None: the mix decides)
    pure: bool = False  # same type for every 2-D tensor: no promotions, no mix rules


def _fits(qtype: T, n_per_row: int) -> bool:
    return n_per_row % get_format(qtype).block_size == 0


def choose_types(tensors: list[TensorSpec], spec: QuantSpec, model: ModelInfo) -> list[T]:
    """Type of each tensor, in order. 1-D tensors (norms, biases) stay F32."""
    base = qtype_of(spec.ftype)
    out = []
    for t in tensors:
        q = base
        if len(t.shape) < 2:
            q = T.F32
        if t.name == "output.weight" and spec.output_tensor_type:
            q = qtype_of(spec.output_tensor_type)
        if t.name == "token_embd.weight" and spec.token_embedding_type:
            q = qtype_of(spec.token_embedding_type)
        for pattern, typ in spec.overrides:
            if re.search(pattern, t.name):
                q = qtype_of(typ)
                break
        if not _fits(q, t.shape[-1]):
            q = T.F16
        out.append(q)
    return out


def file_type(spec: QuantSpec) -> int:
    """``general.file_type`` value (gguf.LlamaFileType) for the spec."""
    import gguf

    try:
        return int(gguf.LlamaFileType[f"MOSTLY_{spec.ftype.upper()}"])
    except KeyError:
        if spec.ftype.upper() == "F32":
            return int(gguf.LlamaFileType.ALL_F32)
        raise SlimedgeError(f"unknown --type {spec.ftype!r}") from None
