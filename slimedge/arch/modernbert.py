"""ModernBERT encoders (``ModernBertModel``: ModernBERT, gte-modernbert embedders) → GGUF ``modern-bert``.

An embedding model with pre-norm layers and no biases anywhere (``norm_bias``/``attention_bias``/``mlp_bias``
false, as the released models; others are refused): ``embeddings.norm`` (token_embd_norm), per layer an
``attn_norm`` (absent on layer 0, where ModernBERT uses identity, as llama.cpp's graph allows), a fused
``Wqkv`` (attn_qkv), ``Wo`` (attn_output), ``mlp_norm`` (ffn_norm), a GeGLU ``Wi`` of 2·intermediate rows
(ffn_up: llama.cpp applies GELU to the first half and multiplies by the second, as transformers does) and
``mlp.Wo`` (ffn_down), then ``final_norm`` (output_norm). Rope (neox layout) with one base for the global
layers (``rope.freq_base``) and one for the local ones (``rope.freq_base_swa``); local layers attend a
symmetric window of ``local_attention`` tokens (``attention.sliding_window``, as llama.cpp's converter writes
it) and which layers are local is written per layer from ``layer_types`` (or every
``global_attn_every_n_layers``-th layer global). Attention is bidirectional; pooling comes from the
sentence-transformers files. The tokenizer is a byte-level BPE framed as ``[CLS] … [SEP]``.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from ._embedding import embedding_metadata, read_pipeline
from ._layernorm import LayerNormArch
from .base import BOOL, F32, KV, U32

T = MODEL_TENSOR
L = "layers.{bid}."


class ModernBert(LayerNormArch):
    hf_names = ("ModernBertModel",)
    gguf_arch = MODEL_ARCH.MODERN_BERT
    TENSORS = [("embeddings.tok_embeddings.weight", T.TOKEN_EMBD, True),
               ("embeddings.norm.weight", T.TOKEN_EMBD_NORM, True),
               (L + "attn_norm.weight", T.ATTN_NORM, False),  # identity (absent) on layer 0
               (L + "attn.Wqkv.weight", T.ATTN_QKV, True),
               (L + "attn.Wo.weight", T.ATTN_OUT, True),
               (L + "mlp_norm.weight", T.FFN_NORM, True),
               (L + "mlp.Wi.weight", T.FFN_UP, True),
               (L + "mlp.Wo.weight", T.FFN_DOWN, True),
               ("final_norm.weight", T.OUTPUT_NORM, True)]

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.hp.tied = True  # no output head
        for key in ("norm_bias", "attention_bias", "mlp_bias"):
            if config.get(key):
                raise SlimedgeError(f"config.json: {hf_arch} with {key}=true is not supported (llama.cpp's "
                                    f"modern-bert graph has no biases)")
        act = config.get("hidden_activation", "gelu")
        if act not in ("gelu", "gelu_pytorch_tanh"):
            raise SlimedgeError(f"config.json: {hf_arch} with hidden_activation {act!r} is not supported "
                                f"(slimedge writes ModernBERT's GeGLU)")
        self.swa_layers = self._swa_layers()
        self.pipe = None

    def _swa_layers(self) -> tuple[bool, ...]:
        types = self.config.get("layer_types")
        if isinstance(types, list) and len(types) == self.hp.n_layer:
            return tuple(t == "sliding_attention" for t in types)
        every = int(self.config.get("global_attn_every_n_layers") or 1)
        return tuple(i % every != 0 for i in range(self.hp.n_layer))

    def tensors(self, source):
        self.pipe = read_pipeline(source.model_dir)
        return super().tensors(_Stripped(source))

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.ATTN_QKV:
            return (3 * hp.n_embd, hp.n_embd)
        if tensor == T.FFN_UP:
            return (2 * hp.n_ff, hp.n_embd)
        if tensor == T.TOKEN_EMBD_NORM:
            return (hp.n_embd,)
        return super().expected_shape(tensor, is_bias)

    @property
    def rope_theta_swa(self) -> float:
        local = (self.config.get("rope_parameters") or {}).get("sliding_attention")
        if isinstance(local, dict) and local.get("rope_theta") is not None:
            return float(local["rope_theta"])
        return float(self.config.get("local_rope_theta") or self.hp.rope_theta)

    def metadata(self):
        k, c = self.key, self.config
        kv = super().metadata()
        if not (c.get("rope_parameters") or {}).get("full_attention") and c.get("global_rope_theta"):
            kv = [e for e in kv if e.key != k(Keys.Rope.FREQ_BASE)]
            kv.append(KV(k(Keys.Rope.FREQ_BASE), float(c["global_rope_theta"]), F32))
        if any(self.swa_layers):
            kv += [KV(k(Keys.Attention.SLIDING_WINDOW), int(c.get("local_attention") or 0), U32),
                   KV(k(Keys.Attention.SLIDING_WINDOW_PATTERN), list(self.swa_layers), GGUFValueType.ARRAY, BOOL),
                   KV(k(Keys.Rope.FREQ_BASE_SWA), self.rope_theta_swa, F32)]
        pipe = self.pipe if self.pipe is not None else read_pipeline(None)
        return kv + embedding_metadata(self.arch, pipe, causal=False)

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        if any(self.swa_layers):
            info.n_swa, info.swa_layers = int(self.config.get("local_attention") or 0), self.swa_layers
        return info


class _Stripped:
    """``model.``-prefixed checkpoints (ModernBertForMaskedLM) under ModernBertModel's names; heads dropped."""

    def __init__(self, source):
        self.model_dir, self.tensors = source.model_dir, {}
        for name, ref in source.tensors.items():
            if name.startswith("model."):
                name = name[len("model."):]
            if not name.startswith(("head.", "decoder.", "classifier.")):
                self.tensors[name] = ref
