"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``) → GGUF architecture ``qwen2``.

Same layout as Llama plus (required) biases on q/k/v; llama.cpp ropes Qwen2 in the neox layout, so
no q/k permutation. Small Qwen2 models tie their embeddings (no ``lm_head.weight``).
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from .base import Arch
from .llama import LLAMA_TENSORS

_QKV_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")


class Qwen2(Arch):
    hf_names = ("Qwen2ForCausalLM",)
    gguf_arch = MODEL_ARCH.QWEN2
    TENSORS = [(hf, t, required or hf.endswith(_QKV_BIASES)) for hf, t, required in LLAMA_TENSORS]
