"""Qwen3 (``Qwen3ForCausalLM``: Qwen3 0.6B … 32B, DeepSeek-R1-0528-Qwen3 distills) → GGUF architecture ``qwen3``.

Llama's tensor names without Qwen2's q/k/v biases (optional, for ``attention_bias`` variants), plus a
per-head RMSNorm on queries and keys (``q_norm``/``k_norm``: ``head_dim`` weights shared by all heads,
applied before rope). llama.cpp ropes Qwen3 in the neox layout: no q/k permutation. ``head_dim`` is
stated in config.json and usually differs from hidden/heads (Qwen3-0.6B: 1024 / 16 heads, head_dim 128);
the common metadata then writes ``attention.key_length``/``value_length``. Small models tie embeddings.

:data:`QK_NORM_TENSORS` is the q/k-norm part of the table, for other Qwen3-style families (Qwen3-MoE).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from .base import Arch
from .llama import LLAMA_TENSORS

T = MODEL_TENSOR
L = "model.layers.{bid}."

# per-head RMSNorm weights of queries and keys: float[head_dim] each
QK_NORM_TENSORS = [
    (L + "self_attn.q_norm.weight", T.ATTN_Q_NORM, True),
    (L + "self_attn.k_norm.weight", T.ATTN_K_NORM, True),
]


def with_qk_norms(table: list[tuple[str, MODEL_TENSOR, bool]]) -> list[tuple[str, MODEL_TENSOR, bool]]:
    """``table`` with :data:`QK_NORM_TENSORS` inserted right after the k projection (llama.cpp's order)."""
    at = next(i for i, (hf, _, _) in enumerate(table) if hf.endswith("self_attn.k_proj.weight")) + 1
    return table[:at] + QK_NORM_TENSORS + table[at:]


def refuse_sliding_window(config: dict, hf_arch: str) -> None:
    """llama.cpp's qwen3-style graphs have no sliding window: refuse a config that turns one on."""
    if config.get("use_sliding_window") and config.get("sliding_window"):
        raise SlimedgeError(f"config.json: {hf_arch} with use_sliding_window=true is not supported (llama.cpp's "
                            f"graph attends to the whole context); set use_sliding_window to false")


class Qwen3(Arch):
    hf_names = ("Qwen3ForCausalLM",)
    gguf_arch = MODEL_ARCH.QWEN3
    TENSORS = with_qk_norms(LLAMA_TENSORS)

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        refuse_sliding_window(config, hf_arch)

    def expected_shape(self, tensor, is_bias):
        if tensor in (T.ATTN_Q_NORM, T.ATTN_K_NORM):
            return (self.hp.head_dim,)
        return super().expected_shape(tensor, is_bias)
