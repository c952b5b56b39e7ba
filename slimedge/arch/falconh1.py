"""Falcon-H1 (``FalconH1ForCausalLM``: Falcon-H1 0.5B … 34B, Falcon-H1R) → GGUF architecture ``falcon-h1``.

A parallel hybrid: every layer runs attention (Llama names, neox rope: no permutation, ``head_dim`` stated) and
a Mamba-2 mixer (:mod:`slimedge.arch.ssm`; the gated norm only with ``mamba_rms_norm``, gate first: a
config that norms before the gate is refused, llama.cpp cannot) side by side on the same
normed input, then a SwiGLU feed-forward after ``pre_ff_layernorm`` (llama.cpp's ``blk.N.ffn_norm``, a name
without suffix). Falcon-H1's µP multipliers are folded into the weights as llama.cpp's converter does:
embeddings × ``embedding_multiplier``, lm_head × ``lm_head_multiplier``, q/v × ``attention_in_multiplier``, k × that
× ``key_multiplier``, o × ``attention_out_multiplier``, gate × ``mlp_multipliers[0]``,
down × ``mlp_multipliers[1]``,
the mixer's out_proj × ``ssm_out_multiplier`` and in_proj × ``ssm_in_multiplier`` with its z / x / B / C / dt rows
each × their ``ssm_multipliers`` entry (in_proj is read whole for that). A tied checkpoint whose two embedding
multipliers differ is refused (llama.cpp would reuse the scaled input embedding as output).
llama.cpp keeps a KV cache and a recurrent state in every layer (``slimedge.memory``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from .base import Arch
from .llama import LLAMA_TENSORS
from .ssm import MAMBA2_HF, MAMBA2_TENSORS, MB, Mamba2, bare_names

T = MODEL_TENSOR
L = "model.layers.{bid}."
_ATTN = [r for r in LLAMA_TENSORS if "self_attn" in r[0] and r[0].endswith(".weight")]
TENSORS = [("model.embed_tokens.weight", T.TOKEN_EMBD, True), (L + "input_layernorm.weight", T.ATTN_NORM, True)]
TENSORS += _ATTN + [(L + "self_attn.o_proj.bias", T.ATTN_OUT, False)] + MAMBA2_TENSORS + [
    (L + "pre_ff_layernorm.weight", T.FFN_NORM, True),
    (L + "feed_forward.gate_proj.weight", T.FFN_GATE, True),
    (L + "feed_forward.up_proj.weight", T.FFN_UP, True),
    (L + "feed_forward.down_proj.weight", T.FFN_DOWN, True),
    ("model.final_layernorm.weight", T.OUTPUT_NORM, True),
    ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings
]


class FalconH1(Arch):
    hf_names = ("FalconH1ForCausalLM",)
    gguf_arch = MODEL_ARCH.FALCON_H1
    TENSORS = TENSORS

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.mamba = Mamba2.from_config(config, hf_arch, ("mamba_n_heads", "mamba_d_head", "mamba_n_groups",
                                                          "mamba_d_state", "mamba_d_conv"))
        if int(config.get("mamba_d_ssm") or self.mamba.d_inner) != self.mamba.d_inner:
            raise SlimedgeError(f"config.json: {hf_arch} mamba_d_ssm {config.get('mamba_d_ssm')} != mamba_n_heads x "
                                f"mamba_d_head ({self.mamba.d_inner}); fix config.json")
        if config.get("mamba_rms_norm") and config.get("mamba_norm_before_gate", True):
            raise SlimedgeError(f"config.json: {hf_arch} with mamba_rms_norm and mamba_norm_before_gate true is not "
                                f"supported: llama.cpp's falcon-h1 gates before the norm (set as released: "
                                f"mamba_norm_before_gate false)")
        c = lambda key, default=1.0: float(config.get(key) if config.get(key) is not None else default)  # noqa: E731
        mlp = list(config.get("mlp_multipliers") or [1.0, 1.0])
        ssm = list(config.get("ssm_multipliers") or [1.0] * 5)
        if len(mlp) != 2 or len(ssm) != 5:
            raise SlimedgeError(f"config.json: {hf_arch} needs 2 mlp_multipliers and 5 ssm_multipliers, found {mlp}, "
                                f"{ssm}; fix config.json")
        a_in = c("attention_in_multiplier")
        # GGUF tensor -> its multipliers, applied one after the other in float32 (as torch does in the converter)
        self.scales = {"token_embd": (c("embedding_multiplier"),), "output": (c("lm_head_multiplier"),),
                       "attn_q": (a_in,), "attn_v": (a_in,), "attn_k": (c("key_multiplier"), a_in),
                       "attn_output": (c("attention_out_multiplier"),), "ffn_gate": (float(mlp[0]),),
                       "ffn_down": (float(mlp[1]),), "ssm_out": (c("ssm_out_multiplier"),)}
        m, gs = self.mamba, self.mamba.n_groups * self.mamba.d_state
        self.ssm_in = (c("ssm_in_multiplier"), np.repeat(np.asarray(ssm, np.float32), (m.d_inner, m.d_inner, gs, gs,
                                                                                     m.n_heads)))  # z, x, B, C, dt
        if config.get("tie_word_embeddings") and self.scales["output"] != self.scales["token_embd"]:
            raise SlimedgeError(f"config.json: {hf_arch} ties its embeddings but lm_head_multiplier != "
                                f"embedding_multiplier; llama.cpp would reuse the scaled input embedding as output")

    def tensors(self, source):
        refs = dict(source.tensors)
        for bid in range(self.hp.n_layer):
            p = MB.format(bid=bid)
            for s in MAMBA2_HF:
                if p + s not in refs and not (s == "norm.weight" and not self.config.get("mamba_rms_norm")):
                    raise SlimedgeError(f"{source.model_dir}: missing tensor {p + s}, which {self.hf_arch} needs; the "
                                        f"checkpoint is incomplete")
            self.mamba.layer_refs(refs, p)
        out = bare_names(super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs)))
        for t in out:
            if t.name.endswith(".ffn_norm.weight"):
                t.name = t.name[:-len(".weight")]  # llama.cpp's falcon-h1 loads "blk.N.ffn_norm"
        return out

    def transform(self, gguf_name_: str, x: np.ndarray) -> np.ndarray:
        y = self.mamba.transform(gguf_name_, x)
        if y is not None:
            return y
        if ".ssm_in." in gguf_name_:
            return (x * np.float32(self.ssm_in[0])) * self.ssm_in[1][:, None]
        parts = gguf_name_.split(".")
        for f in self.scales.get(parts[2] if parts[0] == "blk" else parts[0], ()):
            x = x * np.float32(f)
        return x

    def row_group(self, gguf_name_: str, shape: tuple[int, ...]) -> int:
        if any(s in gguf_name_ for s in (".ssm_a.", ".ssm_d.", ".ssm_norm.", ".ssm_in.")):
            return 0  # reshaped vectors; in_proj's row scales depend on the row: read whole
        return 1

    def expected_shape(self, tensor, is_bias):
        shape = self.mamba.shapes(self.hp.n_embd, is_bias).get(tensor)
        return shape if shape is not None else super().expected_shape(tensor, is_bias)

    def metadata(self):
        return super().metadata() + self.mamba.metadata(self.key)

    def model_info(self):
        info = super().model_info()
        self.mamba.fill(info)
        info.recurrent_layers = (True,) * self.hp.n_layer  # and a KV cache in each (slimedge.memory)
        return info
