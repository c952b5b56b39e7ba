"""Phi-1/1.5/2 (``PhiForCausalLM``) → GGUF architecture ``phi2``.

One LayerNorm per block (``input_layernorm``, weight and bias) feeding attention and MLP in parallel;
q/k/v, the attention output (``dense``) and the GELU MLP (``fc1`` → ffn_up, ``fc2`` → ffn_down) all
carry biases, and so does the output layer (``lm_head.bias`` → ``output.bias``, required by llama.cpp).
Partial rotary embeddings (``partial_rotary_factor``, 0.4 in Phi-2; 0.5 is transformers' default) in the
neox layout: no permutation. ``qk_layernorm`` models are refused (llama.cpp's phi2 has no q/k norms).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from ._layernorm import LayerNormArch

T = MODEL_TENSOR
L = "model.layers.{bid}."


class Phi(LayerNormArch):
    hf_names = ("PhiForCausalLM",)
    gguf_arch = MODEL_ARCH.PHI2
    DEFAULT_ROTARY = 0.5
    TENSORS = [("model.embed_tokens.weight", T.TOKEN_EMBD, True)]
    for _hf, _mt in (("input_layernorm", T.ATTN_NORM), ("self_attn.q_proj", T.ATTN_Q), ("self_attn.k_proj", T.ATTN_K),
                     ("self_attn.v_proj", T.ATTN_V), ("self_attn.dense", T.ATTN_OUT), ("mlp.fc1", T.FFN_UP),
                     ("mlp.fc2", T.FFN_DOWN)):
        TENSORS += [(L + _hf + ".weight", _mt, True), (L + _hf + ".bias", _mt, True)]
    TENSORS += [("model.final_layernorm.weight", T.OUTPUT_NORM, True), ("model.final_layernorm.bias", T.OUTPUT_NORM, True),
                ("lm_head.weight", T.OUTPUT, True), ("lm_head.bias", T.OUTPUT, True)]
    del _hf, _mt

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        if config.get("qk_layernorm"):
            raise SlimedgeError(f"config.json: {hf_arch} with qk_layernorm=true is not supported (llama.cpp's phi2 "
                                f"has no q/k norms); only models without it convert")
        if self.hp.tied:
            raise SlimedgeError(f"config.json: {hf_arch} with tie_word_embeddings=true is not supported "
                                f"(llama.cpp's phi2 needs its own output.weight and output.bias)")
        self.hp.tied = False

    def expected_shape(self, tensor, is_bias):
        if tensor == T.OUTPUT and is_bias:
            return (self.hp.n_vocab,)
        return super().expected_shape(tensor, is_bias)
