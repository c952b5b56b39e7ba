"""Gemma 2 (``Gemma2ForCausalLM``) and Gemma 3 text (``Gemma3ForCausalLM``, and the language model of
``Gemma3ForConditionalGeneration``) → GGUF architectures ``gemma2`` / ``gemma3``.

What differs from Llama, and how it is converted (as llama.cpp's converter and loader expect):

* **Sandwich norms**: each block has four RMSNorms — ``input_layernorm`` (attn_norm),
  ``post_attention_layernorm`` (post_attention_norm), ``pre_feedforward_layernorm`` (ffn_norm),
  ``post_feedforward_layernorm`` (post_ffw_norm); Gemma 3 adds per-head ``q_norm``/``k_norm``.
* **(1 + w) RMSNorm**: HF stores ``w`` and multiplies by ``1 + w``; llama.cpp multiplies by the stored
  weight, so every ``*norm.weight`` gets +1 here.
* **Embeddings** are scaled by sqrt(hidden) at run time by llama.cpp: stored unchanged. Gemma 2 always
  ties the output to the embedding (llama.cpp's gemma2 has no ``output.weight``); Gemma 3 may not.
* **Attention scale**: HF uses ``query_pre_attn_scalar ** -0.5``; llama.cpp uses ``head_dim ** -0.5``
  (``(n_embd / n_head) ** -0.5`` for its 27B sizes, chosen by layer count). When they differ (a distilled
  student of a 27B, a custom config) the ratio is folded into q (Gemma 2: ``q_proj``; Gemma 3: ``q_norm``,
  which comes after ``q_proj`` and would normalize a q_proj scale away), so the logits stay the same.
* **Soft-capping** (``attn_logit_softcapping``, ``final_logit_softcapping``) and the **sliding window**
  (``sliding_window``; which layers slide from ``layer_types`` or ``sliding_window_pattern``) become
  metadata; the per-layer pattern is written only when it is not llama.cpp's default for the arch
  (every 2nd / 6th layer global). Gemma 3's local layers use ``rope.freq_base_swa`` (``rope_local_base_freq``
  or ``rope_parameters.sliding_attention``) unscaled; the global layers take ``rope.freq_base`` and the
  linear rope scaling.
* **Multimodal checkpoints**: ``language_model.`` is dropped from names (``language_model.model.layers``
  and ``model.language_model.layers`` both become ``model.layers``); the vision tower and projector are
  left out of the text model (``slimedge.arch.vision.gemma3`` writes them as the mmproj). Rope is neox-style:
  no q/k permutation.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import SWA_DEFAULT_PATTERN, ModelInfo, swa_pattern
from .base import BOOL, F32, KV, U32, Arch

log = logging.getLogger(__name__)

T = MODEL_TENSOR
_ARRAY = GGUFValueType.ARRAY
NO_CAP = 1e6  # soft-cap standing for "none" in llama.cpp's gemma2 (which always caps)
L = "model.layers.{bid}."

GEMMA2_TENSORS = [
    ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
    (L + "input_layernorm.weight", T.ATTN_NORM, True),
    (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
    (L + "self_attn.k_proj.weight", T.ATTN_K, True),
    (L + "self_attn.v_proj.weight", T.ATTN_V, True),
    (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
    (L + "post_attention_layernorm.weight", T.ATTN_POST_NORM, True),
    (L + "pre_feedforward_layernorm.weight", T.FFN_PRE_NORM, True),  # GGUF name "ffn_norm", as FFN_NORM
    (L + "mlp.gate_proj.weight", T.FFN_GATE, True),
    (L + "mlp.up_proj.weight", T.FFN_UP, True),
    (L + "mlp.down_proj.weight", T.FFN_DOWN, True),
    (L + "post_feedforward_layernorm.weight", T.FFN_POST_NORM, True),
    ("model.norm.weight", T.OUTPUT_NORM, True),
]
# Gemma 2 is always tied (see Gemma2): a stored lm_head.weight is dropped without a warning
GEMMA2_TABLE = GEMMA2_TENSORS + [("lm_head.weight", T.OUTPUT, False)]

_QK_NORMS = [(L + "self_attn.q_norm.weight", T.ATTN_Q_NORM, True),
             (L + "self_attn.k_norm.weight", T.ATTN_K_NORM, True)]
_AFTER_K = GEMMA2_TENSORS.index((L + "self_attn.k_proj.weight", T.ATTN_K, True)) + 1
GEMMA3_TENSORS = (GEMMA2_TENSORS[:_AFTER_K] + _QK_NORMS + GEMMA2_TENSORS[_AFTER_K:]
                  + [("lm_head.weight", T.OUTPUT, True)])  # unless tie_word_embeddings

# prefixes of a multimodal checkpoint's non-text towers (older and transformers >= 4.52 layouts)
_VISION = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


class _TextView:
    """A source whose tensor names lose the ``language_model.`` wrapper and the vision tower."""

    def __init__(self, source, tensors: dict):
        self.model_dir, self.tensors = source.model_dir, tensors


class _Gemma(Arch):
    """What Gemma 2 and Gemma 3 share; subclasses give the table and the 27B layer count."""

    LARGE_LAYERS: int  # llama.cpp's LLM_TYPE_27B for this arch: attention scale from n_embd / n_head
    DEFAULT_PATTERN: int  # every n-th layer is global (llama.cpp's default)

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.swa_layers = self._swa_layers()

    # ---- sliding window ------------------------------------------------------------------------

    @property
    def n_swa(self) -> int:
        return int(self.config.get("sliding_window") or 0)

    def _swa_layers(self) -> tuple[bool, ...]:
        """Which layers slide (() when none does), from layer_types or sliding_window_pattern."""
        if not self.n_swa:
            return ()
        types = self.config.get("layer_types")
        if isinstance(types, list) and types:
            if len(types) != self.hp.n_layer:
                raise SlimedgeError(f"config.json: layer_types has {len(types)} entries for "
                                    f"{self.hp.n_layer} layers; fix config.json")
            layers = tuple(t == "sliding_attention" for t in types)
            return layers if any(layers) else ()
        n = self.config.get("sliding_window_pattern", self.config.get("_sliding_window_pattern"))
        return swa_pattern(self.DEFAULT_PATTERN if n is None else int(n), self.hp.n_layer)

    def swa_metadata(self) -> list[KV]:
        k = self.key
        if not self.swa_layers:
            return []
        kv = [KV(k(Keys.Attention.SLIDING_WINDOW), self.n_swa, U32)]
        if self.swa_layers != swa_pattern(SWA_DEFAULT_PATTERN[self.arch][0], self.hp.n_layer):
            kv.append(KV(k(Keys.Attention.SLIDING_WINDOW_PATTERN), list(self.swa_layers), _ARRAY, BOOL))
        return kv

    # ---- attention scale -----------------------------------------------------------------------

    def q_scale(self) -> float:
        """Factor folded into q so that llama.cpp's fixed attention scale gives HF's."""
        hp = self.hp
        want = float(self.config.get("query_pre_attn_scalar") or hp.head_dim) ** -0.5
        base = hp.n_embd // hp.n_head if hp.n_layer == self.LARGE_LAYERS else hp.head_dim
        return want / float(base) ** -0.5

    def q_tensor(self) -> str:
        raise NotImplementedError

    # ---- tensors -------------------------------------------------------------------------------

    def transform(self, gguf_name_: str, x: np.ndarray) -> np.ndarray:
        if gguf_name_.endswith("norm.weight"):
            x = x + np.float32(1.0)
        if f".{self.q_tensor()}." in gguf_name_:
            scale = self.q_scale()
            if not math.isclose(scale, 1.0, rel_tol=1e-7):
                x = x * np.float32(scale)
        return x

    def row_group(self, gguf_name_: str, shape: tuple[int, ...]) -> int:
        return 1  # element-wise: any rows

    def tensors(self, source):
        refs, vision = {}, []
        for name, ref in source.tensors.items():
            if name.startswith(_VISION):
                vision.append(name)
                continue
            if name.startswith("language_model."):
                name = name[len("language_model."):]
            elif name.startswith("model.language_model."):
                name = "model." + name[len("model.language_model."):]
            refs[name] = ref
        if vision:
            from .vision import supported_projectors

            if self.hf_arch in supported_projectors():
                log.info("%s: the vision tower (%d tensors) is not in the text model; it goes to the mmproj "
                         "(slimedge.mmproj)", source.model_dir, len(vision))
            else:
                log.warning("%s: skipping the vision tower (%d tensors); slimedge converts the language model only",
                            source.model_dir, len(vision))
        return super().tensors(_TextView(source, refs))

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor in (T.ATTN_POST_NORM, T.FFN_PRE_NORM, T.FFN_POST_NORM):
            return (hp.n_embd,)
        if tensor in (T.ATTN_Q_NORM, T.ATTN_K_NORM):
            return (hp.head_dim,)
        return super().expected_shape(tensor, is_bias)

    # ---- metadata ------------------------------------------------------------------------------

    def metadata(self) -> list[KV]:
        kv = super().metadata()
        have = {e.key for e in kv}
        for key in (Keys.Attention.KEY_LENGTH, Keys.Attention.VALUE_LENGTH):  # as llama.cpp's converter
            if self.key(key) not in have:
                kv.append(KV(self.key(key), self.hp.head_dim, U32))
        return kv + self.swa_metadata()

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        info.n_swa, info.swa_layers = (self.n_swa, self.swa_layers) if self.swa_layers else (0, ())
        return info



class Gemma2(_Gemma):
    hf_names = ("Gemma2ForCausalLM",)
    gguf_arch = MODEL_ARCH.GEMMA2
    TENSORS = GEMMA2_TABLE
    LARGE_LAYERS = 46
    DEFAULT_PATTERN = 2

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        if self.hp.tied is False:
            raise SlimedgeError("config.json: tie_word_embeddings is false, but llama.cpp's gemma2 always uses "
                                "the token embedding as the output layer; Gemma 2 models are tied")
        self.hp.tied = True  # a stored lm_head.weight is the embedding's copy: skipped

    def q_tensor(self) -> str:
        return "attn_q"

    def metadata(self) -> list[KV]:
        # llama.cpp's gemma2 always caps (0 would divide by zero; an absent key means 50 / 30): a config
        # without capping gets NO_CAP, where tanh(x / cap) * cap equals x to float32 precision
        k, c = self.key, self.config
        return super().metadata() + [
            KV(k(Keys.LLM.ATTN_LOGIT_SOFTCAPPING), float(c.get("attn_logit_softcapping") or NO_CAP), F32),
            KV(k(Keys.LLM.FINAL_LOGIT_SOFTCAPPING), float(c.get("final_logit_softcapping") or NO_CAP), F32),
        ]

    def swa_metadata(self) -> list[KV]:
        kv = super().swa_metadata()
        if not self.swa_layers:  # llama.cpp's gemma2 slides by default: say explicitly that no layer does
            kv = [KV(self.key(Keys.Attention.SLIDING_WINDOW_PATTERN), [False] * self.hp.n_layer, _ARRAY, BOOL)]
        return kv


class Gemma3(_Gemma):
    hf_names = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
    gguf_arch = MODEL_ARCH.GEMMA3
    TENSORS = GEMMA3_TENSORS
    LARGE_LAYERS = 62
    DEFAULT_PATTERN = 6

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        if config.get("attn_logit_softcapping"):
            raise SlimedgeError("config.json: attn_logit_softcapping is set, but llama.cpp's gemma3 has no "
                                "attention soft-capping; remove it (Gemma 3 does not use it)")

    def q_tensor(self) -> str:
        return "attn_q_norm"

    @property
    def rope_theta_swa(self) -> float:
        """Base frequency of the sliding (local) layers."""
        local = (self.config.get("rope_parameters") or {}).get("sliding_attention")
        if isinstance(local, dict) and local.get("rope_theta") is not None:
            return float(local["rope_theta"])
        return float(self.config.get("rope_local_base_freq", 10000.0))

    def metadata(self) -> list[KV]:
        k = self.key
        kv = super().metadata()
        if self.config.get("final_logit_softcapping"):
            kv.append(KV(k(Keys.LLM.FINAL_LOGIT_SOFTCAPPING), float(self.config["final_logit_softcapping"]), F32))
        if self.swa_layers:
            kv.append(KV(k(Keys.Rope.FREQ_BASE_SWA), self.rope_theta_swa, F32))
        return kv
