"""BERT encoders (``BertModel``: all-MiniLM, bge-small/base/large, e5, and their fine-tunes) → GGUF ``bert``.

An embedding model, not a decoder: bidirectional attention (``attention.causal`` false), learned absolute
positions (``position_embd``, one row per ``max_position_embeddings``), segment embeddings
(``token_types``; llama.cpp adds row 0, "sentence A", to every token), a LayerNorm on the embeddings
(``token_embd_norm``) and post-norm layers: attention → ``attn_output_norm``, GELU MLP (``ffn_up``,
``ffn_down``) → ``layer_output_norm``, all with biases. No output head: the pooler (``pooler.dense``, the
tanh "pooled output" of transformers) and masked-LM heads (``cls.*``) are dropped, as llama.cpp's converter
drops them; checkpoints saved from ``BertForMaskedLM`` carry a ``bert.`` prefix, old ones ``gamma``/``beta``
LayerNorm names. Pooling comes from the sentence-transformers files (see ``_embedding.py``).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from ._embedding import embedding_metadata, read_pipeline
from ._layernorm import LayerNormArch

T = MODEL_TENSOR
L = "encoder.layer.{bid}."
DROPPED = ("pooler.", "cls.", "embeddings.position_ids")


class _BertNames:
    """The source's tensors under BertModel's own names (prefix, gamma/beta, heads dropped)."""

    def __init__(self, source, prefix: str = "bert."):
        self.model_dir, self.tensors = source.model_dir, {}
        for name, ref in source.tensors.items():
            if name.startswith(prefix):
                name = name[len(prefix):]
            if name.startswith(DROPPED):
                continue
            if name.endswith(".gamma"):
                name = name[: -len("gamma")] + "weight"
            elif name.endswith(".beta"):
                name = name[: -len("beta")] + "bias"
            self.tensors[name] = ref


def _both(hf: str, mt: MODEL_TENSOR) -> list[tuple[str, MODEL_TENSOR, bool]]:
    return [(hf + ".weight", mt, True), (hf + ".bias", mt, True)]


class Bert(LayerNormArch):
    hf_names = ("BertModel",)
    gguf_arch = MODEL_ARCH.BERT
    PREFIX = "bert."  # of checkpoints saved from a model with heads (BertForMaskedLM)
    ROPE = False
    TENSORS = [("embeddings.word_embeddings.weight", T.TOKEN_EMBD, True),
               ("embeddings.token_type_embeddings.weight", T.TOKEN_TYPES, False),
               ("embeddings.position_embeddings.weight", T.POS_EMBD, True),
               *_both("embeddings.LayerNorm", T.TOKEN_EMBD_NORM)]
    for _hf, _mt in (("attention.self.query", T.ATTN_Q), ("attention.self.key", T.ATTN_K),
                     ("attention.self.value", T.ATTN_V), ("attention.output.dense", T.ATTN_OUT),
                     ("attention.output.LayerNorm", T.ATTN_OUT_NORM), ("intermediate.dense", T.FFN_UP),
                     ("output.dense", T.FFN_DOWN), ("output.LayerNorm", T.LAYER_OUT_NORM)):
        TENSORS += _both(L + _hf, _mt)
    del _hf, _mt

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.hp.tied = True  # no output head: nothing to tie or look for
        act = config.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise SlimedgeError(f"config.json: {hf_arch} with hidden_act {act!r} is not supported (llama.cpp's "
                                f"bert graph uses GELU)")
        pos = config.get("position_embedding_type", "absolute")
        if pos not in (None, "absolute"):
            raise SlimedgeError(f"config.json: {hf_arch} with position_embedding_type {pos!r} is not supported "
                                f"(llama.cpp's bert graph adds absolute positions)")
        self.pipe = None

    def tensors(self, source):
        self.pipe = read_pipeline(source.model_dir)
        return super().tensors(_BertNames(source, self.PREFIX))

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.POS_EMBD:
            return (hp.n_ctx, hp.n_embd)
        if tensor in (T.TOKEN_EMBD_NORM, T.ATTN_OUT_NORM, T.LAYER_OUT_NORM):
            return (hp.n_embd,)
        return super().expected_shape(tensor, is_bias)

    def metadata(self):
        pipe = self.pipe if self.pipe is not None else read_pipeline(None)
        return super().metadata() + embedding_metadata(self.arch, pipe, causal=False)
