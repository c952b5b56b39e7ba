"""StarCoder 2 (``Starcoder2ForCausalLM``: starcoder2-3b/7b/15b) → GGUF architecture ``starcoder2``.

Llama's attention names, every projection with a bias (``use_bias``; llama.cpp requires them), LayerNorm
with bias, and a plain GELU MLP ``c_fc`` → ``c_proj`` (ffn_up / ffn_down, no gate). Rope is neox (no
permutation), over the whole head. The released models' ``sliding_window`` (4096) is not used by
llama.cpp's starcoder2 graph, which attends to the whole context: the same logits up to the window,
different past it (warned when the training context is longer than the window).
"""

from __future__ import annotations

import logging

from gguf import MODEL_ARCH, MODEL_TENSOR

from ._layernorm import LayerNormArch

log = logging.getLogger(__name__)

T = MODEL_TENSOR
L = "model.layers.{bid}."


class Starcoder2(LayerNormArch):
    hf_names = ("Starcoder2ForCausalLM",)
    gguf_arch = MODEL_ARCH.STARCODER2
    TENSORS = [("model.embed_tokens.weight", T.TOKEN_EMBD, True)]
    for _hf, _mt in (("input_layernorm", T.ATTN_NORM), ("self_attn.q_proj", T.ATTN_Q), ("self_attn.k_proj", T.ATTN_K),
                     ("self_attn.v_proj", T.ATTN_V), ("self_attn.o_proj", T.ATTN_OUT),
                     ("post_attention_layernorm", T.FFN_NORM), ("mlp.c_fc", T.FFN_UP), ("mlp.c_proj", T.FFN_DOWN)):
        TENSORS += [(L + _hf + ".weight", _mt, True), (L + _hf + ".bias", _mt, True)]
    TENSORS += [("model.norm.weight", T.OUTPUT_NORM, True), ("model.norm.bias", T.OUTPUT_NORM, True),
                ("lm_head.weight", T.OUTPUT, True)]  # unless tie_word_embeddings (starcoder2-3b ties)
    del _hf, _mt

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        window = config.get("sliding_window")
        if window and self.hp.n_ctx > int(window):
            log.warning("config.json: %s's sliding_window %s is not used by llama.cpp (it attends to the whole "
                        "context); outputs past %s tokens differ from transformers'", hf_arch, window, window)
