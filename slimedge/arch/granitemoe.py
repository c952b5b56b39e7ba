"""Granite 3.x MoE (``GraniteMoeForCausalLM``: granite-3.0/3.1 1b-a400m and 3b-a800m) → GGUF ``granitemoe``.

Granite's attention and scalar multipliers (:mod:`slimedge.arch.granite`: Llama's names and q/k
permutation, ``embedding_scale``/``residual_scale``/``attention.scale``/``logit_scale``) with a mixture
of experts in every layer, stored the JetMoE way: ``block_sparse_moe.input_linear.weight``
[n_expert, 2·n_ff, n_embd] (gate rows first in each expert) is read as two stacked tensors
``ffn_gate_exps``/``ffn_up_exps`` (:mod:`slimedge.arch.moe`, streamed, no copy),
``block_sparse_moe.output_linear.weight`` [n_expert, n_embd, n_ff] is ``ffn_down_exps`` and the router
``block_sparse_moe.router.layer.weight`` is ``ffn_gate_inp``. The expert size is ``intermediate_size``.
The released models tie their embeddings; llama.cpp's granitemoe falls back to ``token_embd``.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from .granite import Granite
from .llama import LLAMA_TENSORS
from .moe import Experts, MoEArch

T = MODEL_TENSOR
L = "model.layers.{bid}."
M = L + "block_sparse_moe."

GRANITEMOE_EXPERTS = [  # only the fused form exists: the "per expert" name is the fused tensor (for messages)
    Experts(M + "[*].gate.weight", M + "input_linear.weight", (M + "input_linear.weight",), 0, 2),
    Experts(M + "[*].up.weight", M + "input_linear.weight", (M + "input_linear.weight",), 1, 2),
    Experts(M + "[*].down.weight", M + "output_linear.weight", (M + "output_linear.weight",)),
]

_DENSE_FFN = {T.FFN_GATE, T.FFN_UP, T.FFN_DOWN}


def _table():
    rows = []
    for hf, t, required in LLAMA_TENSORS:
        if t in _DENSE_FFN:
            if hf.endswith("mlp.gate_proj.weight"):  # the dense FFN's place in the block
                rows += [(M + "router.layer.weight", T.FFN_GATE_INP, True),
                         (GRANITEMOE_EXPERTS[0].name, T.FFN_GATE_EXP, True),
                         (GRANITEMOE_EXPERTS[1].name, T.FFN_UP_EXP, True),
                         (GRANITEMOE_EXPERTS[2].name, T.FFN_DOWN_EXP, True)]
            continue
        rows.append((hf, t, required))
    return rows


class GraniteMoe(MoEArch, Granite):
    hf_names = ("GraniteMoeForCausalLM",)
    gguf_arch = MODEL_ARCH.GRANITE_MOE
    TENSORS = _table()
    EXPERTS = GRANITEMOE_EXPERTS
    N_EXPERT_KEYS = ("num_local_experts",)
    N_FF_EXP_KEY = "intermediate_size"
