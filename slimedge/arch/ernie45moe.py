"""ERNIE 4.5 MoE (``Ernie4_5_MoeForCausalLM``: ERNIE-4.5-21B-A3B, -300B-A47B) → GGUF ``ernie4_5-moe``.

Llama-style layers whose rope is already interleaved in the checkpoint (llama.cpp's "normal" layout:
no q/k permutation). The first ``moe_layer_start_index`` layers have a dense FFN (``mlp.*_proj``); the
others a mixture of ``moe_num_experts`` experts (top ``moe_k``): router ``mlp.gate`` → ``ffn_gate_inp``,
``mlp.experts.{e}.*_proj`` stacked into ``ffn_*_exps`` (:mod:`slimedge.arch.moe`, streamed), the
expert-score correction bias ``mlp.moe_statics.e_score_correction_bias`` (added to the scores for the
choice only) → ``exp_probs_b``, and ``moe_num_shared_experts`` shared experts fused into one FFN
``mlp.shared_experts.*_proj`` → ``ffn_*_shexp``.

Metadata as llama.cpp's converter writes it, except ``expert_shared_feed_forward_length``: the converter
writes intermediate_size // num_key_value_heads (which equals the shared experts' width in the released
models only by coincidence); slimedge writes their real width, moe_intermediate_size x shared experts.
Refused: MoE layers that are not every layer after the dense ones (``moe_layer_interval`` != 1 or
``moe_layer_end_index`` before the last layer: llama.cpp loads experts for every layer after the dense
ones), and ``use_bias`` (llama.cpp's ernie4_5-moe has no lm_head bias).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from .base import KV, U32, Arch, gguf_name
from .moe import MoEArch
from .qwen3moe import QWEN3MOE_EXPERTS

T = MODEL_TENSOR
L = "model.layers.{bid}."
SH = L + "mlp.shared_experts."
CORRECTION = L + "mlp.moe_statics.e_score_correction.bias"  # the table's name of e_score_correction_bias


class Ernie45Moe(MoEArch, Arch):
    hf_names = ("Ernie4_5_MoeForCausalLM",)
    gguf_arch = MODEL_ARCH.ERNIE4_5_MOE
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "input_layernorm.weight", T.ATTN_NORM, True),
        (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
        (L + "self_attn.k_proj.weight", T.ATTN_K, True),
        (L + "self_attn.v_proj.weight", T.ATTN_V, True),
        (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.FFN_NORM, True),
        (L + "mlp.gate_proj.weight", T.FFN_GATE, False),  # dense layers (checked in tensors())
        (L + "mlp.up_proj.weight", T.FFN_UP, False),
        (L + "mlp.down_proj.weight", T.FFN_DOWN, False),
        (L + "mlp.gate.weight", T.FFN_GATE_INP, False),  # MoE layers
        (CORRECTION, T.FFN_EXP_PROBS_B, False),
        (QWEN3MOE_EXPERTS[0].name, T.FFN_GATE_EXP, False),
        (QWEN3MOE_EXPERTS[1].name, T.FFN_UP_EXP, False),
        (QWEN3MOE_EXPERTS[2].name, T.FFN_DOWN_EXP, False),
        (SH + "gate_proj.weight", T.FFN_GATE_SHEXP, False),
        (SH + "up_proj.weight", T.FFN_UP_SHEXP, False),
        (SH + "down_proj.weight", T.FFN_DOWN_SHEXP, False),
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings (the released models tie)
    ]
    EXPERTS = QWEN3MOE_EXPERTS
    ALIASES = [(L + "mlp.moe_statics.e_score_correction_bias", CORRECTION)]
    N_EXPERT_KEYS = ("moe_num_experts",)
    N_USED_KEYS = ("moe_k",)
    N_FF_EXP_KEY = "moe_intermediate_size"

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        n = self.hp.n_layer
        self.n_dense = int(config.get("moe_layer_start_index", 1))
        end, step = config.get("moe_layer_end_index", -1), int(config.get("moe_layer_interval", 1))
        if step != 1 or end not in (-1, n - 1) or not 0 <= self.n_dense < n:
            raise SlimedgeError(f"config.json: {hf_arch} with MoE layers {self.n_dense}..{end} every {step} of {n} "
                                f"is not supported: llama.cpp's ernie4_5-moe has experts in every layer after the "
                                f"leading dense ones (moe_layer_interval 1, moe_layer_end_index {n - 1})")
        if config.get("use_bias"):
            raise SlimedgeError(f"config.json: {hf_arch} with use_bias=true is not supported (llama.cpp's "
                                f"ernie4_5-moe has no lm_head and FFN biases)")
        self.n_shared = int(config.get("moe_num_shared_experts") or 0)

    def is_moe_layer(self, bid: int) -> bool:
        return bid >= self.n_dense

    def expected_shape(self, tensor, is_bias):
        hp, sh = self.hp, self.n_ff_exp * self.n_shared
        shapes = {T.FFN_GATE_SHEXP: (sh, hp.n_embd), T.FFN_UP_SHEXP: (sh, hp.n_embd),
                  T.FFN_DOWN_SHEXP: (hp.n_embd, sh), T.FFN_EXP_PROBS_B: (1, self.n_expert)}
        if tensor in shapes:
            return shapes[tensor]
        return super().expected_shape(tensor, is_bias)

    def tensors(self, source):
        out = super().tensors(source)
        names = {t.name for t in out}
        for bid in range(self.hp.n_layer):
            need = ([(T.FFN_GATE_INP, L + "mlp.gate.weight")]
                    + [(t, SH + f"{p}_proj.weight") for t, p in ((T.FFN_GATE_SHEXP, "gate"), (T.FFN_UP_SHEXP, "up"),
                                                                  (T.FFN_DOWN_SHEXP, "down")) if self.n_shared]
                    if self.is_moe_layer(bid) else
                    [(t, L + f"mlp.{p}_proj.weight") for t, p in ((T.FFN_GATE, "gate"), (T.FFN_UP, "up"),
                                                                   (T.FFN_DOWN, "down"))])
            for t, hf in need:
                if gguf_name(t, "weight", bid) not in names:
                    raise SlimedgeError(f"{source.model_dir}: missing tensor {hf.format(bid=bid)}, which "
                                        f"{self.hf_arch} needs; the checkpoint is incomplete")
        return out

    def metadata(self) -> list[KV]:
        k = self.key
        kv = super().metadata() + [KV(k(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), self.n_ff_exp, U32),
                                   KV(k(Keys.LLM.INTERLEAVE_MOE_LAYER_STEP), 1, U32),
                                   KV(k(Keys.LLM.LEADING_DENSE_BLOCK_COUNT), self.n_dense, U32),
                                   KV(k(Keys.LLM.EXPERT_SHARED_COUNT), self.n_shared, U32)]
        if self.n_shared:
            kv.append(KV(k(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH), self.n_ff_exp * self.n_shared, U32))
        return kv
