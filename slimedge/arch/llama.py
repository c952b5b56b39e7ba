"""Llama (``LlamaForCausalLM``: TinyLlama, Llama 2/3, SmolLM...) → GGUF architecture ``llama``.

llama.cpp applies rope to Llama in the "normal" (interleaved pairs) layout while HF stores q/k rows
in the "neox" half-split layout, so q and k rows are permuted per head (as llama.cpp's converter
does): rows ``[h, 2, d/2]`` → ``[h, d/2, 2]``. Llama 3 rope scaling becomes a ``rope_freqs`` tensor.
"""

from __future__ import annotations

import math

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from .base import KV, U32, Arch, gguf_name

T = MODEL_TENSOR
L = "model.layers.{bid}."

# (HF name, GGUF tensor, required)
LLAMA_TENSORS = [
    ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
    (L + "input_layernorm.weight", T.ATTN_NORM, True),
    (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
    (L + "self_attn.k_proj.weight", T.ATTN_K, True),
    (L + "self_attn.v_proj.weight", T.ATTN_V, True),
    (L + "self_attn.q_proj.bias", T.ATTN_Q, False),  # attention_bias=True variants
    (L + "self_attn.k_proj.bias", T.ATTN_K, False),
    (L + "self_attn.v_proj.bias", T.ATTN_V, False),
    (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
    (L + "self_attn.o_proj.bias", T.ATTN_OUT, False),
    (L + "post_attention_layernorm.weight", T.FFN_NORM, True),
    (L + "mlp.gate_proj.weight", T.FFN_GATE, True),
    (L + "mlp.up_proj.weight", T.FFN_UP, True),
    (L + "mlp.down_proj.weight", T.FFN_DOWN, True),
    (L + "mlp.gate_proj.bias", T.FFN_GATE, False),  # mlp_bias=True variants
    (L + "mlp.up_proj.bias", T.FFN_UP, False),
    (L + "mlp.down_proj.bias", T.FFN_DOWN, False),
    ("model.norm.weight", T.OUTPUT_NORM, True),
    ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings
]


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (neox) q/k row order -> llama.cpp (interleaved) order: w[rows(, cols)] with rows = n_head * d."""
    rows = w.shape[0]
    return np.ascontiguousarray(w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2)).reshape(w.shape)


def llama3_rope_factors(rope: dict, head_dim: int, theta: float) -> np.ndarray:
    """Llama 3 "llama3" rope scaling as per-frequency divisors: float32[head_dim // 2]."""
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid))
    return out.astype(np.float32)


class Llama(Arch):
    hf_names = ("LlamaForCausalLM", "LLaMAForCausalLM")
    gguf_arch = MODEL_ARCH.LLAMA
    TENSORS = LLAMA_TENSORS

    def metadata(self) -> list[KV]:
        return super().metadata() + [KV(self.key(Keys.Rope.DIMENSION_COUNT), self.hp.head_dim, U32)]

    def transform(self, gguf_name_: str, x: np.ndarray) -> np.ndarray:
        # q/k rows are n_head (n_head_kv) heads of head_dim rows; a slice of whole heads permutes alike
        if ".attn_q." in gguf_name_ or ".attn_k." in gguf_name_:
            return permute_rope_rows(x, x.shape[0] // self.hp.head_dim)
        return x

    def row_group(self, gguf_name_: str, shape: tuple[int, ...]) -> int:
        if ".attn_q." in gguf_name_ or ".attn_k." in gguf_name_:
            return self.hp.head_dim  # the permutation stays inside one head
        return 1

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        if str(self.hp.rope.get("rope_type", "")).lower() == "llama3":
            return [(gguf_name(MODEL_TENSOR.ROPE_FREQS, "weight"),
                     llama3_rope_factors(self.hp.rope, self.hp.head_dim, self.hp.rope_theta))]
        return []
