"""SmolVLM / Idefics3's vision projector (``SmolVLMForConditionalGeneration``,
``Idefics3ForConditionalGeneration``) -> mmproj, llama.cpp projector ``idefics3``.

The tower is SigLIP under ``model.vision_model.`` (``_vit.siglip_rows``, post-LayerNorm included). The connector
is a pixel shuffle by ``scale_factor`` (top-level config key, 2 when absent: each scale x scale block of patches
is concatenated into one token of ``scale^2 * hidden``) followed by ``model.connector.modality_projection.proj``
(no bias) -> ``mm.model.fc``; libmtmd does the shuffle itself, so only the factor is written
(``clip.vision.projector.scale_factor``), with the preprocessor's ``size.longest_edge``
(``clip.vision.preproc_image_size``, the image_size when absent) for its tiling. Types as llama.cpp's
converter forces them: the SigLIP embeddings (patch and position) F32.
"""

from __future__ import annotations

from gguf import MODEL_TENSOR as T

from ._vit import siglip_aliases, siglip_rows
from .base import BOOL, CV, KV, U32, Q, Projector

_VIT = "model.vision_model."


class Idefics3Projector(Projector):
    hf_names = ("SmolVLMForConditionalGeneration", "Idefics3ForConditionalGeneration")
    projector_type = "idefics3"
    LAYER_NORM_EPS = 1e-5  # llama.cpp's converter's default for this family
    TENSORS = [("model.connector.modality_projection.proj", T.V_MMPROJ_FC, True)] + siglip_rows(_VIT)
    ALIASES = siglip_aliases("model.vision_model.", "vision_model.", canonical=_VIT) + [
        ("model.connector.", "model.connector."), ("connector.", "model.connector.")]

    def __init__(self, config: dict, hf_arch: str, preprocessor: dict | None = None):
        vision = config.get("vision_config")
        if isinstance(vision, dict) and vision.get("model_type") == "smolvlm_vision":
            # SmolVLM2's config.json leaves out keys at their transformers defaults (as llama.cpp fills them)
            vision = {"hidden_size": 1152, "num_attention_heads": 16, "intermediate_size": 3072, **vision}
            config = {**config, "vision_config": vision}
        super().__init__(config, hf_arch, preprocessor)

    def family_metadata(self) -> list[KV]:
        size = self.preprocessor.get("size")
        longest = size.get("longest_edge") if isinstance(size, dict) else None
        return [KV(CV.Projector.SCALE_FACTOR, int(self.config.get("scale_factor", 2)), U32),
                KV(CV.USE_GELU, True, BOOL),
                KV(CV.PREPROC_IMAGE_SIZE, int(longest or self.vparam("image_size")), U32)]

    def force_type(self, hf_name: str, gguf_name: str):
        return Q.F32 if ".embeddings." in hf_name else None
