"""Qwen2-MoE (``Qwen2MoeForCausalLM``: Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B) → GGUF architecture ``qwen2moe``.

Qwen2 attention (q/k/v biases, neox rope: no permutation) and in every layer a mixture of experts plus
one **shared expert** that every token goes through, scaled by a sigmoid gate:
``mlp.gate`` → ``ffn_gate_inp`` (router), ``mlp.experts.{e}.*_proj`` stacked into ``ffn_*_exps``
(:mod:`slimedge.arch.moe`, streamed) of ``moe_intermediate_size`` rows, ``mlp.shared_expert.*_proj`` →
``ffn_{gate,up,down}_shexp`` of ``shared_expert_intermediate_size`` rows and ``mlp.shared_expert_gate``
[1, n_embd] → ``ffn_gate_inp_shexp``.

llama.cpp's qwen2moe graph never renormalizes the top-k router weights (``norm_topk_prob: false``, as the
released models); a config with ``norm_topk_prob: true`` converts with a warning. Its graph has no
fallback from ``output`` to ``token_embd``, so a tied checkpoint stores the embedding twice; it has no
sliding window and no dense layers (both refused).
"""

from __future__ import annotations

import logging

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from .base import KV, U32, Arch
from .moe import Experts, MoEArch
from .qwen3 import refuse_sliding_window
from .qwen3moe import QWEN3MOE_EXPERTS, ROUTED_EXPERT_TENSORS, refuse_dense_layers

log = logging.getLogger(__name__)

T = MODEL_TENSOR
L = "model.layers.{bid}."
S = L + "mlp.shared_expert."

# the MoE block of Qwen2-MoE-style tables: router, stacked experts, shared expert and its gate
SHARED_EXPERT_TENSORS = [
    *ROUTED_EXPERT_TENSORS,
    (L + "mlp.shared_expert_gate.weight", T.FFN_GATE_INP_SHEXP, True),
    (S + "gate_proj.weight", T.FFN_GATE_SHEXP, True),
    (S + "up_proj.weight", T.FFN_UP_SHEXP, True),
    (S + "down_proj.weight", T.FFN_DOWN_SHEXP, True),
]


class Qwen2Moe(MoEArch, Arch):
    hf_names = ("Qwen2MoeForCausalLM",)
    gguf_arch = MODEL_ARCH.QWEN2MOE
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "input_layernorm.weight", T.ATTN_NORM, True),
        (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
        (L + "self_attn.k_proj.weight", T.ATTN_K, True),
        (L + "self_attn.v_proj.weight", T.ATTN_V, True),
        (L + "self_attn.q_proj.bias", T.ATTN_Q, False),  # qkv_bias (true in the released models)
        (L + "self_attn.k_proj.bias", T.ATTN_K, False),
        (L + "self_attn.v_proj.bias", T.ATTN_V, False),
        (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.FFN_NORM, True),
        *SHARED_EXPERT_TENSORS,
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # unless tied: then a copy of the embedding
    ]
    EXPERTS: list[Experts] = QWEN3MOE_EXPERTS
    N_EXPERT_KEYS = ("num_experts", "num_local_experts")
    N_FF_EXP_KEY = "moe_intermediate_size"
    OUTPUT_REQUIRED = True

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        refuse_sliding_window(config, hf_arch)
        refuse_dense_layers(config, hf_arch, "qwen2moe")
        self.n_ff_shexp = int(config.get("shared_expert_intermediate_size") or 0)
        if self.n_ff_shexp <= 0:
            raise SlimedgeError(f"config.json: {hf_arch} needs shared_expert_intermediate_size (llama.cpp's "
                                f"qwen2moe has a shared expert in every layer); fix config.json")
        if config.get("norm_topk_prob"):
            log.warning("config.json: norm_topk_prob is true but llama.cpp's qwen2moe never renormalizes the "
                        "top-%d router weights; the converted model's outputs will differ from transformers'",
                        self.n_expert_used)

    def expected_shape(self, tensor, is_bias):
        hp, sh = self.hp, self.n_ff_shexp
        shapes = {T.FFN_GATE_SHEXP: (sh, hp.n_embd), T.FFN_UP_SHEXP: (sh, hp.n_embd),
                  T.FFN_DOWN_SHEXP: (hp.n_embd, sh), T.FFN_GATE_INP_SHEXP: (1, hp.n_embd)}
        if tensor in shapes:
            return None if is_bias else shapes[tensor]
        return super().expected_shape(tensor, is_bias)

    def metadata(self) -> list[KV]:
        return super().metadata() + [KV(self.key(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), self.n_ff_exp, U32),
                                     KV(self.key(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH), self.n_ff_shexp, U32)]
