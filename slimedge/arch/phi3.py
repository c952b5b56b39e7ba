"""Phi-3 (``Phi3ForCausalLM``: Phi-3 Mini, Phi-3.5 Mini, Phi-4 Mini) → GGUF architecture ``phi3``.

Phi-3 stores attention as one fused ``qkv_proj`` [q + 2·kv rows, n_embd] and the MLP as one fused
``gate_up_proj`` [2·n_ff, n_embd] (gate rows first); llama.cpp's phi3 graph takes both as they are
(``attn_qkv``, ``ffn_up`` of 2·n_ff rows), rope in the neox layout (no permutation). Long-context
variants (rope type "longrope"/"su") carry per-frequency ``long_factor``/``short_factor`` lists that
become the ``rope_factors_long``/``rope_factors_short`` tensors plus an attention factor key.
"""

from __future__ import annotations

import math

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from .base import KV, U32, F32, Arch, gguf_name

T = MODEL_TENSOR
L = "model.layers.{bid}."


class Phi3(Arch):
    hf_names = ("Phi3ForCausalLM",)
    gguf_arch = MODEL_ARCH.PHI3
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "input_layernorm.weight", T.ATTN_NORM, True),
        (L + "self_attn.qkv_proj.weight", T.ATTN_QKV, True),
        (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.FFN_NORM, True),
        (L + "mlp.gate_up_proj.weight", T.FFN_UP, True),
        (L + "mlp.down_proj.weight", T.FFN_DOWN, True),
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings
    ]

    @property
    def rope_dims(self) -> int:
        frac = float(self.hp.rope.get("partial_rotary_factor", self.config.get("partial_rotary_factor", 1.0)))
        return int(frac * self.hp.n_embd) // self.hp.n_head

    @property
    def orig_ctx(self) -> int:
        return int(self.hp.rope.get("original_max_position_embeddings")
                   or self.config.get("original_max_position_embeddings") or self.hp.n_ctx)

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.ATTN_QKV:
            return ((hp.n_head + 2 * hp.n_head_kv) * hp.head_dim, hp.n_embd)
        if tensor == T.FFN_UP:
            return (2 * hp.n_ff, hp.n_embd)
        return super().expected_shape(tensor, is_bias)

    def metadata(self) -> list[KV]:
        k = self.key  # the common decoder keys (no rope scaling keys: see rope_scaling_metadata) + phi3's own
        kv = super().metadata() + [
            KV(k(Keys.Rope.SCALING_ORIG_CTX_LEN), self.orig_ctx, U32),
            KV(k(Keys.Rope.DIMENSION_COUNT), self.rope_dims, U32),
            KV(k(Keys.Attention.SLIDING_WINDOW), int(self.config.get("sliding_window") or 0), U32),
        ]
        if self._long_factors() is not None:
            kv.append(KV(k(Keys.Rope.SCALING_ATTN_FACTOR), self._attn_factor(), F32))
        return kv

    def _long_factors(self):
        rope = self.hp.rope
        long_f, short_f = rope.get("long_factor"), rope.get("short_factor")
        if not long_f:
            return None
        if not short_f or len(long_f) != len(short_f) or 2 * len(long_f) != self.rope_dims:
            raise SlimedgeError(f"config.json: rope long_factor/short_factor must both have {self.rope_dims // 2} "
                                f"entries (found {len(long_f)} and {len(short_f or [])}); fix config.json")
        return np.asarray(long_f, np.float32), np.asarray(short_f, np.float32)

    def _attn_factor(self) -> float:
        kind = str(self.hp.rope.get("rope_type", "")).lower()
        if "attention_factor" in self.hp.rope and self.hp.rope["attention_factor"] is not None:
            return float(self.hp.rope["attention_factor"])
        scale = self.hp.n_ctx / self.orig_ctx
        if scale <= 1.0:
            return 1.0
        if kind in ("su", "longrope"):
            return math.sqrt(1 + math.log(scale) / math.log(self.orig_ctx))
        if kind == "yarn":
            return 0.1 * math.log(scale) + 1.0
        raise SlimedgeError(f"config.json: rope type {kind!r} with long/short factors is not supported "
                            f"(expected 'longrope')")

    def rope_scaling_metadata(self) -> list[KV]:
        return []

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        factors = self._long_factors()
        if factors is None:
            return []
        return [(gguf_name(T.ROPE_FACTORS_LONG, "weight"), factors[0]),
                (gguf_name(T.ROPE_FACTORS_SHORT, "weight"), factors[1])]
