"""Nomic BERT (``NomicBertModel``: nomic-embed-text v1/v1.5) → GGUF architecture ``nomic-bert``.

BERT's post-norm layers with rope (neox layout, base ``rope_theta`` / ``rotary_emb_base``) instead of
position embeddings, SwiGLU feed-forward (``ffn_gate``/``ffn_up``/``ffn_down``) and no linear biases;
segment embeddings (``token_types``) and the embedding LayerNorm (``token_embd_norm``) as BERT's;
bidirectional attention, pooling from the sentence-transformers files, the WordPiece tokenizer as "bert".
Checkpoints carry the Hub's tensor names (transformers saves them too): ``encoder.layers.N.attn.Wqkv`` fused
→ attn_qkv, ``attn.out_proj``, ``norm1`` → attn_output_norm, ``norm2`` → layer_output_norm, ``mlp.fc11`` up,
``fc12`` gate, ``fc2`` down, ``emb_ln``; transformers' in-memory names (split ``self_attn.q_proj`` …) read
the same. Config keys may be transformers' or the remote code's (``n_embd``, ``n_layer``, ``n_positions``). As
llama.cpp's converter does, nomic-embed-text v1/v1.5's ``n_positions`` 8192 is written as the 2048 they
were trained for. The MoE variant (v2-moe) and biased layers are refused.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from ._embedding import embedding_metadata, read_pipeline
from ._layernorm import LayerNormArch

T = MODEL_TENSOR
L = "layers.{bid}."
_HUB = {"emb_ln.": "embeddings.LayerNorm.", "attn.Wqkv.": "self_attn.qkv.", "attn.out_proj.": "self_attn.o_proj.",
        "norm1.": "post_attention_layernorm.", "norm2.": "post_mlp_layernorm.", "mlp.fc11.": "mlp.up_proj.",
        "mlp.fc12.": "mlp.gate_proj.", "mlp.fc2.": "mlp.down_proj."}


def _both(hf: str, mt: MODEL_TENSOR) -> list[tuple[str, MODEL_TENSOR, bool]]:
    return [(hf + ".weight", mt, True), (hf + ".bias", mt, True)]


class _NomicNames:
    """The Hub layout's names under transformers' (``encoder.`` dropped, modules renamed)."""

    def __init__(self, source):
        self.model_dir, self.tensors = source.model_dir, {}
        for name, ref in source.tensors.items():
            if name.startswith("encoder."):
                name = name[len("encoder."):]
            for old, new in _HUB.items():
                if old in name:
                    name = name.replace(old, new)
            self.tensors[name] = ref


class NomicBert(LayerNormArch):
    hf_names = ("NomicBertModel",)
    gguf_arch = MODEL_ARCH.NOMIC_BERT
    ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
               "n_inner": "intermediate_size", "n_positions": "max_position_embeddings",
               "rotary_emb_base": "rope_theta"}
    TENSORS = [("embeddings.word_embeddings.weight", T.TOKEN_EMBD, True),
               ("embeddings.token_type_embeddings.weight", T.TOKEN_TYPES, False),
               *_both("embeddings.LayerNorm", T.TOKEN_EMBD_NORM),
               (L + "self_attn.qkv.weight", T.ATTN_QKV, False),  # the Hub layout: fused
               (L + "self_attn.q_proj.weight", T.ATTN_Q, False),
               (L + "self_attn.k_proj.weight", T.ATTN_K, False),
               (L + "self_attn.v_proj.weight", T.ATTN_V, False),
               (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
               *_both(L + "post_attention_layernorm", T.ATTN_OUT_NORM),
               (L + "mlp.up_proj.weight", T.FFN_UP, True),
               (L + "mlp.gate_proj.weight", T.FFN_GATE, True),
               (L + "mlp.down_proj.weight", T.FFN_DOWN, True),
               *_both(L + "post_mlp_layernorm", T.LAYER_OUT_NORM)]

    def __init__(self, config: dict, hf_arch: str):
        cfg = dict(config)
        if cfg.get("n_positions") == 8192 and cfg.get("max_trained_positions", 2048) == 2048:
            cfg["n_positions"] = 2048  # nomic-embed-text v1/v1.5: trained for 2048 tokens
        super().__init__(cfg, hf_arch)
        self.hp.tied = True  # no output head
        if cfg.get("moe_every_n_layers"):
            raise SlimedgeError(f"config.json: {hf_arch} with mixture-of-experts layers (nomic-embed-text-v2-moe) "
                                "is not supported yet")
        for key in ("qkv_proj_bias", "mlp_fc1_bias", "mlp_fc2_bias"):
            if cfg.get(key):
                raise SlimedgeError(f"config.json: {hf_arch} with {key}=true is not supported (llama.cpp's "
                                    "nomic-bert has no biases on those layers)")
        act = cfg.get("activation_function", cfg.get("hidden_act", "silu"))
        if act not in ("swiglu", "silu"):
            raise SlimedgeError(f"config.json: {hf_arch} with activation {act!r} is not supported (llama.cpp's "
                                "nomic-bert uses SwiGLU)")
        if cfg.get("prenorm") or cfg.get("rotary_emb_interleaved") or cfg.get("rotary_emb_fraction", 1.0) != 1.0:
            raise SlimedgeError(f"config.json: {hf_arch} with prenorm, interleaved or partial rotary embeddings "
                                "is not supported (llama.cpp's nomic-bert is post-norm with full neox rope)")
        self.pipe = None

    def tensors(self, source):
        self.pipe = read_pipeline(source.model_dir)
        view = _NomicNames(source)
        out = super().tensors(view)
        names = {t.name for t in out}
        for bid in range(self.hp.n_layer):
            fused = f"blk.{bid}.attn_qkv.weight" in names
            split = all(f"blk.{bid}.attn_{x}.weight" in names for x in "qkv")
            if fused == split:
                raise SlimedgeError(f"{source.model_dir}: layer {bid} needs either a fused Wqkv or q/k/v projections "
                                    "(found neither or both); the checkpoint is incomplete")
        return out

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.ATTN_QKV:
            return (3 * hp.n_embd, hp.n_embd)
        if tensor in (T.TOKEN_EMBD_NORM, T.ATTN_OUT_NORM, T.LAYER_OUT_NORM):
            return (hp.n_embd,)
        return super().expected_shape(tensor, is_bias)

    def metadata(self):
        pipe = self.pipe if self.pipe is not None else read_pipeline(None)
        return super().metadata() + embedding_metadata(self.arch, pipe, causal=False)
