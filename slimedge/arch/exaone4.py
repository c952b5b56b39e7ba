"""EXAONE 4 (``Exaone4ForCausalLM``: EXAONE-4.0 1.2B and 32B) → GGUF architecture ``exaone4``.

OLMo 2's post-norm block (``post_attention_layernorm`` → post_attention_norm, ``post_feedforward_layernorm``
→ post_ffw_norm, no pre-norms) with Qwen3's per-head q/k RMSNorms (``head_dim`` weights; heads x head_dim
must be the hidden size, as llama.cpp sizes the attention output). Rope is neox (no permutation); "llama3"
rope scaling becomes a ``rope_freqs`` tensor as for Llama 3.

Sliding window: transformers' EXAONE 4 ropes only the sliding layers once a ``sliding_window`` is set (the
global layers are NoPE); llama.cpp's exaone4 does the same, but turns the window on only for its 64-layer
(32B) shape and otherwise ropes every layer with no window. So a config with a window converts only with 64
layers (window and ``layer_types`` pattern written, as llama.cpp's converter does); without a window
(EXAONE-4.0-1.2B) every layer ropes in both.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from .base import BOOL, KV, U32, Arch
from .llama import Llama
from .qwen3 import QK_NORM_TENSORS

T = MODEL_TENSOR
L = "model.layers.{bid}."
SWA_LAYERS = 64  # the only layer count for which llama.cpp's exaone4 uses the sliding window


class Exaone4(Arch):
    hf_names = ("Exaone4ForCausalLM",)
    gguf_arch = MODEL_ARCH.EXAONE4
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
        (L + "self_attn.k_proj.weight", T.ATTN_K, True),
        (L + "self_attn.v_proj.weight", T.ATTN_V, True),
        *QK_NORM_TENSORS,
        (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.ATTN_POST_NORM, True),
        (L + "mlp.gate_proj.weight", T.FFN_GATE, True),
        (L + "mlp.up_proj.weight", T.FFN_UP, True),
        (L + "mlp.down_proj.weight", T.FFN_DOWN, True),
        (L + "post_feedforward_layernorm.weight", T.FFN_POST_NORM, True),
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings (EXAONE-4.0-1.2B ties)
    ]

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        hp = self.hp
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise SlimedgeError(f"config.json: {hf_arch} with head_dim {hp.head_dim} x {hp.n_head} heads != "
                                f"hidden_size {hp.n_embd} is not supported (llama.cpp's exaone4 takes an attention "
                                f"output of hidden_size x hidden_size)")
        self.n_swa = int(config.get("sliding_window") or 0)
        self.swa_layers: tuple[bool, ...] = ()
        if not self.n_swa:
            return
        if self.hp.n_layer != SWA_LAYERS:
            raise SlimedgeError(f"config.json: {hf_arch} with a sliding_window and {self.hp.n_layer} layers is not "
                                f"supported (llama.cpp's exaone4 uses the window, and NoPE global layers, only "
                                f"with {SWA_LAYERS} layers); set sliding_window to null")
        types, pattern = config.get("layer_types"), config.get("sliding_window_pattern", 4)
        if isinstance(types, list) and len(types) == self.hp.n_layer:
            self.swa_layers = tuple(t == "sliding_attention" for t in types)
        elif isinstance(pattern, str) and pattern:  # e.g. "LLLG"
            self.swa_layers = tuple(pattern[i % len(pattern)] == "L" for i in range(self.hp.n_layer))
        elif isinstance(pattern, int) and pattern > 0:
            self.swa_layers = tuple((i + 1) % pattern != 0 for i in range(self.hp.n_layer))
        else:
            raise SlimedgeError(f"config.json: {hf_arch} needs layer_types or sliding_window_pattern with its "
                                f"sliding_window; fix config.json")

    def expected_shape(self, tensor, is_bias):
        if tensor in (T.ATTN_Q_NORM, T.ATTN_K_NORM):
            return (self.hp.head_dim,)
        if tensor in (T.ATTN_POST_NORM, T.FFN_POST_NORM):
            return (self.hp.n_embd,)
        return super().expected_shape(tensor, is_bias)

    def extra_tensors(self):
        return Llama.extra_tensors(self)  # llama3 rope scaling -> rope_freqs

    def metadata(self) -> list[KV]:
        kv = super().metadata()
        if self.n_swa:
            k = self.key
            kv += [KV(k(Keys.Attention.SLIDING_WINDOW), self.n_swa, U32),
                   KV(k(Keys.Attention.SLIDING_WINDOW_PATTERN), list(self.swa_layers), GGUFValueType.ARRAY, BOOL)]
        return kv

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        if any(self.swa_layers):
            info.n_swa, info.swa_layers = self.n_swa, self.swa_layers
        return info
