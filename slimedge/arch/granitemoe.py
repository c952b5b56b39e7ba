"""Granite 3.x MoE (``GraniteMoeForCausalLM``: granite-3.0/3.1 1b-a400m and 3b-a800m) → GGUF ``granitemoe``.

Granite's attention and scalar multipliers (:mod:`slimedge.arch.granite`: Llama's names and q/k
permutation, ``embedding_scale``/``residual_scale``/``attention.scale``/``logit_scale``) with a mixture
of experts in every layer, stored the JetMoE way: ``block_sparse_moe.input_linear.weight``
[n_expert, 2·n_ff, n_embd] (gate rows first in each expert) is read as two stacked tensors
``ffn_gate_exps``/``ffn_up_exps`` (:mod:`slimedge.arch.moe`, streamed, no copy),
``block_sparse_moe.output_linear.weight`` [n_expert, n_embd, n_ff] is ``ffn_down_exps`` and the router
``block_sparse_moe.router.layer.weight`` is ``ffn_gate_inp``. The expert size is ``intermediate_size``.
The released models tie their embeddings; llama.cpp's granitemoe falls back to ``token_embd``.

``GraniteMoeSharedForCausalLM`` adds a shared expert every token goes through: ``shared_mlp.input_linear``
[2·shared_intermediate_size, n_embd] (gate rows first) read as ``ffn_gate_shexp``/``ffn_up_shexp``,
``shared_mlp.output_linear`` as ``ffn_down_shexp``, and ``expert_shared_feed_forward_length``.
"""

from __future__ import annotations

from types import SimpleNamespace

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from .base import KV, U32
from .granite import Granite
from .llama import LLAMA_TENSORS
from .moe import Experts, MoEArch, Part, StackedRef

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


SH = L + "shared_mlp."


class GraniteMoe(MoEArch, Granite):
    hf_names = ("GraniteMoeForCausalLM",)
    gguf_arch = MODEL_ARCH.GRANITE_MOE
    TENSORS = _table()
    EXPERTS = GRANITEMOE_EXPERTS
    N_EXPERT_KEYS = ("num_local_experts",)
    N_FF_EXP_KEY = "intermediate_size"


class GraniteMoeShared(GraniteMoe):
    hf_names = ("GraniteMoeSharedForCausalLM",)
    TENSORS = [*_table()[:-2], (SH + "[gate].weight", T.FFN_GATE_SHEXP, True),
               (SH + "[up].weight", T.FFN_UP_SHEXP, True), (SH + "output_linear.weight", T.FFN_DOWN_SHEXP, True),
               *_table()[-2:]]

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.n_ff_shexp = int(config.get("shared_intermediate_size") or 0)
        if self.n_ff_shexp <= 0:
            raise SlimedgeError(f"config.json: {hf_arch} needs shared_intermediate_size (found "
                                f"{config.get('shared_intermediate_size')!r}); fix config.json")

    def expected_shape(self, tensor, is_bias):
        d, sh = self.hp.n_embd, self.n_ff_shexp
        shapes = {T.FFN_GATE_SHEXP: (sh, d), T.FFN_UP_SHEXP: (sh, d), T.FFN_DOWN_SHEXP: (d, sh)}
        return shapes[tensor] if tensor in shapes else super().expected_shape(tensor, is_bias)

    def tensors(self, source):
        refs, sh = dict(source.tensors), self.n_ff_shexp
        for bid in range(self.hp.n_layer):
            fused = SH.format(bid=bid) + "input_linear.weight"
            ref = refs.pop(fused, None)
            if ref is None:
                raise SlimedgeError(f"{source.model_dir}: missing tensor {fused}, which {self.hf_arch} needs; "
                                    f"the checkpoint is incomplete")
            if tuple(ref.shape) != (2 * sh, self.hp.n_embd):
                raise SlimedgeError(f"{ref.file}: tensor {fused} has shape {list(ref.shape)} but config.json implies "
                                    f"{[2 * sh, self.hp.n_embd]}; the config does not match the weights")
            for i, part in enumerate(("gate", "up")):
                name = SH.format(bid=bid) + f"[{part}].weight"
                refs[name] = StackedRef(name, (sh, self.hp.n_embd), [Part(ref, i * sh, (i + 1) * sh)])
        return super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs))

    def metadata(self) -> list[KV]:
        return super().metadata() + [KV(self.key(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH), self.n_ff_shexp, U32)]
