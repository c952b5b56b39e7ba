"""LFM2 (``Lfm2ForCausalLM``: Liquid AI's LFM2 / LFM2.5 350M-2.6B) → GGUF architecture ``lfm2``.

A hybrid made for on-device use: most layers are gated short convolutions (``conv.in_proj`` →
B, C, x; a depthwise causal convolution of ``conv_L_cache`` taps; ``conv.out_proj``), a few are
attention with per-head q/k RMSNorm (``q_layernorm``/``k_layernorm``); every layer has a SwiGLU
feed-forward (``w1`` gate, ``w3`` up, ``w2`` down). ``config.json``'s ``layer_types`` (or the older
``full_attn_idxs``) say which layer is which; llama.cpp reads that from a per-layer
``attention.head_count_kv`` array (0 = a convolution layer) and the taps from ``shortconv.l_cache``.

Transforms: the conv weight ``[n_embd, 1, L]`` is stored as ``[n_embd, L]`` (the same bytes; only the
shape drops the 1). The feed-forward size is the one the weights have: with ``block_auto_adjust_ff_dim``
HF shrinks ``intermediate_size`` to 2/3, applies ``block_ffn_dim_multiplier`` and rounds up to
``block_multiple_of``. The final norm is HF's ``embedding_norm`` (llama.cpp's ``token_embd_norm`` name).
Neox rope, so no q/k permutation; embeddings are tied unless ``lm_head.weight`` is stored.
"""

from __future__ import annotations

from math import prod
from types import SimpleNamespace

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from .base import KV, U32, Arch
from .ministral3 import TextTower

T = MODEL_TENSOR
L = "model.layers.{bid}."

ATTN_ONLY = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
             "self_attn.out_proj.weight", "self_attn.q_layernorm.weight", "self_attn.k_layernorm.weight")
CONV_ONLY = ("conv.conv.weight", "conv.in_proj.weight", "conv.out_proj.weight")


def lfm2_ff(config: dict) -> int:
    """The feed-forward rows LFM2's weights have (HF's ``Lfm2MLP`` arithmetic)."""
    ff = int(config.get("block_ff_dim") or config["intermediate_size"])
    if config.get("block_auto_adjust_ff_dim"):
        ff = int(2 * ff / 3)
        if config.get("block_ffn_dim_multiplier") is not None:
            ff = int(float(config["block_ffn_dim_multiplier"]) * ff)
        multiple = int(config.get("block_multiple_of") or 1)
        ff = multiple * ((ff + multiple - 1) // multiple)
    return ff


class _Squeezed:
    """A tensor reference seen with its size-1 middle dimension dropped (same rows, same bytes)."""

    def __init__(self, ref, shape: tuple[int, ...]):
        self.ref, self.shape = ref, shape
        self.name, self.file, self.dtype = ref.name, ref.file, getattr(ref, "dtype", "F32")

    where = property(lambda self: self.ref.where)
    n_rows = property(lambda self: prod(self.shape[:-1]))

    def load(self, out=None) -> np.ndarray:
        return self.ref.load(out).reshape(self.shape)

    def load_rows(self, start: int, stop: int, out=None) -> np.ndarray:
        return self.ref.load_rows(start, stop, out)


class Lfm2(Arch):
    hf_names = ("Lfm2ForCausalLM", "LFM2ForCausalLM")
    gguf_arch = MODEL_ARCH.LFM2
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "operator_norm.weight", T.ATTN_NORM, True),
        (L + "self_attn.q_proj.weight", T.ATTN_Q, False),  # attention layers (checked per layer)
        (L + "self_attn.k_proj.weight", T.ATTN_K, False),
        (L + "self_attn.v_proj.weight", T.ATTN_V, False),
        (L + "self_attn.out_proj.weight", T.ATTN_OUT, False),
        (L + "self_attn.q_layernorm.weight", T.ATTN_Q_NORM, False),
        (L + "self_attn.k_layernorm.weight", T.ATTN_K_NORM, False),
        (L + "conv.conv.weight", T.SHORTCONV_CONV, False),  # convolution layers (checked per layer)
        (L + "conv.in_proj.weight", T.SHORTCONV_INPROJ, False),
        (L + "conv.out_proj.weight", T.SHORTCONV_OUTPROJ, False),
        (L + "ffn_norm.weight", T.FFN_NORM, True),
        (L + "feed_forward.w1.weight", T.FFN_GATE, True),
        (L + "feed_forward.w3.weight", T.FFN_UP, True),
        (L + "feed_forward.w2.weight", T.FFN_DOWN, True),
        ("model.embedding_norm.weight", T.TOKEN_EMBD_NORM, True),  # the final norm, despite its name
        ("lm_head.weight", T.OUTPUT, True),  # unless tied (the default)
    ]

    def __init__(self, config: dict, hf_arch: str):
        eps = config.get("norm_eps", config.get("rms_norm_eps"))
        try:
            ff = lfm2_ff(config)
        except (KeyError, TypeError, ValueError):
            raise SlimedgeError("config.json: LFM2 needs intermediate_size (or block_ff_dim) and numeric "
                                "block_* sizes; fix config.json") from None
        config = {**config, "rms_norm_eps": eps, "intermediate_size": ff,
                  "tie_word_embeddings": config.get("tie_word_embeddings", True)}
        super().__init__(config, hf_arch)
        if config.get("conv_bias"):
            raise SlimedgeError("config.json: conv_bias is true, but llama.cpp's lfm2 has no convolution biases; "
                                "this LFM2 variant cannot be converted")
        self.is_attn = self._layer_kinds(config)
        try:
            self.l_cache = int(config.get("conv_L_cache") or 3)
        except (TypeError, ValueError):
            raise SlimedgeError(f"config.json: bad conv_L_cache {config.get('conv_L_cache')!r}; fix config.json")

    def _layer_kinds(self, config: dict) -> list[bool]:
        n = self.hp.n_layer
        types = config.get("layer_types")
        if types is not None:
            if not isinstance(types, list) or len(types) != n or set(types) - {"conv", "full_attention"}:
                raise SlimedgeError(f"config.json: layer_types must list 'conv' or 'full_attention' for each of the "
                                    f"{n} layers, found {types!r}; fix config.json")
            return [t == "full_attention" for t in types]
        idxs = config.get("full_attn_idxs")
        if not isinstance(idxs, list):
            raise SlimedgeError("config.json: LFM2 needs layer_types (or full_attn_idxs) to tell attention layers "
                                "from convolution layers; fix config.json")
        return [i in idxs for i in range(n)]

    @property
    def head_count_kv(self) -> list[int]:
        return [self.hp.n_head_kv if a else 0 for a in self.is_attn]

    def expected_shape(self, tensor, is_bias):
        d = self.hp.n_embd
        shapes = {T.SHORTCONV_CONV: (d, self.l_cache), T.SHORTCONV_INPROJ: (3 * d, d),
                  T.SHORTCONV_OUTPROJ: (d, d), T.ATTN_Q_NORM: (self.hp.head_dim,),
                  T.ATTN_K_NORM: (self.hp.head_dim,), T.TOKEN_EMBD_NORM: (d,)}
        if tensor in shapes:
            return shapes[tensor]
        return super().expected_shape(tensor, is_bias)

    def tensors(self, source):
        refs = dict(source.tensors)
        for bid, attn in enumerate(self.is_attn):
            need = ATTN_ONLY if attn else CONV_ONLY
            for suffix in need:
                if L.format(bid=bid) + suffix not in refs:
                    kind = "an attention" if attn else "a convolution"
                    raise SlimedgeError(f"{source.model_dir}: missing tensor {L.format(bid=bid) + suffix}, which "
                                        f"{self.hf_arch} needs ({kind} layer in config.json's layer_types); the "
                                        f"checkpoint is incomplete or layer_types is wrong")
            conv = L.format(bid=bid) + "conv.conv.weight"
            ref = refs.get(conv)
            if ref is not None and len(ref.shape) == 3 and ref.shape[1] == 1:
                refs[conv] = _Squeezed(ref, (ref.shape[0], ref.shape[2]))
        return super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs))

    def metadata(self) -> list[KV]:
        k = self.key
        kv_key = k(Keys.Attention.HEAD_COUNT_KV)
        kv = [e for e in super().metadata() if e.key != kv_key]
        return kv + [KV(kv_key, self.head_count_kv, GGUFValueType.ARRAY, U32),
                     KV(k(Keys.ShortConv.L_CACHE), self.l_cache, U32)]

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        info.n_head_kv, info.n_head_kv_layers = self.head_count_kv[0], tuple(self.head_count_kv)
        info.shortconv_l_cache = self.l_cache
        return info


class Lfm2Vl(Lfm2):
    """The text tower of ``Lfm2VlForConditionalGeneration`` (LFM2-VL): an LFM2 under ``model.language_model.``
    (config.json's ``text_config``); the SigLIP2 tower and projector go to the mmproj
    (:mod:`slimedge.arch.vision.lfm2vl`)."""

    hf_names = ("Lfm2VlForConditionalGeneration",)

    def tensors(self, source):
        return super().tensors(TextTower(source, hf_arch=self.hf_arch))
