"""Nemotron-H with mixture-of-experts blocks (``NemotronHForCausalLM`` whose pattern has ``E`` / ``moe`` blocks:
Nemotron 3 Nano 30B-A3B, Nemotron 3 Super) → GGUF architecture ``nemotron_h_moe``.

The dense family's blocks (:mod:`slimedge.arch.nemotronh`: Mamba-2, attention without rope) with MoE blocks in
place of its MLP ones. An MoE block (``backbone.layers.N.mixer.*``) routes with a sigmoid router ``gate.weight``
→ ``ffn_gate_inp`` plus the correction bias ``gate.e_score_correction_bias`` (added for the choice only) →
``exp_probs_b.bias``, top ``num_experts_per_tok`` of ``n_routed_experts`` (weights renormalized when
``norm_topk_prob``, times ``routed_scaling_factor``); each expert is a squared-ReLU MLP without gate,
``experts.{e}.up_proj`` / ``down_proj`` stacked into ``ffn_up_exps`` / ``ffn_down_exps`` (:mod:`slimedge.arch.moe`,
streamed), and one shared expert ``shared_experts.*`` → ``ffn_up_shexp`` / ``ffn_down_shexp``. Nemotron 3 Super's
latent experts (``moe_latent_size``) run in a smaller space: ``fc1_latent_proj`` → ``ffn_latent_down`` before them,
``fc2_latent_proj`` → ``ffn_latent_up`` after.

Metadata as llama.cpp's converter writes it: ``feed_forward_length`` per block (the expert width on MoE blocks,
0 elsewhere: llama.cpp tells Mamba-2 blocks by no kv heads and no feed-forward), expert count / used / widths /
shared count, ``expert_weights_norm`` and ``_scale``, ``expert_group_count`` / ``_used_count`` (``n_group`` /
``topk_group``: llama.cpp's group-limited choice is transformers', top-2 sums per group), ``moe_latent_size``.
The MTP head (``mtp.*``, ``num_nextn_predict_layers``) is left out, as the converter's ``--no-mtp``. Refused: dense
MLP blocks beside MoE ones (llama.cpp builds every feed-forward block of a model with experts as MoE), and
``topk_group`` >= ``n_group`` > 1 (a no-op grouping that llama.cpp refuses to load).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from .base import BOOL, F32, KV, U32
from .moe import Experts, MoEArch
from .nemotronh import B, TENSORS, NemotronH, block_kinds

T = MODEL_TENSOR
X = B + "moe."  # backbone.layers.N.mixer.* of an MoE block (renamed by NemotronH.tensors)
EXPERTS = [Experts(X + "experts.[*].up_proj.weight", X + "experts.{xid}.up_proj.weight"),
           Experts(X + "experts.[*].down_proj.weight", X + "experts.{xid}.down_proj.weight")]
CORRECTION = X + "gate.e_score_correction.bias"  # the table's name of e_score_correction_bias (suffix "bias")


class NemotronHMoE(NemotronH, MoEArch):
    hf_names = ()  # NemotronH registers NemotronHForCausalLM and makes this class for patterns with E blocks
    gguf_arch = MODEL_ARCH.NEMOTRON_H_MOE
    TENSORS = TENSORS[:-2] + [
        (X + "gate.weight", T.FFN_GATE_INP, False),
        (CORRECTION, T.FFN_EXP_PROBS_B, False),
        (X + "fc1_latent_proj.weight", T.MOE_LATENT_DOWN, False),
        (EXPERTS[0].name, T.FFN_UP_EXP, False),
        (EXPERTS[1].name, T.FFN_DOWN_EXP, False),
        (X + "fc2_latent_proj.weight", T.MOE_LATENT_UP, False),
        (X + "shared_experts.up_proj.weight", T.FFN_UP_SHEXP, False),
        (X + "shared_experts.down_proj.weight", T.FFN_DOWN_SHEXP, False),
    ] + TENSORS[-2:]  # output_norm, output last
    EXPERTS = EXPERTS
    ALIASES = [(X + "gate.e_score_correction_bias", CORRECTION)]
    N_EXPERT_KEYS = ("n_routed_experts", "num_local_experts")
    N_FF_EXP_KEY = "moe_intermediate_size"

    def __init__(self, config: dict, hf_arch: str):
        kinds = block_kinds(config, hf_arch)
        if "mlp" in kinds:
            raise SlimedgeError(f"config.json: {hf_arch} with both dense MLP (-) and mixture-of-experts (E) blocks is "
                                f"not supported: llama.cpp's nemotron_h_moe builds every feed-forward block as MoE")
        groups, used = int(config.get("n_group") or 1), int(config.get("topk_group") or 1)
        if groups > 1 and not 0 < used < groups:
            raise SlimedgeError(f"config.json: {hf_arch} with n_group {groups} and topk_group {used} cannot be "
                                f"converted: llama.cpp loads group-limited routing only with 0 < topk_group < n_group")
        # HParams needs intermediate_size: the Hub's MoE configs may leave it out (the dense MLP's width)
        super().__init__({"intermediate_size": config.get("moe_intermediate_size"), **config}, hf_arch)
        try:
            self.n_ff_shexp = int(config["moe_shared_expert_intermediate_size"])
            self.latent = int(config["moe_latent_size"]) if config.get("moe_latent_size") else 0
        except (KeyError, TypeError, ValueError):
            raise SlimedgeError(f"config.json: {hf_arch} needs moe_shared_expert_intermediate_size (found "
                                f"{config.get('moe_shared_expert_intermediate_size')!r}); fix config.json") from None

    def is_moe_layer(self, bid: int) -> bool:
        return self.kinds[bid] == "moe"

    def layer_ff(self, kind: str) -> int:
        return self.n_ff_exp if kind == "moe" else 0

    def expected_shape(self, tensor, is_bias):
        d, e, ff, sh = self.hp.n_embd, self.n_expert, self.n_ff_exp, self.n_ff_shexp
        m = self.latent or d  # the experts' input and output width
        shapes = {T.FFN_UP_EXP: (e, ff, m), T.FFN_DOWN_EXP: (e, m, ff), T.FFN_EXP_PROBS_B: (e,),
                  T.MOE_LATENT_DOWN: (m, d), T.MOE_LATENT_UP: (d, m), T.FFN_UP_SHEXP: (sh, d),
                  T.FFN_DOWN_SHEXP: (d, sh)}
        return shapes[tensor] if tensor in shapes else super().expected_shape(tensor, is_bias)

    def tensors(self, source):
        out = super().tensors(source)
        if self.latent:
            names = {t.name for t in out}
            for bid in (b for b, kind in enumerate(self.kinds) if kind == "moe"):
                for i, hf in ((1, "fc1"), (2, "fc2")):
                    if f"blk.{bid}.ffn_latent_{'down' if i == 1 else 'up'}.weight" not in names:
                        raise SlimedgeError(f"{source.model_dir}: missing tensor backbone.layers.{bid}.mixer."
                                            f"{hf}_latent_proj.weight, which {self.hf_arch} needs (moe_latent_size "
                                            f"{self.latent} in config.json); the checkpoint is incomplete")
        return out

    def metadata(self) -> list[KV]:
        k, c = self.key, self.config
        kv = super().metadata() + [
            KV(k(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), self.n_ff_exp, U32),
            KV(k(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH), self.n_ff_shexp, U32),
            KV(k(Keys.LLM.EXPERT_SHARED_COUNT), int(c.get("n_shared_experts", 1)), U32),
            KV(k(Keys.LLM.EXPERT_WEIGHTS_NORM), bool(c.get("norm_topk_prob", True)), BOOL),
            KV(k(Keys.LLM.EXPERT_WEIGHTS_SCALE), float(c.get("routed_scaling_factor", 1.0)), F32),
            KV(k(Keys.LLM.EXPERT_GROUP_COUNT), int(c.get("n_group") or 1), U32),
            KV(k(Keys.LLM.EXPERT_GROUP_USED_COUNT), int(c.get("topk_group") or 1), U32)]
        if self.latent:
            kv.append(KV(k(Keys.LLM.MOE_LATENT_SIZE), self.latent, U32))
        return kv


NemotronH.MOE = NemotronHMoE
