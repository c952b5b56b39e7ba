"""Qwen2-VL's vision tower (``Qwen2VLForConditionalGeneration``) -> mmproj, llama.cpp projector ``qwen2vl_merger``.

Qwen2.5-VL's predecessor (:mod:`.qwen25vl`): the same conv3d patch embedding over 2 frames, fused ``qkv`` with
2-D rope and 2×2 merger (``ln_q``, ``mlp.0``, ``mlp.2`` with GELU), but LayerNorms (with biases) instead of
RMSNorms, a plain ``fc1``/``fc2`` MLP with quick-GELU (libmtmd's default activation: no ``clip.use_*`` key is
written) and full attention in every block (no windows). Its ``vision_config`` names the tower's width
``embed_dim`` and the language model's ``hidden_size``; llama.cpp's converter writes ``embed_dim`` as the
embedding length and ``hidden_size`` as ``feed_forward_length`` (a key libmtmd does not use for this projector;
the MLP's real width is ``embed_dim × mlp_ratio``, read from the tensors) — written the same here.
"""

from __future__ import annotations

from gguf import MODEL_TENSOR as T

from ..base import OutTensor
from .base import Projector
from .qwen25vl import (
    QWEN_VL_ALIASES,
    conv3d_as_two_conv2d,
    indexed_mm_name,
    mlp_index,
    split_qkv,
    vision_names,
)

V = "visual."
B = V + "blocks.{bid}."

QWEN2VL_TENSORS = [
    (V + "patch_embed.proj", T.V_ENC_EMBD_PATCH, True),
    (B + "norm1", T.V_ENC_INPUT_NORM, True),
    (B + "attn.qkv", T.V_ENC_ATTN_QKV, True),
    (B + "attn.proj", T.V_ENC_ATTN_O, True),
    (B + "norm2", T.V_ENC_POST_ATTN_NORM, True),
    (B + "mlp.fc1", T.V_ENC_FFN_UP, True),
    (B + "mlp.fc2", T.V_ENC_FFN_DOWN, True),
    (V + "merger.ln_q", T.V_POST_NORM, True),
    (V + "merger.mlp.0", T.V_MMPROJ, True),  # mm.0 and mm.2: indexed_mm_name
    (V + "merger.mlp.2", T.V_MMPROJ, True),
]


class Qwen2VLProjector(Projector):
    hf_names = ("Qwen2VLForConditionalGeneration",)
    projector_type = "qwen2vl_merger"
    TENSORS = QWEN2VL_TENSORS
    ALIASES = QWEN_VL_ALIASES

    def __init__(self, config: dict, hf_arch: str, preprocessor: dict | None = None):
        vision = config.get("vision_config")
        if isinstance(vision, dict) and "embed_dim" in vision:  # as llama.cpp's converter renames them
            vision = {**vision, "intermediate_size": vision.get("hidden_size"), "hidden_size": vision["embed_dim"]}
        if isinstance(vision, dict):
            config = {**config, "vision_config": vision_names(vision, hf_arch, 560)}
        super().__init__(config, hf_arch, preprocessor)

    def out_tensors(self, name: str, ref) -> list[OutTensor]:
        if name == "v.patch_embd.weight":
            return conv3d_as_two_conv2d(self, name, ref)
        if ".attn_qkv." in name:
            return split_qkv(self, name, ref, int(name.split(".")[2]))
        return super().out_tensors(indexed_mm_name(self, name, mlp_index), ref)
