"""LFM2-VL's vision projector (``Lfm2VlForConditionalGeneration``) -> mmproj, llama.cpp projector ``lfm2``.

The tower is SigLIP2 NaFlex (``_vit.siglip_rows``: the SigLIP rows, post-LayerNorm included): its patch
embedding is a ``Linear`` over a flattened ``p x p x 3`` patch (HF ``[hidden, p*p*3]``, pixels in row, column,
channel order), which llama.cpp runs as a conv2d kernel, so it is stored ``[hidden, 3, p, p]`` (the same
numbers, regrouped); the learned position embedding (a 16x16 grid for 256 patches) is resized by libmtmd to
the image's patch grid. The projector: pixel unshuffle by ``downsample_factor`` (libmtmd does it; written as
``clip.vision.projector.scale_factor``), an optional LayerNorm (``mm.input_norm``), then ``linear_1`` -> GELU ->
``linear_2`` (``mm.1``/``mm.2``).

As llama.cpp's converter writes it (``conversion/lfm2.py``): ``image_size`` 256 whatever the config says (the
NaFlex tower has none; libmtmd sizes images itself), ``clip.use_gelu``, and the block count reduced by the
layers ``vision_feature_layer`` drops (-1, the last layer, drops none; the tensors of every layer are still
written). Checkpoint layouts: ``model.vision_tower.vision_model.`` (the Hub's releases),
``model.vision_tower.`` (transformers 5's save) and the same without ``model.``.
"""

from __future__ import annotations

import numpy as np
from gguf import MODEL_TENSOR as T

from ...errors import SlimedgeError
from ..base import OutTensor
from ._vit import siglip_aliases, siglip_rows
from .base import BOOL, CV, KV, U32, Projector, tensor_name

_VIT = "vision_tower.vision_model."
_MM = "multi_modal_projector."
IMAGE_SIZE = 256  # what llama.cpp's converter writes for every LFM2-VL


def linear_mm_name(proj: Projector, name: str, marker: str = "linear_") -> str:
    """``mm.{bid}.*`` (a V_MMPROJ table row) -> ``mm.<i>.*`` for the HF layer ``...<marker><i>`` (LLaVA-style
    ``linear_1``/``linear_2`` -> ``mm.1``/``mm.2``, the names libmtmd reads); other names unchanged."""
    if not name.startswith("mm.{bid}."):
        return name
    hf = proj.hf_of.pop(name)
    new = tensor_name(T.V_MMPROJ, name.rsplit(".", 1)[-1], int(hf.rsplit(marker, 1)[1].split(".", 1)[0]))
    proj.hf_of[new] = hf
    return new


class Lfm2VlProjector(Projector):
    hf_names = ("Lfm2VlForConditionalGeneration",)
    projector_type = "lfm2"
    TENSORS = [
        (_MM + "layer_norm", T.V_MM_INP_NORM, False),  # projector_use_layernorm
        (_MM + "linear_1", T.V_MMPROJ, True),  # mm.1 and mm.2: linear_mm_name
        (_MM + "linear_2", T.V_MMPROJ, True),
    ] + siglip_rows(_VIT)
    ALIASES = (siglip_aliases("model.vision_tower.vision_model.", "vision_tower.vision_model.",
                              "model.vision_tower.", "vision_tower.", canonical=_VIT)
               + [("model." + _MM, _MM), (_MM, _MM)])

    def __init__(self, config: dict, hf_arch: str, preprocessor: dict | None = None):
        vision = config.get("vision_config")
        if isinstance(vision, dict):
            config = {**config, "vision_config": {**vision, "image_size": IMAGE_SIZE}}
        super().__init__(config, hf_arch, preprocessor)
        feature_layer = int(config.get("vision_feature_layer", -1))
        if not -self.n_layer <= feature_layer < 0:
            raise SlimedgeError(f"config.json: {hf_arch} vision_feature_layer {feature_layer} is not one of the "
                                f"{self.n_layer} vision layers counted from the end (-1 = the last); fix config.json")
        self.n_block = self.n_layer + feature_layer + 1

    def metadata(self) -> list[KV]:
        return [KV(CV.BLOCK_COUNT, self.n_block, U32) if e.key == CV.BLOCK_COUNT else e for e in super().metadata()]

    def family_metadata(self) -> list[KV]:
        return [KV(CV.Projector.SCALE_FACTOR, int(self.config.get("downsample_factor", 2)), U32),
                KV(CV.USE_GELU, True, BOOL)]

    def ignored(self, canonical_name: str) -> bool:
        return canonical_name.startswith(_VIT + "head.")  # a vision_use_head tower's pooling head

    def out_tensors(self, name: str, ref) -> list[OutTensor]:
        return super().out_tensors(linear_mm_name(self, name), ref)

    def out_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if name == "v.patch_embd.weight":
            p = int(self.vparam("patch_size"))
            if len(shape) != 2 or shape[1] != 3 * p * p:
                raise SlimedgeError(f"{self.hf_arch}: patch embedding of shape {list(shape)}; expected the "
                                    f"SigLIP2 Linear [hidden, 3 * {p} * {p}]")
            return (shape[0], 3, p, p)
        return shape

    def transform(self, gguf_name: str, x: np.ndarray) -> np.ndarray:
        if gguf_name == "v.patch_embd.weight" and x.ndim == 2:
            p = int(self.vparam("patch_size"))
            return x.reshape(x.shape[0], p, p, 3).transpose(0, 3, 1, 2)  # (row, col, channel) -> conv2d
        return x
