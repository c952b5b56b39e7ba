"""OLMo 2 (``Olmo2ForCausalLM``: OLMo-2 1B/7B/13B/32B) → GGUF architecture ``olmo2``.

OLMo 2 normalizes after each sub-layer instead of before it: ``post_attention_layernorm`` →
``post_attention_norm``, ``post_feedforward_layernorm`` → ``post_ffw_norm``, no input/pre-FFN norms.
Its q/k RMSNorms span the whole projection (``q_norm``: n_head·head_dim weights, ``k_norm``:
n_head_kv·head_dim), not one head. llama.cpp ropes it in the neox layout (no permutation) and takes
head_dim = hidden/heads. llama.cpp requires ``output.weight``, so a tied checkpoint gets the
embedding written a second time under that name.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from .base import Arch, OutTensor, gguf_name

T = MODEL_TENSOR
L = "model.layers.{bid}."


class Olmo2(Arch):
    hf_names = ("Olmo2ForCausalLM",)
    gguf_arch = MODEL_ARCH.OLMO2
    SLIDING_WINDOW = False  # OLMo 3 (olmo3.py) turns it on
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
        (L + "self_attn.k_proj.weight", T.ATTN_K, True),
        (L + "self_attn.v_proj.weight", T.ATTN_V, True),
        (L + "self_attn.q_norm.weight", T.ATTN_Q_NORM, True),
        (L + "self_attn.k_norm.weight", T.ATTN_K_NORM, True),
        (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
        (L + "post_attention_layernorm.weight", T.ATTN_POST_NORM, True),
        (L + "mlp.gate_proj.weight", T.FFN_GATE, True),
        (L + "mlp.up_proj.weight", T.FFN_UP, True),
        (L + "mlp.down_proj.weight", T.FFN_DOWN, True),
        (L + "post_feedforward_layernorm.weight", T.FFN_POST_NORM, True),
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings (then a copy of the embedding)
    ]

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        hp = self.hp
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise SlimedgeError(f"config.json: {hf_arch} with head_dim {hp.head_dim} x {hp.n_head} heads != "
                                f"hidden_size {hp.n_embd} is not supported (llama.cpp's olmo2 takes "
                                f"head_dim = hidden_size / heads)")
        if config.get("sliding_window") and not self.SLIDING_WINDOW:
            raise SlimedgeError(f"config.json: {hf_arch} with a sliding_window is not supported (that is OLMo 3); "
                                f"remove sliding_window for OLMo 2")

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.ATTN_Q_NORM:
            return (hp.n_head * hp.head_dim,)
        if tensor == T.ATTN_K_NORM:
            return (hp.n_head_kv * hp.head_dim,)
        if tensor in (T.ATTN_POST_NORM, T.FFN_POST_NORM):
            return (hp.n_embd,)
        return super().expected_shape(tensor, is_bias)

    def tensors(self, source) -> list[OutTensor]:
        out = super().tensors(source)
        names = [t.name for t in out]
        output = gguf_name(T.OUTPUT, "weight")
        if output not in names:  # tied: llama.cpp's olmo2 has no fallback to token_embd, so store it twice
            emb = out[names.index(gguf_name(T.TOKEN_EMBD, "weight"))]
            at = names.index(gguf_name(T.OUTPUT_NORM, "weight")) + 1
            out.insert(at, OutTensor(output, emb.shape, emb.load, emb.origin + " (tied)", emb.load_rows,
                                     emb.row_group))
        return out
