"""Gemma 4's vision tower (``Gemma4ForConditionalGeneration``) -> mmproj, llama.cpp projector ``gemma4v``.

The tower (``model.vision_tower.``): a patch embedding that is a ``Linear`` over the flattened ``p x p x 3`` patch
(pixels scaled to [-1, 1] in the model), plus a learned 2-D position table ``[2, size, hidden]`` (one row per x
and one per y); blocks of RMSNorm -> attention with q/k RMSNorms and 2-D neox rope (x on the first half of each
head, y on the second, theta 100) -> RMSNorm (post-attention) -> RMSNorm -> gated GELU MLP -> RMSNorm
(post-feed-forward); every linear may be a *clipped* linear (``use_clipped_linears``: ``input_min/max``,
``output_min/max`` scalars clamp its input and output). Then average pooling of ``pooling_kernel_size`` x
``pooling_kernel_size`` patches, a ``sqrt(hidden)`` scale, optional standardization (``std_bias``,
``std_scale``), and the embedder: a weightless RMSNorm and ``embedding_projection`` (``mm.input_projection``).

As llama.cpp's converter writes it (``conversion/gemma.py``, ``Gemma4VisionAudioModel``): the patch Linear as a
conv2d kernel ``[hidden, 3, p, p]`` (F16 under ``--mmproj-type f16``, else F32), the position table F32, the
clip scalars as 1-element F32 tensors beside their weight (``v.blk.N.attn_q.input_max``; libmtmd reads them
for each ``.weight``), ``std_bias``/``std_scale`` as ``v.std_bias``/``v.std_scale``, the projector type under
``clip.vision.projector_type``, ``image_size`` 224 (unused: libmtmd sizes images itself). libmtmd fixes the
rope theta (100) and reads the pooling size as ``clip.vision.projector.scale_factor`` (3 when absent, as the
converter leaves it): another theta is refused; another pooling size is written. The audio tower of the E2B/E4B
checkpoints (llama.cpp's converter puts it in the same file) is not converted: slimedge's mmproj is vision only.
"""

from __future__ import annotations

import logging

import numpy as np
from gguf import MODEL_TENSOR as T
from gguf import Keys

from ...errors import SlimedgeError
from ..base import OutTensor
from .base import CV, KV, STR, U32, Projector, Q

log = logging.getLogger(__name__)

V, E = "model.vision_tower.", "model.vision_tower.encoder.layers.{bid}."
CLIPS = ("input_max", "input_min", "output_max", "output_min")
IMAGE_SIZE = 224  # what llama.cpp's converter writes
LIBMTMD_ROPE_THETA, LIBMTMD_POOLING = 100.0, 3
_BARE = {"v.std_bias.weight": "v.std_bias", "v.std_scale.weight": "v.std_scale"}  # names without .weight


class Gemma4VisionProjector(Projector):
    hf_names = ("Gemma4ForConditionalGeneration",)
    projector_type = "gemma4v"
    SUFFIXES = ("weight", "bias") + CLIPS
    TENSORS = [
        ("model.embed_vision.embedding_projection", T.V_MM_INP_PROJ, True),
        (E + "input_layernorm", T.V_ENC_INPUT_NORM, True),
        (E + "layer_scalar", T.V_LAYER_OUT_SCALE, False),
        (E + "mlp.down_proj", T.V_ENC_FFN_DOWN, True),
        (E + "mlp.gate_proj", T.V_ENC_FFN_GATE, True),
        (E + "mlp.up_proj", T.V_ENC_FFN_UP, True),
        (E + "post_attention_layernorm", T.V_ENC_ATTN_POST_NORM, True),
        (E + "post_feedforward_layernorm", T.V_ENC_FFN_POST_NORM, True),
        (E + "pre_feedforward_layernorm", T.V_ENC_POST_ATTN_NORM, True),
        (E + "self_attn.k_norm", T.V_ENC_ATTN_K_NORM, True),
        (E + "self_attn.k_proj", T.V_ENC_ATTN_K, True),
        (E + "self_attn.o_proj", T.V_ENC_ATTN_O, True),
        (E + "self_attn.q_norm", T.V_ENC_ATTN_Q_NORM, True),
        (E + "self_attn.q_proj", T.V_ENC_ATTN_Q, True),
        (E + "self_attn.v_proj", T.V_ENC_ATTN_V, True),
        (V + "patch_embedder.input_proj", T.V_ENC_EMBD_PATCH, True),
        (V + "patch_embedder.position_embedding_table", T.V_ENC_EMBD_POS, True),
        (V + "std_bias", T.V_STD_BIAS, False),  # standardize: true
        (V + "std_scale", T.V_STD_SCALE, False),
    ]
    ALIASES = [(V, V), ("model.embed_vision.", "model.embed_vision.")]

    def __init__(self, config: dict, hf_arch: str, preprocessor: dict | None = None):
        vision = config.get("vision_config")
        if isinstance(vision, dict):
            config = {**config, "vision_config": {**vision, "image_size": IMAGE_SIZE}}
        super().__init__(config, hf_arch, preprocessor)
        rope = self.vision.get("rope_parameters") or {}
        theta = float(rope.get("rope_theta", self.vision.get("rope_theta", LIBMTMD_ROPE_THETA)))
        if theta != LIBMTMD_ROPE_THETA:
            raise SlimedgeError(f"config.json: {hf_arch} vision rope_theta {theta:g}; libmtmd's gemma4v ropes with "
                                f"{LIBMTMD_ROPE_THETA:g} only, so the image embeddings would be wrong")
        self.pooling = int(self.vision.get("pooling_kernel_size", LIBMTMD_POOLING))

    def canonical(self, name: str) -> str | None:
        canon = super().canonical(name)
        if canon is not None and canon.endswith(".linear.weight"):  # a clipped linear's weight
            canon = canon[:-len(".linear.weight")] + ".weight"
        return canon

    def metadata(self) -> list[KV]:
        return [KV(CV.PROJECTOR_TYPE, self.projector_type, STR) if e.key == Keys.Clip.PROJECTOR_TYPE else e
                for e in super().metadata()]

    def family_metadata(self) -> list[KV]:
        if self.pooling != LIBMTMD_POOLING:
            return [KV(CV.Projector.SCALE_FACTOR, self.pooling, U32)]
        return []

    def tensors(self, source) -> list[OutTensor]:
        audio = [n for n in source.tensors if n.startswith(("model.audio_tower.", "model.embed_audio."))]
        if audio:
            log.info("%s: the audio tower (%d tensors) is not converted; slimedge's mmproj holds the vision "
                     "tower only", source.model_dir, len(audio))
        return super().tensors(source)

    def out_tensors(self, name: str, ref) -> list[OutTensor]:
        if name in _BARE:
            self.hf_of[_BARE[name]] = self.hf_of.pop(name)
            name = _BARE[name]
        return super().out_tensors(name, ref)

    def out_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if name == "v.patch_embd.weight":
            p = int(self.vparam("patch_size"))
            if len(shape) != 2 or shape[1] != 3 * p * p:
                raise SlimedgeError(f"{self.hf_arch}: patch embedding of shape {list(shape)}; expected the Linear "
                                    f"[hidden, 3 * {p} * {p}]")
            return (shape[0], 3, p, p)
        return (1,) if shape == () else shape  # the clip scalars

    def transform(self, gguf_name: str, x: np.ndarray) -> np.ndarray:
        if gguf_name == "v.patch_embd.weight" and x.ndim == 2:
            p = int(self.vparam("patch_size"))
            return x.reshape(x.shape[0], p, p, 3).transpose(0, 3, 1, 2)  # (row, col, channel) -> conv2d
        return x.reshape(1) if x.ndim == 0 else x

    def force_type(self, hf_name: str, gguf_name: str):
        return Q.F32 if "position_embedding_table" in hf_name else None
