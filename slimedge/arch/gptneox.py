"""GPT-NeoX (``GPTNeoXForCausalLM``: Pythia, GPT-NeoX-20B, RedPajama-INCITE) → GGUF architecture ``gptneox``.

One fused ``attention.query_key_value`` per layer whose rows are grouped per head (``[head][q, k, v][d]``);
llama.cpp's ``attn_qkv`` wants all q rows, then k, then v: the weight and the bias are regrouped here
(whole tensors). LayerNorms with biases, a GELU MLP (``dense_h_to_4h`` → ffn_up, ``dense_4h_to_h`` →
ffn_down), biases everywhere, an untied ``embed_out``. ``use_parallel_residual`` (attention and MLP both
read the block input) is written as a key. Partial rotary embeddings in the neox layout: checkpoints ship
``rotary_pct`` and ``rotary_emb_base``, which transformers 5 reads but rewrites as
``rope_parameters.partial_rotary_factor`` / ``rope_theta`` when it saves; both spellings are read here, from
config.json itself (0.25 when absent, transformers' default).
"""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from .base import BOOL, KV
from ._layernorm import LayerNormArch

T = MODEL_TENSOR
L = "gpt_neox.layers.{bid}."
BUFFERS = (".attention.bias", ".attention.masked_bias")  # causal-mask buffers of old checkpoints: not weights


class _WithoutBuffers:
    """Causal-mask buffers dropped; transformers 5's in-memory name ``lm_head`` read as the checkpoints'
    ``embed_out`` (a state dict of the loaded model, as ``slimedge tune`` matches against)."""

    def __init__(self, source):
        self.model_dir = source.model_dir
        self.tensors = {n: r for n, r in source.tensors.items() if not n.endswith(BUFFERS)}
        if "lm_head.weight" in self.tensors and "embed_out.weight" not in self.tensors:
            self.tensors["embed_out.weight"] = self.tensors.pop("lm_head.weight")


class GPTNeoX(LayerNormArch):
    hf_names = ("GPTNeoXForCausalLM",)
    gguf_arch = MODEL_ARCH.GPTNEOX
    ALIASES = {"rotary_emb_base": "rope_theta"}
    DEFAULT_ROTARY = 0.25
    TENSORS = [("gpt_neox.embed_in.weight", T.TOKEN_EMBD, True)]
    for _hf, _mt in (("input_layernorm", T.ATTN_NORM), ("attention.query_key_value", T.ATTN_QKV),
                     ("attention.dense", T.ATTN_OUT), ("post_attention_layernorm", T.FFN_NORM),
                     ("mlp.dense_h_to_4h", T.FFN_UP), ("mlp.dense_4h_to_h", T.FFN_DOWN)):
        TENSORS += [(L + _hf + ".weight", _mt, True), (L + _hf + ".bias", _mt, True)]
    TENSORS += [("gpt_neox.final_layer_norm.weight", T.OUTPUT_NORM, True),
                ("gpt_neox.final_layer_norm.bias", T.OUTPUT_NORM, True), ("embed_out.weight", T.OUTPUT, True)]
    del _hf, _mt

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.hp.tied = bool(self.hp.tied)  # embed_out is its own tensor unless the config says otherwise

    def expected_shape(self, tensor, is_bias):
        if tensor == T.ATTN_QKV:
            return (3 * self.hp.n_embd,) if is_bias else (3 * self.hp.n_embd, self.hp.n_embd)
        return super().expected_shape(tensor, is_bias)

    def transform(self, gguf_name_: str, x: np.ndarray) -> np.ndarray:
        if ".attn_qkv." in gguf_name_:  # [head, qkv, d, ...] -> [qkv, head, d, ...]
            hp = self.hp
            grouped = x.reshape(hp.n_head, 3, hp.head_dim, *x.shape[1:]).swapaxes(0, 1)
            return np.ascontiguousarray(grouped).reshape(x.shape)
        return x

    def row_group(self, gguf_name_: str, shape: tuple[int, ...]) -> int:
        return 0 if ".attn_qkv." in gguf_name_ else 1

    def metadata(self) -> list[KV]:
        parallel = bool(self.config.get("use_parallel_residual", True))
        return super().metadata() + [KV(self.key(Keys.LLM.USE_PARALLEL_RESIDUAL), parallel, BOOL)]

    def tensors(self, source):
        return super().tensors(_WithoutBuffers(source))
