"""Qwen3-MoE (``Qwen3MoeForCausalLM``: Qwen3-30B-A3B, Qwen3-235B-A22B) → GGUF architecture ``qwen3moe``.

Qwen3 attention (no q/k/v bias, per-head RMSNorm of q and k: ``attn_q_norm``/``attn_k_norm`` of
head_dim values, neox rope so no q/k permutation) and a mixture-of-experts feed-forward in every
layer: router ``mlp.gate`` → ``ffn_gate_inp``, experts ``gate_proj``/``up_proj``/``down_proj`` stacked
into ``ffn_gate_exps``/``ffn_up_exps``/``ffn_down_exps`` (:mod:`slimedge.arch.moe`, streamed expert by
expert) of ``moe_intermediate_size`` rows (``expert_feed_forward_length``).

llama.cpp's qwen3moe graph always renormalizes the top-k router weights (the ``norm_topk_prob: true`` of
the released models); a config with ``norm_topk_prob: false`` converts with a warning that llama.cpp's
outputs will differ. Dense layers inside the stack (``mlp_only_layers``, ``decoder_sparse_step`` > 1)
do not exist in llama.cpp's qwen3moe and are refused.

The q/k-norm rows and the sliding-window refusal are dense Qwen3's (:mod:`slimedge.arch.qwen3`).
"""

from __future__ import annotations

import logging

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from .base import KV, U32, Arch
from .moe import Experts, MoEArch
from .qwen3 import refuse_sliding_window, with_qk_norms

log = logging.getLogger(__name__)

T = MODEL_TENSOR
L = "model.layers.{bid}."
E = L + "mlp.experts."

QWEN3MOE_EXPERTS = [
    Experts(E + "[*].gate_proj.weight", E + "{xid}.gate_proj.weight",
            (E[:-1] + ".gate_up_proj", E + "gate_up_proj.weight"), 0, 2),
    Experts(E + "[*].up_proj.weight", E + "{xid}.up_proj.weight",
            (E[:-1] + ".gate_up_proj", E + "gate_up_proj.weight"), 1, 2),
    Experts(E + "[*].down_proj.weight", E + "{xid}.down_proj.weight",
            (E[:-1] + ".down_proj", E + "down_proj.weight")),
]


# the routed-expert rows every Qwen-MoE-style table shares: router, then the three stacked expert tensors
ROUTED_EXPERT_TENSORS = [
    (L + "mlp.gate.weight", T.FFN_GATE_INP, True),
    (QWEN3MOE_EXPERTS[0].name, T.FFN_GATE_EXP, True),
    (QWEN3MOE_EXPERTS[1].name, T.FFN_UP_EXP, True),
    (QWEN3MOE_EXPERTS[2].name, T.FFN_DOWN_EXP, True),
]


def refuse_dense_layers(config: dict, hf_arch: str, arch: str) -> None:
    """llama.cpp's Qwen-MoE-style graphs have experts in every layer: refuse ``mlp_only_layers`` /
    ``decoder_sparse_step`` > 1 in one line."""
    dense = config.get("mlp_only_layers") or []
    step = int(config.get("decoder_sparse_step") or 1)
    if dense or step != 1:
        raise SlimedgeError(f"config.json: {hf_arch} with dense layers (mlp_only_layers {dense}, "
                            f"decoder_sparse_step {step}) is not supported: llama.cpp's {arch} has experts "
                            f"in every layer")


class Qwen3Moe(MoEArch, Arch):
    hf_names = ("Qwen3MoeForCausalLM",)
    gguf_arch = MODEL_ARCH.QWEN3MOE
    TENSORS = with_qk_norms([
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "input_layernorm.weight", T.ATTN_NORM, True),
        (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
        (L + "self_attn.k_proj.weight", T.ATTN_K, True),
        (L + "self_attn.v_proj.weight", T.ATTN_V, True),
        (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.FFN_NORM, True),
        *ROUTED_EXPERT_TENSORS,
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings
    ])
    EXPERTS = QWEN3MOE_EXPERTS
    N_EXPERT_KEYS = ("num_experts", "num_local_experts")
    N_FF_EXP_KEY = "moe_intermediate_size"

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        refuse_sliding_window(config, hf_arch)
        refuse_dense_layers(config, hf_arch, "qwen3moe")
        if config.get("norm_topk_prob") is False:
            log.warning("config.json: norm_topk_prob is false but llama.cpp's qwen3moe always renormalizes the "
                        "top-%d router weights; the converted model's outputs will differ from transformers'",
                        self.n_expert_used)

    def expected_shape(self, tensor, is_bias):
        if tensor in (T.ATTN_Q_NORM, T.ATTN_K_NORM):
            return (self.hp.head_dim,)
        return super().expected_shape(tensor, is_bias)

    def metadata(self) -> list[KV]:
        return super().metadata() + [KV(self.key(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), self.n_ff_exp, U32)]
