"""LFM2-MoE (``Lfm2MoeForCausalLM``: Liquid AI's LFM2-8B-A1B, LFM2.5-8B-A1B) → GGUF architecture ``lfm2moe``.

LFM2's hybrid of gated short convolutions and attention layers (:mod:`slimedge.arch.lfm2`: the same
``layer_types``, conv weight squeezed, per-layer ``head_count_kv`` zeros for the convolution layers,
``shortconv.l_cache``) whose feed-forward is, after ``num_dense_layers`` dense SwiGLU layers, a
mixture of experts: router ``feed_forward.gate`` → ``ffn_gate_inp``, experts ``w1``/``w3``/``w2`` stacked
into ``ffn_gate_exps``/``ffn_up_exps``/``ffn_down_exps`` (:mod:`slimedge.arch.moe`, streamed; or
transformers' fused ``gate_up_proj``/``down_proj``), and the router's selection bias ``expert_bias``
→ ``exp_probs_b.bias``. Scores are sigmoids (``expert_gating_func`` 2), and llama.cpp always
renormalizes the chosen weights with no extra scale: a config with ``norm_topk_prob: false`` or a
``routed_scaling_factor`` other than 1 converts with a warning that llama.cpp's outputs will differ.
"""

from __future__ import annotations

import logging

from gguf import MODEL_ARCH, MODEL_TENSOR, ExpertGatingFuncType, Keys

from ..errors import SlimedgeError
from .base import KV, U32
from .lfm2 import Lfm2
from .moe import Experts, MoEArch

log = logging.getLogger(__name__)

T = MODEL_TENSOR
F = "model.layers.{bid}.feed_forward."
X = F + "experts."
FUSED_GATE_UP = (X[:-1] + ".gate_up_proj", X + "gate_up_proj.weight")
LFM2MOE_EXPERTS = [
    Experts(X + "[*].w1.weight", X + "{xid}.w1.weight", FUSED_GATE_UP, 0, 2),
    Experts(X + "[*].w3.weight", X + "{xid}.w3.weight", FUSED_GATE_UP, 1, 2),
    Experts(X + "[*].w2.weight", X + "{xid}.w2.weight", (X[:-1] + ".down_proj", X + "down_proj.weight")),
]
_DENSE = {F + "w1.weight", F + "w3.weight", F + "w2.weight"}


def _table() -> list:
    rows = [(hf, mt, False if hf in _DENSE else req) for hf, mt, req in Lfm2.TENSORS]  # dense FFN: leading layers
    at = next(i for i, r in enumerate(rows) if r[1] == T.FFN_DOWN) + 1
    return rows[:at] + [(F + "gate.weight", T.FFN_GATE_INP, False), (F + "expert_bias.bias", T.FFN_EXP_PROBS_B, False),
                        (LFM2MOE_EXPERTS[0].name, T.FFN_GATE_EXP, False),
                        (LFM2MOE_EXPERTS[1].name, T.FFN_UP_EXP, False),
                        (LFM2MOE_EXPERTS[2].name, T.FFN_DOWN_EXP, False)] + rows[at:]


class Lfm2Moe(MoEArch, Lfm2):
    hf_names = ("Lfm2MoeForCausalLM",)
    gguf_arch = MODEL_ARCH.LFM2MOE
    TENSORS = _table()
    EXPERTS = LFM2MOE_EXPERTS
    ALIASES = [(F + "expert_bias", F + "expert_bias.bias")]
    N_EXPERT_KEYS = ("num_experts", "num_local_experts")
    N_FF_EXP_KEY = "moe_intermediate_size"

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        try:
            self.n_dense = int(config.get("num_dense_layers") or 0)
        except (TypeError, ValueError):
            raise SlimedgeError(f"config.json: bad num_dense_layers {config.get('num_dense_layers')!r}; "
                                f"fix config.json") from None
        if not 0 <= self.n_dense <= self.hp.n_layer:
            raise SlimedgeError(f"config.json: num_dense_layers {self.n_dense} is outside 0..{self.hp.n_layer}; "
                                f"fix config.json")
        if config.get("use_expert_bias") is False:
            raise SlimedgeError(f"config.json: {hf_arch} with use_expert_bias=false is not supported (llama.cpp's "
                                f"lfm2moe always adds the router's expert bias)")
        scale = float(config.get("routed_scaling_factor") or 1.0)
        if config.get("norm_topk_prob") is False or scale != 1.0:
            log.warning("config.json: llama.cpp's lfm2moe renormalizes the top-%d router weights with no scale "
                        "(norm_topk_prob %s, routed_scaling_factor %s here); the converted model's outputs will "
                        "differ from transformers'", self.n_expert_used, config.get("norm_topk_prob"), scale)

    def is_moe_layer(self, bid: int) -> bool:
        return bid >= self.n_dense

    def tensors(self, source):
        refs = source.tensors
        for bid in range(self.hp.n_layer):
            need = ([F + "gate.weight", F + "expert_bias"] if self.is_moe_layer(bid) else sorted(_DENSE))
            for name in (n.format(bid=bid) for n in need):
                if name not in refs and name + ".bias" not in refs:
                    kind = "a mixture-of-experts" if self.is_moe_layer(bid) else "a dense"
                    raise SlimedgeError(f"{source.model_dir}: missing tensor {name}, which {self.hf_arch} needs "
                                        f"({kind} layer: config.json's num_dense_layers is {self.n_dense}); the "
                                        f"checkpoint is incomplete")
        return super().tensors(source)

    def expected_shape(self, tensor, is_bias):
        if tensor == T.FFN_EXP_PROBS_B:
            return (self.n_expert,)
        return super().expected_shape(tensor, is_bias)

    def metadata(self):
        k = self.key
        return super().metadata() + [
            KV(k(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), self.n_ff_exp, U32),
            KV(k(Keys.LLM.LEADING_DENSE_BLOCK_COUNT), self.n_dense, U32),
            KV(k(Keys.LLM.EXPERT_GATING_FUNC), int(ExpertGatingFuncType.SIGMOID), U32)]
