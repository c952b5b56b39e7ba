"""Phi-3.5-MoE (``PhiMoEForCausalLM``; transformers' ``PhimoeForCausalLM``) → GGUF architecture ``phimoe``.

Separate q/k/v projections with biases, neox rope with Phi-3's long-context factors (the rope keys and
``rope_factors_long``/``_short`` tensors of :class:`slimedge.arch.phi3.Phi3`), norms with a weight and a
bias (``input_layernorm``, ``post_attention_layernorm``, ``model.norm``), ``lm_head`` with a bias, and
Mixtral's expert layout: router ``block_sparse_moe.gate`` → ``ffn_gate_inp``, ``experts.{e}.w1/w3/w2``
stacked into ``ffn_gate_exps``/``ffn_up_exps``/``ffn_down_exps`` (:mod:`slimedge.arch.moe`, streamed).

llama.cpp computes this family differently from transformers: its phimoe graph (Phi-3's) applies the
norms as RMSNorm plus bias where transformers uses LayerNorm, and routes by softmax over the top-2
renormalized where transformers uses PhiMoE's "sparsemixer". The GGUF is therefore what llama.cpp's
converter writes for the checkpoint (same tensors and keys), and its outputs follow llama.cpp's graph.
llama.cpp requires the attention output and lm_head biases (``attention_bias`` and ``lm_head_bias``
true, as released): configs without them are refused.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from .mixtral import MIXTRAL_EXPERTS
from .moe import MoEArch
from .phi3 import Phi3

T = MODEL_TENSOR
L = "model.layers.{bid}."
A = L + "self_attn."


class PhiMoe(MoEArch, Phi3):
    hf_names = ("PhiMoEForCausalLM", "PhimoeForCausalLM")
    gguf_arch = MODEL_ARCH.PHIMOE
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "input_layernorm.weight", T.ATTN_NORM, True),
        (L + "input_layernorm.bias", T.ATTN_NORM, True),
        (A + "q_proj.weight", T.ATTN_Q, True),
        (A + "q_proj.bias", T.ATTN_Q, True),
        (A + "k_proj.weight", T.ATTN_K, True),
        (A + "k_proj.bias", T.ATTN_K, True),
        (A + "v_proj.weight", T.ATTN_V, True),
        (A + "v_proj.bias", T.ATTN_V, True),
        (A + "o_proj.weight", T.ATTN_OUT, True),
        (A + "o_proj.bias", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.FFN_NORM, True),
        (L + "post_attention_layernorm.bias", T.FFN_NORM, True),
        (L + "block_sparse_moe.gate.weight", T.FFN_GATE_INP, True),
        (MIXTRAL_EXPERTS[0].name, T.FFN_GATE_EXP, True),
        (MIXTRAL_EXPERTS[1].name, T.FFN_UP_EXP, True),
        (MIXTRAL_EXPERTS[2].name, T.FFN_DOWN_EXP, True),
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("model.norm.bias", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),
        ("lm_head.bias", T.OUTPUT, True),
    ]
    EXPERTS = MIXTRAL_EXPERTS
    N_EXPERT_KEYS = ("num_local_experts", "num_experts")
    N_FF_EXP_KEY = "intermediate_size"

    def __init__(self, config: dict, hf_arch: str):
        if config.get("tie_word_embeddings"):
            raise SlimedgeError(f"config.json: {hf_arch} with tie_word_embeddings is not supported (llama.cpp's "
                                f"phimoe needs its own lm_head with a bias)")
        super().__init__(config, hf_arch)
        missing = [k for k in ("attention_bias", "lm_head_bias") if not config.get(k)]
        if missing:
            raise SlimedgeError(f"config.json: {hf_arch} without {' and '.join(missing)} is not supported "
                                f"(llama.cpp's phimoe requires the attention output and lm_head biases)")

    def expected_shape(self, tensor, is_bias):
        if tensor == T.OUTPUT and is_bias:
            return (self.hp.n_vocab,)
        return super().expected_shape(tensor, is_bias)
