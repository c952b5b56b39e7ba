"""Gemma 3n text (``Gemma3nForCausalLM``, and the language model of ``Gemma3nForConditionalGeneration``:
E2B, E4B) → GGUF architecture ``gemma3n``, laid out as llama.cpp's converter and ``llama_model_gemma3n`` do.

What Gemma 3n adds to Gemma 3, and how it is converted:

* **Per-layer embeddings (PLE)**: ``embed_tokens_per_layer`` ``[vocab_per_layer, n_layer·256]``
  (``per_layer_token_embd``), ``per_layer_model_projection`` and its norm; per layer an input gate, a
  projection and a post-norm (``inp_gate``, ``proj``, ``post_norm``). The PLE table is padded up to
  ``vocab_size`` (the multimodal ids) with copies of row 0 — transformers looks those ids up as id 0;
  llama.cpp's converter pads zeros, which differs for them.
* **AltUp**: the three ``altup_projections.{0,1,2}`` (and ``altup_unembed_projections``) are stacked into one
  ``[3, n_embd, n_embd]`` tensor; per layer the router, its norm, the prediction/correction coefficients
  and ``correct_output_scale``. **LAuReL**: ``laurel_l``/``laurel_r`` and a post-norm.
* **KV sharing**: the last ``num_kv_shared_layers`` layers reuse the cache of the last sliding / full layer
  before them; their k/v projections are stored but unused (written, as llama.cpp's converter does).
* Norms are plain ``x·w`` in Gemma 3n (no ``1 + w``), the attention scale is 1 (q/k/v are RMS-normed), and
  the embeddings are scaled at run time: every weight is stored unchanged.

llama.cpp's ``gemma3n`` fixes what the config could vary — 4 AltUp inputs (the active one first), LAuReL
rank 64, 256 per-layer dimensions, KV cache for exactly the first 20 layers, activation sparsity 0.95 on
the first 10 layers and a final soft-cap of 30 (none of which it reads from the file). A config that
differs would convert to a file that computes something else, so it is refused in one line naming the key.
"""

from __future__ import annotations

import logging
from statistics import NormalDist
from types import SimpleNamespace

from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from .base import F32, KV, U32, Arch
from .gemma import _Gemma
from ._gemma_ple import PLE_GLOBAL, PLE_LAYER, Zeros, kv_sharing, pad_rows
from .gemma import Gemma3
from .moe import Part, StackedRef

T = MODEL_TENSOR
L = "model.layers.{bid}."
_ARRAY = GGUFValueType.ARRAY
log = logging.getLogger(__name__)
# prefixes of the non-text towers of Gemma3nForConditionalGeneration (after language_model is unwrapped)
_TOWERS = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")
N_KV_LAYERS = 20  # llama.cpp's gemma3n: hparams.n_layer_kv_from_start
N_SPARSE_LAYERS, SPARSITY = 10, 0.95  # llama.cpp's gemma3n: n_layer_sparsity, f_sparsity_std_mul = icdf(0.95)
FIXED = {"altup_num_inputs": 4, "altup_active_idx": 0, "laurel_rank": 64, "hidden_size_per_layer_input": 256,
         "final_logit_softcapping": 30.0, "altup_correct_scale": True}

GEMMA3N_TENSORS = [
    ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
    *PLE_GLOBAL,
    ("model.altup_projections.weight", T.ALTUP_PROJ, True),  # stacked from altup_projections.{0,1,2}
    ("model.altup_unembed_projections.weight", T.ALTUP_UNEMBD_PROJ, True),
    (L + "input_layernorm.weight", T.ATTN_NORM, True),
    (L + "self_attn.q_proj.weight", T.ATTN_Q, True),
    (L + "self_attn.k_proj.weight", T.ATTN_K, True),
    (L + "self_attn.v_proj.weight", T.ATTN_V, True),
    (L + "self_attn.q_norm.weight", T.ATTN_Q_NORM, True),
    (L + "self_attn.k_norm.weight", T.ATTN_K_NORM, True),
    (L + "self_attn.o_proj.weight", T.ATTN_OUT, True),
    (L + "post_attention_layernorm.weight", T.ATTN_POST_NORM, True),
    (L + "pre_feedforward_layernorm.weight", T.FFN_PRE_NORM, True),
    (L + "mlp.gate_proj.weight", T.FFN_GATE, True),
    (L + "mlp.up_proj.weight", T.FFN_UP, True),
    (L + "mlp.down_proj.weight", T.FFN_DOWN, True),
    (L + "post_feedforward_layernorm.weight", T.FFN_POST_NORM, True),
    *PLE_LAYER,
    (L + "altup.correction_coefs.weight", T.ALTUP_CORRECT_COEF, True),
    (L + "altup.correct_output_scale.weight", T.ALTUP_CORRECT_SCALE, True),
    (L + "altup.prediction_coefs.weight", T.ALTUP_PREDICT_COEF, True),
    (L + "altup.modality_router.weight", T.ALTUP_ROUTER, True),
    (L + "altup.router_norm.weight", T.ALTUP_ROUTER_NORM, True),
    (L + "laurel.linear_left.weight", T.LAUREL_L, True),
    (L + "laurel.linear_right.weight", T.LAUREL_R, True),
    (L + "laurel.post_laurel_norm.weight", T.LAUREL_POST_NORM, True),
    ("model.norm.weight", T.OUTPUT_NORM, True),
    ("lm_head.weight", T.OUTPUT, True),  # unless tie_word_embeddings (the default)
]


class Gemma3n(_Gemma):
    hf_names = ("Gemma3nForCausalLM", "Gemma3nForConditionalGeneration")
    gguf_arch = MODEL_ARCH.GEMMA3N
    TENSORS = GEMMA3N_TENSORS
    LARGE_LAYERS = -1  # no size of Gemma 3n takes llama.cpp's 27B attention scale
    DEFAULT_PATTERN = 5

    def __init__(self, config: dict, hf_arch: str):
        ff = config.get("intermediate_size")
        self.ff_layers = [int(x) for x in ff] if isinstance(ff, list) else []
        if self.ff_layers:
            config = {**config, "intermediate_size": self.ff_layers[0]}
        config = {**config, "tie_word_embeddings": config.get("tie_word_embeddings", True)}
        super().__init__(config, hf_arch)
        if self.ff_layers and len(self.ff_layers) != self.hp.n_layer:
            raise SlimedgeError(f"config.json: intermediate_size lists {len(self.ff_layers)} sizes for "
                                f"{self.hp.n_layer} layers; fix config.json")
        for key, want in FIXED.items():
            if config.get(key, want) != want:
                raise SlimedgeError(f"config.json: {key} is {config[key]!r}, but llama.cpp's gemma3n is built for "
                                    f"{want!r} (it does not read this value); this Gemma 3n cannot be converted")
        n = self.hp.n_layer
        want = [SPARSITY if i < N_SPARSE_LAYERS else 0.0 for i in range(n)]
        got = config.get("activation_sparsity_pattern", want)
        got = [float(got)] * n if isinstance(got, (int, float)) else [float(x) for x in got or [0.0] * n]
        self.sparsity = got
        if [round(x, 6) for x in got] != want:
            raise SlimedgeError(f"config.json: activation_sparsity_pattern is {got}, but llama.cpp's gemma3n applies "
                                f"sparsity {SPARSITY} to the first {N_SPARSE_LAYERS} layers only; cannot convert")
        self.n_shared = int(config.get("num_kv_shared_layers") or 0)
        kv_sharing(self.hp, self.swa_layers, self.n_shared, min(n, N_KV_LAYERS),
                   f"llama.cpp's gemma3n keeps a KV cache for the first {N_KV_LAYERS} layers")

    def transform(self, gguf_name_, x):
        return x  # Gemma 3n norms multiply by w; the attention scale is 1

    def q_tensor(self) -> str:
        return ""

    def expected_shape(self, tensor, is_bias):
        if tensor in (T.FFN_GATE, T.FFN_UP, T.FFN_DOWN) and self.ff_layers:
            return None  # per-layer sizes: llama.cpp checks each against feed_forward_length
        return super().expected_shape(tensor, is_bias)

    def tensors(self, source):
        refs, skipped = {}, 0
        for name, ref in source.tensors.items():
            if name.startswith("model.language_model."):
                name = "model." + name[len("model.language_model."):]
            if name.startswith(_TOWERS):
                skipped += 1
                continue
            refs[name + ".weight" if name.endswith("_scale") else name] = ref  # as llama.cpp's converter
        for kind in ("altup_projections", "altup_unembed_projections"):
            parts = [refs.pop(f"model.{kind}.{i}.weight", None) for i in range(3)]
            if all(p is not None for p in parts):
                r, c = parts[0].shape
                refs[f"model.{kind}.weight"] = StackedRef(f"model.{kind}.weight", (3, r, c),
                                                          [Part(p, 0, p.shape[0]) for p in parts])
        self.fill_shared_kv(refs)
        name = "model.embed_tokens_per_layer.weight"
        if name in refs:
            refs[name] = pad_rows(name, refs[name], self.hp.n_vocab)
        if skipped:
            log.warning("%s: skipping the vision and audio towers (%d tensors); slimedge converts the language "
                        "model only (no mmproj: Gemma 3n's MobileNet-v5 vision and conformer audio projector are "
                        "not converted)", source.model_dir, skipped)
        return Arch.tensors(self, SimpleNamespace(model_dir=source.model_dir, tensors=refs))

    def fill_shared_kv(self, refs: dict) -> None:
        """transformers 5 saves no k/v projections (nor k_norm) for the shared-KV layers, whose weights it never
        uses; llama.cpp's gemma3n loads them for every layer (and never reads them there): zeros stand in."""
        hp = self.hp
        for bid in range(hp.n_layer - self.n_shared, hp.n_layer):
            like = refs.get(L.format(bid=bid) + "self_attn.q_proj.weight")
            for suffix, shape in (("k_proj.weight", (hp.n_head_kv * hp.head_dim, hp.n_embd)),
                                  ("v_proj.weight", (hp.n_head_kv * hp.head_dim, hp.n_embd)),
                                  ("k_norm.weight", (hp.head_dim,))):
                name = L.format(bid=bid) + "self_attn." + suffix
                if like is not None and name not in refs:
                    rows = shape[0] if len(shape) == 2 else 1
                    refs[name] = StackedRef(name, shape, [Part(Zeros(like, shape[-1]), 0, rows)])

    def metadata(self) -> list[KV]:
        k = self.key
        kv = [e for e in super().metadata() if e.key != k(Keys.LLM.FEED_FORWARD_LENGTH)]
        ff = KV(k(Keys.LLM.FEED_FORWARD_LENGTH), self.ff_layers, _ARRAY, U32) if self.ff_layers else \
            KV(k(Keys.LLM.FEED_FORWARD_LENGTH), self.hp.n_ff, U32)
        return kv + [ff,
                     KV(k(Keys.LLM.ALTUP_ACTIVE_IDX), FIXED["altup_active_idx"], U32),  # checked in __init__
                     KV(k(Keys.LLM.ALTUP_NUM_INPUTS), FIXED["altup_num_inputs"], U32),
                     KV(k(Keys.LLM.EMBD_LENGTH_PER_LAYER_INP), FIXED["hidden_size_per_layer_input"], U32),
                     KV(k(Keys.Attention.SHARED_KV_LAYERS), self.n_shared, U32),
                     KV(k(Keys.LLM.ACTIVATION_SPARSITY_SCALE), self.sparsity_scale, _ARRAY, F32),
                     KV(k(Keys.LLM.FINAL_LOGIT_SOFTCAPPING), 30.0, F32),
                     KV(k(Keys.Rope.FREQ_BASE_SWA), self.rope_theta_swa, F32)]

    @property
    def sparsity_scale(self) -> list[float]:
        """Per layer, the standard-normal quantile of the sparsity (as the converter writes it; -inf for 0)."""
        return [NormalDist().inv_cdf(p) if p > 0 else float("-inf") for p in self.sparsity]

    def swa_metadata(self) -> list[KV]:  # the converter always writes the per-layer pattern
        kv = [KV(self.key(Keys.Attention.SLIDING_WINDOW), self.n_swa, U32)]
        return kv + [KV(self.key(Keys.Attention.SLIDING_WINDOW_PATTERN), list(self.swa_layers or
                                                                             (False,) * self.hp.n_layer), _ARRAY,
                        GGUFValueType.BOOL)]

    rope_theta_swa = Gemma3.rope_theta_swa

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        if self.ff_layers:
            info.n_ff_layers = tuple(self.ff_layers)
        n_kv = self.hp.n_layer - self.n_shared
        if self.n_shared:  # shared layers keep no cache of their own
            info.n_head_kv_layers = tuple(self.hp.n_head_kv if i < n_kv else 0 for i in range(self.hp.n_layer))
        return info
