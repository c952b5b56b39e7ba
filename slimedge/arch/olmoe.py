"""OLMoE (``OlmoeForCausalLM``: OLMoE-1B-7B-0924 / -0125 and their Instruct) → GGUF architecture ``olmoe``.

A pre-norm decoder (``input_layernorm``/``post_attention_layernorm``) whose attention has OLMo 2's q/k
RMSNorms over the whole projection (``q_norm``: n_head·head_dim weights, ``k_norm``: n_head_kv·head_dim),
neox rope (no permutation), no grouped-query attention (as released), and a mixture of experts in every
layer: router ``mlp.gate`` → ``ffn_gate_inp``, ``mlp.experts.{e}.*_proj`` stacked into ``ffn_*_exps``
(:mod:`slimedge.arch.moe`, streamed) of ``intermediate_size`` rows (OLMoE's expert size; no dense FFN).

llama.cpp's olmoe graph never renormalizes the top-k router weights (``norm_topk_prob: false``, as
released; ``true`` converts with a warning) and requires ``output.weight`` (a tied checkpoint stores
the embedding twice). ``clip_qkv`` is not in llama.cpp's graph and is refused.
"""

from __future__ import annotations

import logging

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from .base import Arch
from .moe import MoEArch
from .qwen3moe import QWEN3MOE_EXPERTS, ROUTED_EXPERT_TENSORS

log = logging.getLogger(__name__)

T = MODEL_TENSOR
L = "model.layers.{bid}."


class Olmoe(MoEArch, Arch):
    hf_names = ("OlmoeForCausalLM",)
    gguf_arch = MODEL_ARCH.OLMOE
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "input_layernorm.weight", T.ATTN_NORM, True),
        (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
        (L + "self_attn.k_proj.weight", T.ATTN_K, True),
        (L + "self_attn.v_proj.weight", T.ATTN_V, True),
        (L + "self_attn.q_norm.weight", T.ATTN_Q_NORM, True),
        (L + "self_attn.k_norm.weight", T.ATTN_K_NORM, True),
        (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.FFN_NORM, True),
        *ROUTED_EXPERT_TENSORS,
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # unless tied: then a copy of the embedding
    ]
    EXPERTS = QWEN3MOE_EXPERTS
    N_EXPERT_KEYS = ("num_experts", "num_local_experts")
    N_FF_EXP_KEY = "intermediate_size"
    OUTPUT_REQUIRED = True

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        hp = self.hp
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise SlimedgeError(f"config.json: {hf_arch} with head_dim {hp.head_dim} x {hp.n_head} heads != "
                                f"hidden_size {hp.n_embd} is not supported (llama.cpp's olmoe takes "
                                f"head_dim = hidden_size / heads)")
        if hp.n_head_kv != hp.n_head:
            raise SlimedgeError(f"config.json: {hf_arch} with {hp.n_head_kv} kv heads for {hp.n_head} heads is not "
                                f"supported (llama.cpp's olmoe has no grouped-query attention: its k_norm spans "
                                f"hidden_size)")
        if config.get("clip_qkv") is not None:
            raise SlimedgeError(f"config.json: {hf_arch} with clip_qkv {config['clip_qkv']} is not supported "
                                f"(llama.cpp's olmoe does not clip q/k/v); set clip_qkv to null")
        if config.get("norm_topk_prob"):
            log.warning("config.json: norm_topk_prob is true but llama.cpp's olmoe never renormalizes the "
                        "top-%d router weights; the converted model's outputs will differ from transformers'",
                        self.n_expert_used)

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.ATTN_Q_NORM:
            return (hp.n_head * hp.head_dim,)
        if tensor == T.ATTN_K_NORM:
            return (hp.n_head_kv * hp.head_dim,)
        return super().expected_shape(tensor, is_bias)
