"""Gemma 4 text (``Gemma4ForCausalLM``, and the language model of ``Gemma4ForConditionalGeneration``: E2B, E4B,
31B) → GGUF architecture ``gemma4``, laid out as llama.cpp's converter and ``llama_model_gemma4`` do.

What Gemma 4 changes from Gemma 3 (and shares with Gemma 3n), and how it is converted:

* **Two attention shapes**: sliding layers use ``head_dim`` and ``num_key_value_heads``; full layers
  ``global_head_dim`` (or ``per_layer_config``'s) and ``num_global_key_value_heads`` → ``key_length`` /
  ``key_length_swa`` and a per-layer ``head_count_kv``. With ``attention_k_eq_v`` the full layers have no
  ``v_proj`` (llama.cpp then uses K as V, as transformers does).
* **Proportional rope** on full layers (``partial_rotary_factor`` of the head rotated, frequencies relative
  to the whole head): llama.cpp ropes the whole head with a ``rope_freqs`` tensor of 1 for the rotated
  pairs and 1e30 (no rotation) for the rest, generated here as the converter does.
* **Per-layer embeddings** (E2B/E4B: ``hidden_size_per_layer_input`` > 0), as Gemma 3n's (padded to
  ``vocab_size`` with copies of row 0, the row llama.cpp also uses for image embeddings); **KV sharing**: the
  last ``num_kv_shared_layers`` layers have no k/v of their own and reuse the cache of the last sliding / full
  layer before them; ``use_double_wide_mlp`` doubles their feed-forward (a per-layer ``feed_forward_length``).
  ``layer_scalar`` → ``layer_output_scale``.
* Norms are ``x·w`` (stored unchanged), the attention scale is 1, embeddings are scaled at run time.
* ``final_logit_softcapping`` absent: 0 is written (llama.cpp would otherwise cap at its default 30).

* **MoE** (26B-A4B, ``enable_moe_block``): beside the dense MLP each layer has a router (``ffn_gate_inp`` and its
  ``.scale``), transformers' fused ``gate_up_proj`` as ``ffn_gate_up_exps`` (gate rows first, as llama.cpp splits
  it), ``ffn_down_exps`` with ``router.per_expert_scale`` as its ``.scale``, and three more norms.

Not converted, each refused in one line: attention biases and bidirectional attention over text
(``use_bidirectional_attention: "all"``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from .base import BOOL, F32, KV, U32, Arch, gguf_name
from .gemma import GEMMA3_TENSORS, _Gemma
from ._gemma_ple import PLE_GLOBAL, PLE_LAYER, kv_sharing, pad_rows

T = MODEL_TENSOR
L = "model.layers.{bid}."
_ARRAY = GGUFValueType.ARRAY
_OPTIONAL_KV = {T.ATTN_K, T.ATTN_V, T.ATTN_K_NORM}  # absent on shared-KV layers (V: and on k_eq_v full layers)
_PER_LAYER_SHAPE = {T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.ATTN_Q_NORM, T.ATTN_K_NORM,
                    T.FFN_GATE, T.FFN_UP, T.FFN_DOWN}
# the MoE sizes' rows beside the dense MLP (transformers' 3-D expert tensors and router scales, renamed in tensors())
MOE_LAYER = [(L + "router.proj.weight", T.FFN_GATE_INP, False), (L + "router.scale", T.FFN_GATE_INP, False),
             (L + "pre_feedforward_layernorm_2.weight", T.FFN_PRE_NORM_2, False),
             (L + "experts.gate_up_proj.weight", T.FFN_GATE_UP_EXP, False),
             (L + "experts.down_proj.weight", T.FFN_DOWN_EXP, False),
             (L + "experts.down_proj.scale", T.FFN_DOWN_EXP, False),  # router.per_expert_scale
             (L + "post_feedforward_layernorm_1.weight", T.FFN_POST_NORM_1, False),
             (L + "post_feedforward_layernorm_2.weight", T.FFN_POST_NORM_2, False)]
_RENAMES = {"experts.gate_up_proj": "experts.gate_up_proj.weight", "experts.down_proj": "experts.down_proj.weight",
            "router.per_expert_scale": "experts.down_proj.scale", "layer_scalar": "layer_scalar.weight"}
# per-layer embeddings are optional (31B has none): checked against hidden_size_per_layer_input in _check_layers
GEMMA4_TENSORS = ([GEMMA3_TENSORS[0], *[(n, t, False) for n, t, _ in PLE_GLOBAL]]
                  + [(n, t, r and t not in _OPTIONAL_KV) for n, t, r in GEMMA3_TENSORS[1:-2]] + MOE_LAYER
                  + [(n, t, False) for n, t, _ in PLE_LAYER]
                  + [(L + "layer_scalar.weight", T.LAYER_OUT_SCALE, False)] + GEMMA3_TENSORS[-2:])


class Gemma4(_Gemma):
    hf_names = ("Gemma4ForCausalLM", "Gemma4ForConditionalGeneration")
    gguf_arch = MODEL_ARCH.GEMMA4
    TENSORS = GEMMA4_TENSORS
    LARGE_LAYERS = -1
    DEFAULT_PATTERN = 6

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        c, hp = config, self.hp
        for key, bad, why in (("attention_bias", True, "llama.cpp's gemma4 has no attention biases"),
                              ("use_bidirectional_attention", "all", "llama.cpp's gemma4 is causal over text")):
            if c.get(key) == bad:
                raise SlimedgeError(f"config.json: {key} is {bad!r}, but {why}; this Gemma 4 cannot be converted")
        if not isinstance(c.get("layer_types"), list):
            raise SlimedgeError("config.json: Gemma 4 needs layer_types (sliding_attention / full_attention per "
                                "layer); fix config.json")
        self.is_swa = tuple(t == "sliding_attention" for t in c["layer_types"])
        full = [str(i) for i, s in enumerate(self.is_swa) if not s]
        per_layer = {str(k): v for k, v in (c.get("per_layer_config") or {}).items()}
        first = per_layer.get(full[0], {}) if full else {}
        self.head_dim_full = int(c.get("global_head_dim") or first.get("head_dim") or hp.head_dim)
        self.n_kv_full = int(c.get("num_global_key_value_heads") or first.get("num_key_value_heads")
                             or hp.n_head_kv)
        self.k_eq_v = bool(c.get("attention_k_eq_v"))
        self.n_shared = int(c.get("num_kv_shared_layers") or 0)
        self.n_kv = hp.n_layer - self.n_shared
        kv_sharing(hp, self.is_swa, self.n_shared, self.n_kv, "")
        self.n_ple = int(c.get("hidden_size_per_layer_input") or 0)
        wide = bool(c.get("use_double_wide_mlp")) and self.n_shared
        self.ff_layers = [hp.n_ff * (2 if wide and i >= self.n_kv else 1) for i in range(hp.n_layer)]
        self.moe = bool(c.get("enable_moe_block"))
        try:
            self.n_expert, self.n_expert_used, self.n_ff_exp = (
                (int(c["num_experts"]), int(c["top_k_experts"]), int(c["moe_intermediate_size"])) if self.moe
                else (0, 0, 0))
        except (KeyError, TypeError, ValueError):
            raise SlimedgeError("config.json: enable_moe_block needs num_experts, top_k_experts and "
                                "moe_intermediate_size; fix config.json") from None
        rope = c.get("rope_parameters") or {}
        self.rope_full, self.rope_swa = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
        if str(self.rope_full.get("rope_type", "proportional")) not in ("proportional", "default"):
            raise SlimedgeError(f"config.json: full-attention rope type {self.rope_full.get('rope_type')!r} is not "
                                "converted for Gemma 4 (llama.cpp's gemma4 expects 'proportional')")

    def transform(self, gguf_name_, x):
        return x  # Gemma 4 norms multiply by w; the attention scale is 1

    def q_tensor(self) -> str:
        return ""

    @property
    def head_count_kv(self) -> list[int]:
        return [self.hp.n_head_kv if s else self.n_kv_full for s in self.is_swa]

    def expected_shape(self, tensor, is_bias):
        if tensor in _PER_LAYER_SHAPE or tensor in {t for _, t, _ in MOE_LAYER}:
            return None  # per-layer sizes: llama.cpp checks each against the per-layer hyper-parameters
        if tensor == T.PER_LAYER_TOKEN_EMBD:
            return (self.hp.n_vocab, self.n_ple * self.hp.n_layer)
        return super().expected_shape(tensor, is_bias)

    def tensors(self, source):
        refs = {_renamed(k): v for k, v in source.tensors.items()
                if not k.startswith(("model.audio_tower.", "model.embed_audio.", "model.embed_vision.",
                                     "model.language_model.embed_audio.", "model.language_model.embed_vision."))}
        for name in ("model.embed_tokens_per_layer.weight", "model.language_model.embed_tokens_per_layer.weight"):
            if name in refs:
                refs[name] = pad_rows(name, refs[name], self.hp.n_vocab)
        self._check_layers(refs, source.model_dir)
        return super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs))

    def _check_layers(self, refs: dict, model_dir) -> None:
        """The tensors the table lists as optional that this config needs (per layer)."""
        ple = [n for n, _, _ in PLE_GLOBAL] if self.n_ple else []
        for name in ple:
            self._need(refs, name, model_dir, f"hidden_size_per_layer_input is {self.n_ple}")
        for bid in range(self.hp.n_layer):
            need = [n for n, _, _ in PLE_LAYER] if self.n_ple else []
            need += [n for n, _, _ in MOE_LAYER] if self.moe else []
            if bid < self.n_kv:
                need += [L + "self_attn.k_proj.weight", L + "self_attn.k_norm.weight"]
                need += [] if self.k_eq_v and not self.is_swa[bid] else [L + "self_attn.v_proj.weight"]
            for name in need:
                self._need(refs, name.format(bid=bid), model_dir, f"layer {bid}'s KV cache or per-layer input")

    def _need(self, refs: dict, name: str, model_dir, why: str) -> None:
        if name not in refs and "model.language_model." + name[len("model."):] not in refs:
            raise SlimedgeError(f"{model_dir}: missing tensor {name}, which {self.hf_arch} needs ({why}); the "
                                "checkpoint is incomplete")

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        if all(self.is_swa):
            return []
        half = self.head_dim_full // 2
        n_rot = int(self.head_dim_full * float(self.rope_full.get("partial_rotary_factor", 1.0)) / 2)
        factors = np.array([1.0] * n_rot + [1e30] * (half - n_rot), np.float32)
        return [(gguf_name(T.ROPE_FREQS, "weight"), factors)]

    def metadata(self) -> list[KV]:
        k, c, hp = self.key, self.config, self.hp
        replaced = {k(x) for x in (Keys.LLM.FEED_FORWARD_LENGTH, Keys.Attention.HEAD_COUNT_KV,
                                   Keys.Attention.KEY_LENGTH, Keys.Attention.VALUE_LENGTH, Keys.Rope.FREQ_BASE)}
        kv = [e for e in super().metadata() if e.key not in replaced]
        ff = KV(k(Keys.LLM.FEED_FORWARD_LENGTH), self.ff_layers, _ARRAY, U32) \
            if len(set(self.ff_layers)) > 1 else KV(k(Keys.LLM.FEED_FORWARD_LENGTH), hp.n_ff, U32)
        n_rot_swa = int(hp.head_dim * float(self.rope_swa.get("partial_rotary_factor", 1.0)))
        return kv + [
            ff, KV(k(Keys.Attention.HEAD_COUNT_KV), self.head_count_kv, _ARRAY, U32),
            KV(k(Keys.Attention.KEY_LENGTH), self.head_dim_full, U32),
            KV(k(Keys.Attention.VALUE_LENGTH), self.head_dim_full, U32),
            KV(k(Keys.Attention.KEY_LENGTH_SWA), hp.head_dim, U32),
            KV(k(Keys.Attention.VALUE_LENGTH_SWA), hp.head_dim, U32),
            KV(k(Keys.Rope.FREQ_BASE), float(self.rope_full.get("rope_theta", 1e6)), F32),
            KV(k(Keys.Rope.FREQ_BASE_SWA), float(self.rope_swa.get("rope_theta", 1e4)), F32),
            KV(k(Keys.Rope.DIMENSION_COUNT), self.head_dim_full, U32),
            KV(k(Keys.Rope.DIMENSION_COUNT_SWA), n_rot_swa, U32),
            KV(k(Keys.Attention.SHARED_KV_LAYERS), self.n_shared, U32),
            KV(k(Keys.LLM.EMBD_LENGTH_PER_LAYER_INP), self.n_ple, U32),
            KV(k(Keys.LLM.FINAL_LOGIT_SOFTCAPPING), float(c.get("final_logit_softcapping") or 0.0), F32)] + ([
            KV(k(Keys.LLM.EXPERT_COUNT), self.n_expert, U32),
            KV(k(Keys.LLM.EXPERT_USED_COUNT), self.n_expert_used, U32),
            KV(k(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), self.n_ff_exp, U32)] if self.moe else [])

    def rope_scaling_metadata(self) -> list[KV]:
        return []  # proportional rope is the rope_freqs tensor (extra_tensors); no other scaling

    def swa_metadata(self) -> list[KV]:  # the pattern is required by llama.cpp's gemma4
        return [KV(self.key(Keys.Attention.SLIDING_WINDOW), self.n_swa, U32),
                KV(self.key(Keys.Attention.SLIDING_WINDOW_PATTERN), list(self.is_swa), _ARRAY, BOOL)]

    def model_info(self) -> ModelInfo:
        info = Arch.model_info(self)
        info.key_length = info.value_length = self.head_dim_full
        info.key_length_swa = info.value_length_swa = self.hp.head_dim
        info.n_head_kv = self.head_count_kv[0]
        info.n_head_kv_layers = tuple(n if i < self.n_kv else 0 for i, n in enumerate(self.head_count_kv))
        info.n_ff_layers = tuple(self.ff_layers) if len(set(self.ff_layers)) > 1 else ()
        info.n_swa, info.swa_layers = self.n_swa, self.is_swa
        info.n_expert = self.n_expert
        return info


def _renamed(name: str) -> str:
    """transformers' parameter names without ``.weight`` (and the per-expert scale) under the table's names."""
    for old, new in _RENAMES.items():
        if name.endswith("." + old):
            return name[:-len(old)] + new
    return name
