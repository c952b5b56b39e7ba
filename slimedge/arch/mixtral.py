"""Mixtral (``MixtralForCausalLM``: Mixtral 8x7B / 8x22B and small MoEs of its layout) → GGUF ``llama``.

llama.cpp runs Mixtral as a Llama whose feed-forward is a mixture of experts: attention as Llama's
(q/k rows permuted for its interleaved rope), the router ``block_sparse_moe.gate`` → ``ffn_gate_inp``
and each layer's experts ``w1``/``w3``/``w2`` stacked into ``ffn_gate_exps``/``ffn_up_exps``/``ffn_down_exps``
(:mod:`slimedge.arch.moe`, streamed expert by expert), plus ``expert_count``/``expert_used_count``.
Hub checkpoints store one tensor per expert; transformers' fused ``mlp.experts.gate_up_proj`` /
``down_proj`` (and router ``mlp.gate``) are read too. The router's top-k weights are renormalized, as
llama.cpp's graph does for this architecture.
"""

from __future__ import annotations

from gguf import MODEL_TENSOR

from .llama import LLAMA_TENSORS, Llama
from .moe import Experts, MoEArch

T = MODEL_TENSOR
L = "model.layers.{bid}."
E = L + "block_sparse_moe.experts."

MIXTRAL_EXPERTS = [
    Experts(E + "[*].w1.weight", E + "{xid}.w1.weight", (L + "mlp.experts.gate_up_proj",
                                                         L + "mlp.experts.gate_up_proj.weight"), 0, 2),
    Experts(E + "[*].w3.weight", E + "{xid}.w3.weight", (L + "mlp.experts.gate_up_proj",
                                                         L + "mlp.experts.gate_up_proj.weight"), 1, 2),
    Experts(E + "[*].w2.weight", E + "{xid}.w2.weight", (L + "mlp.experts.down_proj",
                                                         L + "mlp.experts.down_proj.weight")),
]

_DENSE_FFN = {T.FFN_GATE, T.FFN_UP, T.FFN_DOWN}


def _moe_table():
    rows = []
    for hf, t, required in LLAMA_TENSORS:
        if t in _DENSE_FFN:
            if hf.endswith("mlp.gate_proj.weight"):  # the dense FFN's place in the block
                rows += [(L + "block_sparse_moe.gate.weight", T.FFN_GATE_INP, True),
                         (MIXTRAL_EXPERTS[0].name, T.FFN_GATE_EXP, True),
                         (MIXTRAL_EXPERTS[1].name, T.FFN_UP_EXP, True),
                         (MIXTRAL_EXPERTS[2].name, T.FFN_DOWN_EXP, True)]
            continue
        rows.append((hf, t, required))
    return rows


class Mixtral(MoEArch, Llama):
    hf_names = ("MixtralForCausalLM",)
    TENSORS = _moe_table()
    EXPERTS = MIXTRAL_EXPERTS
    ALIASES = [(L + "mlp.gate.weight", L + "block_sparse_moe.gate.weight")]
    N_EXPERT_KEYS = ("num_local_experts",)
    N_FF_EXP_KEY = "intermediate_size"
