"""StableLM (``StableLmForCausalLM``: StableLM 2 1.6B, stablelm-3b-4e1t, Zephyr 3B) → GGUF architecture ``stablelm``.

Llama's tensor names with LayerNorm (weight and bias: ``input_layernorm``, ``post_attention_layernorm``,
``model.norm``), optional q/k/v biases (``use_qkv_bias``), a gated SiLU MLP and partial rotary embeddings
(``partial_rotary_factor``, 0.25 in the released models) in the neox layout (no permutation). A
``use_parallel_residual`` model has no ``post_attention_layernorm``; llama.cpp's stablelm runs the MLP on
the attention's input then. The per-head q/k LayerNorms of StableLM 2 12B (``qk_layernorm``) are refused.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from ._layernorm import LayerNormArch

T = MODEL_TENSOR
L = "model.layers.{bid}."


class StableLm(LayerNormArch):
    hf_names = ("StableLmForCausalLM", "StableLMEpochForCausalLM")
    gguf_arch = MODEL_ARCH.STABLELM
    DEFAULT_ROTARY = 0.25
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "input_layernorm.weight", T.ATTN_NORM, True),
        (L + "input_layernorm.bias", T.ATTN_NORM, True),
        (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
        (L + "self_attn.q_proj.bias", T.ATTN_Q, False),
        (L + "self_attn.k_proj.weight", T.ATTN_K, True),
        (L + "self_attn.k_proj.bias", T.ATTN_K, False),
        (L + "self_attn.v_proj.weight", T.ATTN_V, True),
        (L + "self_attn.v_proj.bias", T.ATTN_V, False),
        (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.FFN_NORM, False),  # absent with use_parallel_residual
        (L + "post_attention_layernorm.bias", T.FFN_NORM, False),
        (L + "mlp.gate_proj.weight", T.FFN_GATE, True),
        (L + "mlp.up_proj.weight", T.FFN_UP, True),
        (L + "mlp.down_proj.weight", T.FFN_DOWN, True),
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("model.norm.bias", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # llama.cpp's stablelm requires it: see tensors()
    ]

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        if config.get("qk_layernorm"):
            raise SlimedgeError(f"config.json: {hf_arch} with qk_layernorm=true (StableLM 2 12B's per-head q/k "
                                f"norms) is not supported yet; only models without it convert")
        if self.hp.tied:
            raise SlimedgeError(f"config.json: {hf_arch} with tie_word_embeddings=true is not supported "
                                f"(llama.cpp's stablelm needs its own output.weight)")
        self.hp.tied = False
