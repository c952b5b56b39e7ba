"""Qwen3.5 (``Qwen3_5ForCausalLM``, ``Qwen3_5MoeForCausalLM`` and the text tower of their
``…ForConditionalGeneration`` checkpoints) → GGUF architectures ``qwen35`` / ``qwen35moe``.

A hybrid: ``layer_types`` makes most layers gated delta-net linear attention (:mod:`slimedge.arch.ssm`) and
every fourth one full attention. The attention layers are Qwen3's with per-head q/k RMSNorm and an
output gate packed into ``q_proj`` (``2 × heads × head_dim`` rows: each head's queries then its gate,
stored as they are: llama.cpp splits them); rope covers ``partial_rotary_factor`` of each head, in
llama.cpp's interleaved multi-section layout (``rope.dimension_sections``; text positions make all
sections equal, so it is plain rope on text). Every layer has the feed-forward: SwiGLU (dense), or
experts + a shared expert with its own sigmoid gate (``shared_expert_gate`` → ``ffn_gate_inp_shexp``).

Transforms, as llama.cpp's converter does them: every RMSNorm weight except the delta-net's gated norm
is stored zero-centred by HF (``x · (1 + w)``) and becomes ``1 + w``; the final norm after the layers is
``post_attention_layernorm`` → ``post_attention_norm`` (the feed-forward's input norm); value heads are
tiled and ``A_log`` becomes ``-exp(A_log)`` (:mod:`slimedge.arch.ssm`). The multi-token-prediction head
(``mtp.*``) and the vision tower are not converted (logged); ``convert --mtp`` writes the head alone
(:mod:`slimedge.arch._qwen_mtp`). Key and value head sizes must be equal.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from ._qwen_mtp import NEXTN_PLUS_ONE, NEXTN_TENSORS, QwenMtp
from .base import KV, U32, Arch
from .moe import MoEArch, Part, StackedRef
from .qwen3moe import QWEN3MOE_EXPERTS, ROUTED_EXPERT_TENSORS
from .ssm import DELTA_NET_HF, DELTA_NET_TENSORS, DeltaNet, recurrent_layer_flags

log = logging.getLogger(__name__)

T = MODEL_TENSOR
L = "model.layers.{bid}."
ATTN_HF = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_norm.weight", "k_norm.weight")
# the norms HF stores zero-centred (GGUF names)
_PLUS_ONE = (".attn_norm.", ".post_attention_norm.", ".attn_q_norm.", ".attn_k_norm.", "output_norm.") + NEXTN_PLUS_ONE
_NOT_TEXT = ("mtp.", "model.mtp.", "model.visual.", "visual.")


def _table(ffn: list, delta: list = DELTA_NET_TENSORS) -> list:
    return [("model.embed_tokens.weight", T.TOKEN_EMBD, True), (L + "input_layernorm.weight", T.ATTN_NORM, True)] + [
        (L + "self_attn." + s, mt, False) for s, mt in zip(ATTN_HF[:2] + ATTN_HF[4:] + ATTN_HF[2:4], (
            T.ATTN_Q, T.ATTN_K, T.ATTN_Q_NORM, T.ATTN_K_NORM, T.ATTN_V, T.ATTN_OUT))
    ] + delta + [(L + "post_attention_layernorm.weight", T.ATTN_POST_NORM, True)] + ffn + NEXTN_TENSORS + [
        ("model.norm.weight", T.OUTPUT_NORM, True), ("lm_head.weight", T.OUTPUT, True)]


# the feed-forward of the MoE variants: router, stacked experts, shared expert and its sigmoid gate
MOE_FFN = [
    *ROUTED_EXPERT_TENSORS,
    (L + "mlp.shared_expert.gate_proj.weight", T.FFN_GATE_SHEXP, True),
    (L + "mlp.shared_expert.up_proj.weight", T.FFN_UP_SHEXP, True),
    (L + "mlp.shared_expert.down_proj.weight", T.FFN_DOWN_SHEXP, True),
    (L + "mlp.shared_expert_gate.weight", T.FFN_GATE_INP_SHEXP, True),
]


class _Qwen35(QwenMtp, Arch):
    """What dense and MoE Qwen3.5 (and Qwen3-Next, :mod:`slimedge.arch.qwen3next`) share."""

    TILE_V: ClassVar[bool] = True  # value heads tiled for llama.cpp's graph (see ssm.py)
    LINEAR_HF: ClassVar[tuple[str, ...]] = DELTA_NET_HF  # a delta-net layer's HF tensors (after linear_attn.)
    ROPE_SECTIONS: ClassVar[bool] = True  # writes rope.dimension_sections (multi-section rope)

    def __init__(self, config: dict, hf_arch: str):
        self.has_ff = config.get("intermediate_size") is not None
        if not self.has_ff:  # MoE configs state only the experts' size
            config = {**config, "intermediate_size": config.get("moe_intermediate_size")}
        super().__init__(config, hf_arch)
        self.dn = DeltaNet.from_config(config, hf_arch, tiled=self.TILE_V)
        self.recurrent = recurrent_layer_flags(config, self.hp.n_layer, hf_arch)
        if abs(self.hp.rms_eps - 1e-6) > 1e-9:
            log.warning("config.json: rms_norm_eps is %g; llama.cpp l2-normalizes the delta-net's queries and keys "
                        "with it where transformers uses 1e-6, so outputs will differ slightly", self.hp.rms_eps)

    def tensors(self, source):
        refs, dropped = {}, []
        for name, ref in source.tensors.items():
            if name.startswith(_NOT_TEXT):
                dropped.append(name)
                continue
            if name.startswith("model.language_model."):
                name = "model." + name[len("model.language_model."):]
            refs[name] = ref
        if dropped:
            log.info("%s: not converting %d tensor(s) of the vision tower / multi-token-prediction head (%s, ...)",
                     source.model_dir, len(dropped), dropped[0])
        for bid in self.own_layers():  # all, or the MTP head's (convert --mtp: slimedge.arch._qwen_mtp)
            rec = self.recurrent[bid]
            self._check_layer(refs, bid, rec, source)
            if rec:
                self._delta_net_refs(refs, bid)
        out = super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs))
        for t in out:
            if t.name.endswith(".ssm_a.A_log"):
                t.name = t.name[:-len(".A_log")]  # llama.cpp's ssm_a has no suffix
        return out

    def _check_layer(self, refs: dict, bid: int, rec: bool, source) -> None:
        prefix = L.format(bid=bid) + ("linear_attn." if rec else "self_attn.")
        for s in self.LINEAR_HF if rec else ATTN_HF:
            if prefix + s not in refs:
                kind = "a linear-attention" if rec else "a full-attention"
                raise SlimedgeError(f"{source.model_dir}: missing tensor {prefix + s}, which {self.hf_arch} needs "
                                    f"({kind} layer in config.json's layer_types); the checkpoint is incomplete or "
                                    f"layer_types is wrong")

    def _delta_net_refs(self, refs: dict, bid: int) -> None:
        """Rename ``dt_bias``, squeeze ``conv1d`` and tile the value-head rows (lazily, as row ranges)."""
        dn, p = self.dn, L.format(bid=bid) + "linear_attn."
        refs[p + "dt_proj.bias"] = refs.pop(p + "dt_bias")
        conv = refs[p + "conv1d.weight"]
        if len(conv.shape) == 3 and conv.shape[1] == 1:
            shape = (conv.shape[0], conv.shape[2])
            refs[p + "conv1d.weight"] = StackedRef(conv.name, shape, [Part(conv, 0, shape[0])])
        if not (dn.tiled and dn.per_k > 1):
            return
        for hf, first, head in (("conv1d.weight", 2 * dn.key_dim, dn.head_v),
                                ("in_proj_qkv.weight", 2 * dn.key_dim, dn.head_v),
                                ("in_proj_z.weight", 0, dn.head_v), ("in_proj_a.weight", 0, 1),
                                ("in_proj_b.weight", 0, 1)):
            ref = refs[p + hf]
            if len(ref.shape) == 2 and ref.shape[0] == first + dn.n_v_heads * head:
                refs[p + hf] = dn.stacked(ref.name, ref, tuple(ref.shape), first, head)

    def transform(self, gguf_name_: str, x: np.ndarray) -> np.ndarray:
        dn = self.dn
        if gguf_name_.endswith(".ssm_a.A_log"):
            return dn.tile_heads((-np.exp(x.astype(np.float64))).astype(np.float32), -1, 1)  # rounded once
        if ".ssm_dt." in gguf_name_:
            return dn.tile_heads(x, -1, 1)
        if ".ssm_out." in gguf_name_:
            return dn.tile_heads(x, -1, dn.head_v)  # columns: the value heads it reads
        if any(s in gguf_name_ for s in _PLUS_ONE):
            return x + np.float32(1.0)
        return x

    def row_group(self, gguf_name_: str, shape: tuple[int, ...]) -> int:
        return 1  # every transform works on whole rows

    def input_order(self, gguf_name_: str) -> np.ndarray | None:
        if ".ssm_out." in gguf_name_ and self.dn.tiled and self.dn.per_k > 1:  # reads the tiled value heads
            return self.dn.tile_heads(np.arange(self.dn.value_dim), -1, self.dn.head_v)
        return None

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.ATTN_Q and not is_bias:
            return (2 * hp.n_head * hp.head_dim, hp.n_embd)  # queries and their gate
        if tensor in (T.ATTN_Q_NORM, T.ATTN_K_NORM):
            return (hp.head_dim,)
        if tensor == T.ATTN_POST_NORM:
            return (hp.n_embd,)
        shape = self.dn.shapes(hp.n_embd).get(tensor)
        return shape if shape is not None else super().expected_shape(tensor, is_bias)

    def metadata(self) -> list[KV]:
        k, hp = self.key, self.hp
        drop = set() if self.has_ff else {k(Keys.LLM.FEED_FORWARD_LENGTH)}
        kv = [e for e in super().metadata() if e.key not in drop]
        rotary = float(hp.rope.get("partial_rotary_factor", self.config.get("partial_rotary_factor", 0.25)))
        sections = list(hp.rope.get("mrope_section") or [11, 11, 10])[:4]
        sections += [0] * (4 - len(sections))
        if self.ROPE_SECTIONS:
            kv.append(KV(k(Keys.Rope.DIMENSION_SECTIONS), [int(s) for s in sections], GGUFValueType.ARRAY,
                         GGUFValueType.INT32))
        return kv + self.dn.metadata(k) + [
            KV(k("{arch}.attention.recurrent_layers"), list(self.recurrent), GGUFValueType.ARRAY, GGUFValueType.BOOL),
            KV(k(Keys.LLM.FULL_ATTENTION_INTERVAL), int(self.config.get("full_attention_interval") or 4), U32),
            KV(k(Keys.Rope.DIMENSION_COUNT), int(hp.head_dim * rotary), U32)] + self.mtp_metadata()

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        dn = self.dn
        info.ssm_conv_kernel, info.ssm_inner_size = dn.conv_kernel, dn.value_dim
        info.ssm_state_size, info.ssm_group_count = dn.head_k, dn.n_k_heads
        info.recurrent_layers = tuple(self.recurrent)
        return info


class Qwen35(_Qwen35):
    hf_names = ("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration")
    gguf_arch = MODEL_ARCH.QWEN35
    TENSORS = _table([(L + "mlp.gate_proj.weight", T.FFN_GATE, True), (L + "mlp.up_proj.weight", T.FFN_UP, True),
                      (L + "mlp.down_proj.weight", T.FFN_DOWN, True)])


class Qwen35Moe(_Qwen35, MoEArch):
    hf_names = ("Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration")
    gguf_arch = MODEL_ARCH.QWEN35MOE
    TENSORS = _table(MOE_FFN)
    EXPERTS = QWEN3MOE_EXPERTS
    N_EXPERT_KEYS = ("num_experts", "num_local_experts")
    N_FF_EXP_KEY = "moe_intermediate_size"

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        try:
            self.n_ff_shexp = int(config["shared_expert_intermediate_size"])
        except (KeyError, TypeError, ValueError):
            raise SlimedgeError(f"config.json: {hf_arch} needs shared_expert_intermediate_size (found "
                                f"{config.get('shared_expert_intermediate_size')!r}); fix config.json") from None

    def expected_shape(self, tensor, is_bias):
        d, ff = self.hp.n_embd, self.n_ff_shexp
        shapes = {T.FFN_GATE_SHEXP: (ff, d), T.FFN_UP_SHEXP: (ff, d), T.FFN_DOWN_SHEXP: (d, ff),
                  T.FFN_GATE_INP_SHEXP: (1, d)}
        return shapes[tensor] if tensor in shapes else super().expected_shape(tensor, is_bias)

    def metadata(self) -> list[KV]:
        k = self.key
        return super().metadata() + [KV(k(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), self.n_ff_exp, U32),
                                     KV(k(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH), self.n_ff_shexp, U32)]
