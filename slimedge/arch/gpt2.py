"""GPT-2 (``GPT2LMHeadModel``: gpt2 … gpt2-xl, DistilGPT2 and their fine-tunes) → GGUF architecture ``gpt2``.

Learned absolute positions (``wpe`` → ``position_embd``, one row per ``n_positions``: llama.cpp sizes it
from ``context_length``), no rope. GPT-2's layers are ``Conv1D`` modules that store their weights
transposed ([in, out]): ``c_attn`` (fused q, k, v: already grouped q-then-k-then-v as llama.cpp's
``attn_qkv`` wants), ``c_proj``, ``c_fc`` and ``mlp.c_proj`` are written transposed to [out, in] (whole
tensors). LayerNorms and projections carry biases; the output is tied to ``wte``. Config keys are GPT-2's
own (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``, ``n_inner`` = 4·n_embd when null). Hub
checkpoints saved without the ``transformer.`` prefix and with the causal-mask buffers (``attn.bias``)
read the same.
"""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from .base import OutTensor
from ._layernorm import LayerNormArch

T = MODEL_TENSOR
L = "transformer.h.{bid}."
CONV1D = (T.ATTN_QKV, T.ATTN_OUT, T.FFN_UP, T.FFN_DOWN)  # weights stored [in, out]
BUFFERS = (".attn.bias", ".attn.masked_bias")


class _Prefixed:
    """``transformer.``-prefixed names, causal-mask buffers dropped."""

    def __init__(self, source):
        self.model_dir, self.tensors = source.model_dir, {}
        for name, ref in source.tensors.items():
            if name.endswith(BUFFERS):
                continue
            if not name.startswith(("transformer.", "lm_head.")):
                name = "transformer." + name
            self.tensors[name] = ref


class GPT2(LayerNormArch):
    hf_names = ("GPT2LMHeadModel",)
    gguf_arch = MODEL_ARCH.GPT2
    ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
               "n_positions": "max_position_embeddings", "n_inner": "intermediate_size"}
    ROPE = False
    TENSORS = [("transformer.wte.weight", T.TOKEN_EMBD, True), ("transformer.wpe.weight", T.POS_EMBD, True)]
    for _hf, _mt in (("ln_1", T.ATTN_NORM), ("attn.c_attn", T.ATTN_QKV), ("attn.c_proj", T.ATTN_OUT),
                     ("ln_2", T.FFN_NORM), ("mlp.c_fc", T.FFN_UP), ("mlp.c_proj", T.FFN_DOWN)):
        TENSORS += [(L + _hf + ".weight", _mt, True), (L + _hf + ".bias", _mt, True)]
    TENSORS += [("transformer.ln_f.weight", T.OUTPUT_NORM, True), ("transformer.ln_f.bias", T.OUTPUT_NORM, True),
                ("lm_head.weight", T.OUTPUT, True)]  # unless tied (GPT-2 ties)
    del _hf, _mt

    def __init__(self, config: dict, hf_arch: str):
        n_embd = config.get("n_embd", config.get("hidden_size"))
        if config.get("n_inner") is None and config.get("intermediate_size") is None and n_embd:
            config = {**config, "n_inner": 4 * int(n_embd)}
        super().__init__(config, hf_arch)
        if config.get("scale_attn_by_inverse_layer_idx") or config.get("scale_attn_weights") is False:
            raise SlimedgeError(f"config.json: {hf_arch} with scale_attn_by_inverse_layer_idx=true or "
                                f"scale_attn_weights=false is not supported (llama.cpp's gpt2 scales by "
                                f"1/sqrt(head_dim) only)")
        if self.hp.tied is None:
            self.hp.tied = True  # transformers ties GPT-2 unless told otherwise

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.POS_EMBD:
            return (hp.n_ctx, hp.n_embd)
        if tensor == T.ATTN_QKV:
            return (3 * hp.n_embd,) if is_bias else (hp.n_embd, 3 * hp.n_embd)
        shape = super().expected_shape(tensor, is_bias)
        if tensor in CONV1D and not is_bias and shape is not None:
            return shape[::-1]  # stored [in, out]
        return shape

    def tensors(self, source):
        out = super().tensors(_Prefixed(source))
        conv = {f".{n}.weight" for n in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")}
        for i, t in enumerate(out):
            if any(t.name.endswith(s) for s in conv):
                out[i] = OutTensor(t.name, t.shape[::-1], (lambda out=None, load=t.load: np.ascontiguousarray(load().T)),
                                   t.origin + " (transposed)")
        return out
