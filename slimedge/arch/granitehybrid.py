"""Granite 4 (``GraniteMoeHybridForCausalLM``: granite-4.0-h-micro (dense), -h-tiny / -h-small (MoE))
→ GGUF architecture ``granitehybrid``.

A hybrid: ``layer_types`` (``mamba``/``attention`` as the Hub ships them, ``linear_attention``/
``full_attention`` as transformers 5 saves them) makes most layers Mamba-2 mixers (:mod:`slimedge.arch.ssm`)
and a few Granite attention layers (Llama's names and q/k permutation, Granite's four multipliers,
:mod:`slimedge.arch.granite`). llama.cpp reads which is which from a per-layer ``head_count_kv`` (0 = Mamba).
Every layer then has the feed-forward: experts in the JetMoE layout (``block_sparse_moe``, as Granite 3 MoE,
:mod:`slimedge.arch.granitemoe`) plus the shared MLP ``shared_mlp.input_linear`` ``[2·n_ff, n_embd]`` (gate rows
first) / ``output_linear`` → ``ffn_*_shexp``; a dense model (``num_local_experts`` 0) has only the shared
MLP, written as the plain ``ffn_gate``/``ffn_up``/``ffn_down`` of ``shared_intermediate_size`` rows.

Rope: Granite 4's ``position_embedding_type`` is ``nope``, written as ``rope.scaling.finetuned`` false (llama.cpp's
switch) with a context of 2^20 as llama.cpp's converter does; a ``rope`` config keeps its rope and context.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from .base import BOOL, KV, U32
from .granite import Granite
from .granitemoe import GRANITEMOE_EXPERTS
from .moe import MoEArch, Part, StackedRef
from .ssm import MAMBA2_HF, MAMBA2_TENSORS, MB, Mamba2, bare_names

T = MODEL_TENSOR
L = "model.layers.{bid}."
M = L + "block_sparse_moe."
S = L + "shared_mlp."
ATTN_HF = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
_KINDS = {"mamba": True, "linear_attention": True, "attention": False, "full_attention": False}

TENSORS = [("model.embed_tokens.weight", T.TOKEN_EMBD, True), (L + "input_layernorm.weight", T.ATTN_NORM, True)] + [
    (L + "self_attn." + s, mt, False) for s, mt in zip(ATTN_HF, (T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT))
] + MAMBA2_TENSORS + [
    (L + "post_attention_layernorm.weight", T.FFN_NORM, True),
    (M + "router.layer.weight", T.FFN_GATE_INP, False),
    (GRANITEMOE_EXPERTS[0].name, T.FFN_GATE_EXP, False),
    (GRANITEMOE_EXPERTS[1].name, T.FFN_UP_EXP, False),
    (GRANITEMOE_EXPERTS[2].name, T.FFN_DOWN_EXP, False),
    (S + "[shexp].gate.weight", T.FFN_GATE_SHEXP, False),  # halves of shared_mlp.input_linear (MoE models)
    (S + "[shexp].up.weight", T.FFN_UP_SHEXP, False),
    (S + "[shexp].down.weight", T.FFN_DOWN_SHEXP, False),
    (S + "[dense].gate.weight", T.FFN_GATE, False),  # the same, dense models
    (S + "[dense].up.weight", T.FFN_UP, False),
    (S + "[dense].down.weight", T.FFN_DOWN, False),
    ("model.norm.weight", T.OUTPUT_NORM, True),
    ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings
]


class GraniteHybrid(MoEArch, Granite):
    hf_names = ("GraniteMoeHybridForCausalLM",)
    gguf_arch = MODEL_ARCH.GRANITE_HYBRID
    TENSORS = TENSORS
    EXPERTS = GRANITEMOE_EXPERTS
    N_EXPERT_KEYS = ("num_local_experts",)
    N_FF_EXP_KEY = "intermediate_size"

    def __init__(self, config: dict, hf_arch: str):
        if int(config.get("num_local_experts") or 0) > 0:
            super().__init__(config, hf_arch)
        else:  # dense (granite-4.0-h-micro): no experts to read
            Granite.__init__(self, config, hf_arch)
            self.n_expert = self.n_expert_used = self.n_ff_exp = 0
        self.mamba = Mamba2.from_config(config, hf_arch, ("mamba_n_heads", "mamba_d_head", "mamba_n_groups",
                                                          "mamba_d_state", "mamba_d_conv"))
        types = config.get("layer_types") or config.get("layers_block_type")
        if not isinstance(types, list) or len(types) != self.hp.n_layer or set(types) - set(_KINDS):
            raise SlimedgeError(f"config.json: {hf_arch}'s layer_types must list 'mamba' or 'attention' for each of "
                                f"the {self.hp.n_layer} layers, found {types!r}; fix config.json")
        self.is_ssm = [_KINDS[t] for t in types]
        try:
            self.n_ff_shared = int(config["shared_intermediate_size"])
        except (KeyError, TypeError, ValueError):
            raise SlimedgeError(f"config.json: {hf_arch} needs shared_intermediate_size; fix config.json") from None
        self.rope = config.get("position_embedding_type", "nope") == "rope" or not any(self.is_ssm)
        if config.get("mamba_conv_bias") is False or config.get("mamba_proj_bias") or config.get("attention_bias"):
            raise SlimedgeError(f"config.json: {hf_arch} with mamba_conv_bias false, mamba_proj_bias or attention_bias "
                                f"true is not supported (llama.cpp's granitehybrid loads conv biases only)")

    def is_moe_layer(self, bid: int) -> bool:
        return self.n_expert > 0

    def tensors(self, source):
        refs = dict(source.tensors)
        for bid, ssm in enumerate(self.is_ssm):
            prefix = L.format(bid=bid) + ("mamba." if ssm else "self_attn.")
            for s in MAMBA2_HF if ssm else ATTN_HF:
                if prefix + s not in refs:
                    kind = "a Mamba-2" if ssm else "an attention"
                    raise SlimedgeError(f"{source.model_dir}: missing tensor {prefix + s}, which {self.hf_arch} needs "
                                        f"({kind} layer in config.json's layer_types); the checkpoint is incomplete")
            if ssm:
                self.mamba.layer_refs(refs, MB.format(bid=bid))
            self._shared_mlp(refs, bid, source)
        return bare_names(super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs)))

    def _shared_mlp(self, refs: dict, bid: int, source) -> None:
        s, kind = S.format(bid=bid), "[shexp]" if self.n_expert else "[dense]"
        up, down = refs.pop(s + "input_linear.weight", None), refs.pop(s + "output_linear.weight", None)
        ff, d = self.n_ff_shared, self.hp.n_embd
        if up is None or down is None:
            raise SlimedgeError(f"{source.model_dir}: missing tensor {s}{'output' if up else 'input'}_linear.weight, "
                                f"which {self.hf_arch} needs; the checkpoint is incomplete")
        if tuple(up.shape) != (2 * ff, d):
            raise SlimedgeError(f"{up.file}: tensor {up.name} has shape {list(up.shape)} but config.json implies "
                                f"[{2 * ff}, {d}]; the config does not match the weights")
        refs[s + kind + ".gate.weight"] = StackedRef(up.name, (ff, d), [Part(up, 0, ff)])
        refs[s + kind + ".up.weight"] = StackedRef(up.name, (ff, d), [Part(up, ff, 2 * ff)])
        refs[s + kind + ".down.weight"] = down

    def transform(self, gguf_name_: str, x: np.ndarray) -> np.ndarray:
        y = self.mamba.transform(gguf_name_, x)
        return super().transform(gguf_name_, x) if y is None else y

    def row_group(self, gguf_name_: str, shape: tuple[int, ...]) -> int:
        if any(s in gguf_name_ for s in (".ssm_a.", ".ssm_d.", ".ssm_norm.")):
            return 0  # reshaped 1-D vectors: read whole
        return super().row_group(gguf_name_, shape)

    def expected_shape(self, tensor, is_bias):
        d, ff = self.hp.n_embd, self.n_ff_shared
        shape = self.mamba.shapes(d, is_bias).get(tensor)
        if shape is not None:
            return shape
        if tensor in (T.FFN_GATE, T.FFN_UP, T.FFN_GATE_SHEXP, T.FFN_UP_SHEXP):
            return (ff, d)
        if tensor in (T.FFN_DOWN, T.FFN_DOWN_SHEXP):
            return (d, ff)
        return super().expected_shape(tensor, is_bias)

    def metadata(self) -> list[KV]:
        k = self.key
        kv_key, ff_key = k(Keys.Attention.HEAD_COUNT_KV), k(Keys.LLM.FEED_FORWARD_LENGTH)
        ctx_key = k(Keys.LLM.CONTEXT_LENGTH)
        drop = {kv_key} | ({ff_key} if not self.n_expert else set()) | (set() if self.rope else {ctx_key})
        kv = [e for e in (super().metadata() if self.n_expert else Granite.metadata(self)) if e.key not in drop]
        kv += [KV(kv_key, [0 if s else self.hp.n_head_kv for s in self.is_ssm], GGUFValueType.ARRAY, U32),
               KV(k(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH), self.n_ff_shared, U32),
               KV(k(Keys.Rope.SCALING_FINETUNED), self.rope, BOOL)]
        if not self.n_expert:
            kv.append(KV(ff_key, self.n_ff_shared, U32))
        if not self.rope:
            kv.append(KV(ctx_key, 2 ** 20, U32))
        return kv + self.mamba.metadata(k)

    def model_info(self):
        info = super().model_info()
        self.mamba.fill(info)
        info.n_head_kv_layers = tuple(0 if s else self.hp.n_head_kv for s in self.is_ssm)
        info.n_head_kv = info.n_head_kv_layers[0]
        info.recurrent_layers = tuple(self.is_ssm)
        if not self.n_expert:
            info.n_ff = self.n_ff_shared
        return info
