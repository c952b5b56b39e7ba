"""Nemotron-H (``NemotronHForCausalLM``: Nemotron-H 4B/8B, Nemotron Nano 2 9B/12B) → GGUF architecture ``nemotron_h``.

A hybrid of single-purpose blocks, each one pre-norm (``backbone.layers.N.norm`` → ``attn_norm``) and one mixer:
a Mamba-2 mixer (:mod:`slimedge.arch.ssm`), attention without positional encoding (q/k/v/o, ``head_dim`` stated),
or a squared-ReLU MLP (``up_proj``/``down_proj``: no gate). The pattern is ``hybrid_override_pattern`` as the
Hub ships it (``M`` Mamba, ``*`` attention, ``-`` MLP) or transformers 5's ``layers_block_type`` list; llama.cpp
reads it back from two per-layer arrays: ``head_count_kv`` (0 but on attention blocks) and
``feed_forward_length`` (0 but on MLP blocks). As llama.cpp's converter: q/k rows in Llama's rope order
(though nothing ropes them), no rope (``rope.scaling.finetuned``
false, context 2^20), embeddings ``backbone.embeddings``, final norm ``backbone.norm_f``. A pattern with
mixture-of-experts blocks (``E``: Nemotron 3 Nano / Super) makes the object a
:class:`slimedge.arch.nemotronhmoe.NemotronHMoE` (llama.cpp's separate ``nemotron_h_moe``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from .base import BOOL, F32, KV, U32, Arch, load_families
from .llama import permute_rope_rows
from .ssm import MAMBA2_TENSORS, Mamba2, bare_names

T = MODEL_TENSOR
B = "model.layers.{bid}."  # backbone.layers.N.mixer.* are renamed to this (the shared Mamba-2 rows' prefix)
_KIND = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe", "linear_attention": "mamba", "mamba": "mamba",
         "full_attention": "attention", "attention": "attention", "mlp": "mlp", "moe": "moe"}
_NEED = {"mamba": ("in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"),
         "attention": ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"),
         "mlp": ("up_proj.weight", "down_proj.weight"),
         "moe": ("gate.weight", "gate.e_score_correction_bias", "shared_experts.up_proj.weight",
                 "shared_experts.down_proj.weight")}  # the experts themselves: slimedge.arch.moe

TENSORS = [("backbone.embeddings.weight", T.TOKEN_EMBD, True), ("backbone.layers.{bid}.norm.weight", T.ATTN_NORM, True)]
TENSORS += [(B + "self_attn." + s, mt, False) for s, mt in zip(_NEED["attention"], (T.ATTN_Q, T.ATTN_K, T.ATTN_V,
                                                                                     T.ATTN_OUT))]
TENSORS += MAMBA2_TENSORS + [(B + "mlp.up_proj.weight", T.FFN_UP, False),
                             (B + "mlp.down_proj.weight", T.FFN_DOWN, False),
                             ("backbone.norm_f.weight", T.OUTPUT_NORM, True), ("lm_head.weight", T.OUTPUT, True)]


def block_kinds(config: dict, hf_arch: str) -> list[str]:
    """Each block's kind (mamba, attention, mlp, moe) from the config's pattern, or a one-line error."""
    pattern = config.get("hybrid_override_pattern") or config.get("layers_block_type")
    kinds = [_KIND.get(p) for p in (pattern or [])]
    if not kinds or None in kinds:
        raise SlimedgeError(f"config.json: {hf_arch} needs hybrid_override_pattern (M, *, -, E) or layers_block_type; "
                            f"found {pattern!r}; fix config.json")
    return kinds


class NemotronH(Arch):
    hf_names = ("NemotronHForCausalLM",)
    gguf_arch = MODEL_ARCH.NEMOTRON_H
    TENSORS = TENSORS

    MOE: ClassVar[type | None] = None  # the MoE variant, registered by slimedge.arch.nemotronhmoe where defined

    def __new__(cls, config: dict, hf_arch: str):
        if cls is NemotronH and "moe" in block_kinds(config, hf_arch):  # Nemotron 3: llama.cpp's nemotron_h_moe
            load_families()  # the variant's module registers it
            cls = NemotronH.MOE
        return super().__new__(cls)

    def __init__(self, config: dict, hf_arch: str):
        kinds = block_kinds(config, hf_arch)
        eps = config.get("layer_norm_epsilon", config.get("rms_norm_eps"))
        super().__init__({**config, "num_hidden_layers": len(kinds), "rms_norm_eps": eps}, hf_arch)
        self.kinds = kinds
        self.mamba = Mamba2.from_config(config, hf_arch, ("mamba_num_heads", "mamba_head_dim", "n_groups",
                                                          "ssm_state_size", "conv_kernel"))
        if config.get("mlp_hidden_act", "relu2") != "relu2" or config.get("use_conv_bias") is False:
            raise SlimedgeError(f"config.json: {hf_arch} with mlp_hidden_act {config.get('mlp_hidden_act')!r} or "
                                f"use_conv_bias false is not supported (llama.cpp's nemotron_h: relu2, conv biases)")
        if config.get("mamba_proj_bias") or config.get("attention_bias") or config.get("mlp_bias"):
            raise SlimedgeError(f"config.json: {hf_arch} with projection biases is not supported (llama.cpp's "
                                f"nemotron_h has none)")

    def tensors(self, source):
        refs = {}
        for name, ref in source.tensors.items():
            parts = name.split(".")
            if name.startswith("backbone.layers.") and len(parts) > 4 and parts[3] == "mixer":
                bid, kind = int(parts[2]), self.kinds[int(parts[2])] if int(parts[2]) < len(self.kinds) else None
                sub = {"mamba": "mamba", "attention": "self_attn", "mlp": "mlp", "moe": "moe"}.get(kind, "mixer")
                name = f"model.layers.{bid}.{sub}." + ".".join(parts[4:])
            refs[name] = ref
        for bid, kind in enumerate(self.kinds):
            sub = {"mamba": "mamba.", "attention": "self_attn.", "mlp": "mlp.", "moe": "moe."}[kind]
            for s in _NEED[kind]:
                if B.format(bid=bid) + sub + s not in refs:
                    raise SlimedgeError(f"{source.model_dir}: missing tensor backbone.layers.{bid}.mixer.{s}, which "
                                        f"{self.hf_arch} needs (a {kind} block in config.json's pattern); the "
                                        f"checkpoint is incomplete or the pattern is wrong")
            if kind == "mamba":
                self.mamba.layer_refs(refs, B.format(bid=bid) + "mamba.")
        return bare_names(super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs)))

    def layer_ff(self, kind: str) -> int:
        """A block's feed_forward_length as llama.cpp reads it (0: no feed-forward: Mamba-2 or attention)."""
        return self.hp.n_ff if kind == "mlp" else 0

    def transform(self, gguf_name_: str, x: np.ndarray) -> np.ndarray:
        if ".attn_q." in gguf_name_ or ".attn_k." in gguf_name_:  # as llama.cpp's converter (no rope: no effect)
            return permute_rope_rows(x, x.shape[0] // self.hp.head_dim)
        y = self.mamba.transform(gguf_name_, x)
        return x if y is None else y

    def row_group(self, gguf_name_: str, shape: tuple[int, ...]) -> int:
        if ".attn_q." in gguf_name_ or ".attn_k." in gguf_name_:
            return self.hp.head_dim
        return 0 if any(s in gguf_name_ for s in (".ssm_a.", ".ssm_d.", ".ssm_norm.")) else 1

    def expected_shape(self, tensor, is_bias):
        shape = self.mamba.shapes(self.hp.n_embd, is_bias).get(tensor)
        return shape if shape is not None else super().expected_shape(tensor, is_bias)

    def metadata(self) -> list[KV]:
        k, hp = self.key, self.hp
        per_layer = {k(Keys.Attention.HEAD_COUNT_KV): [hp.n_head_kv if t == "attention" else 0 for t in self.kinds],
                     k(Keys.LLM.FEED_FORWARD_LENGTH): [self.layer_ff(t) for t in self.kinds]}
        drop = set(per_layer) | {k(Keys.LLM.CONTEXT_LENGTH), k(Keys.Attention.KEY_LENGTH),
                                 k(Keys.Attention.VALUE_LENGTH)}
        kv = [e for e in super().metadata() if e.key not in drop]
        kv += [KV(key, v, GGUFValueType.ARRAY, U32) for key, v in per_layer.items()]
        return kv + [KV(k(Keys.Attention.KEY_LENGTH), hp.head_dim, U32),
                     KV(k(Keys.Attention.VALUE_LENGTH), hp.head_dim, U32),
                     KV(k(Keys.LLM.CONTEXT_LENGTH), 2 ** 20, U32), KV(k(Keys.Rope.SCALING_FINETUNED), False, BOOL),
                     KV(k(Keys.Rope.DIMENSION_COUNT), hp.head_dim, U32),
                     KV(k(Keys.Attention.LAYERNORM_EPS), hp.rms_eps, F32),  # llama.cpp reads both eps keys
                     ] + self.mamba.metadata(k)

    def model_info(self):
        info = super().model_info()
        self.mamba.fill(info)
        info.n_head_kv_layers = tuple(self.hp.n_head_kv if t == "attention" else 0 for t in self.kinds)
        info.n_ff_layers = tuple(self.layer_ff(t) for t in self.kinds)
        info.n_head_kv, info.n_ff = info.n_head_kv_layers[0], info.n_ff_layers[0]
        info.recurrent_layers = tuple(t == "mamba" for t in self.kinds)
        return info
