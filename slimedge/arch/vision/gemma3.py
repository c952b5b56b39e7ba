"""Gemma 3's vision projector (``Gemma3ForConditionalGeneration``) -> mmproj, llama.cpp projector ``gemma3``.

The tower is SigLIP (``_vit.siglip_rows``, post-LayerNorm included; the unused attention-pooling ``head`` of a
``vision_use_head`` config is dropped). The projector: the patch grid is average-pooled by
``clip.vision.projector.scale_factor`` per side (libmtmd defaults to 4, Gemma 3's 64x64 -> 16x16; written only
when it differs, as llama.cpp's converter does: (image_size / patch_size) / sqrt(image_seq_length)), then
``mm_soft_emb_norm`` (an RMSNorm HF applies as ``1 + w``: stored +1 here) and ``mm_input_projection_weight``
(a bare [vision, text] parameter; llama.cpp transposes it at run time, so it is stored as is). Types as the
converter forces them: the input projection is always F16 (llama.cpp issue 13025), the SigLIP embeddings F32.
"""

from __future__ import annotations

import numpy as np
from gguf import MODEL_TENSOR as T

from ._vit import siglip_aliases, siglip_rows
from .base import BOOL, CV, KV, U32, Q, Projector

_VIT = "vision_tower.vision_model."


class Gemma3Projector(Projector):
    hf_names = ("Gemma3ForConditionalGeneration",)
    projector_type = "gemma3"
    TENSORS = [("multi_modal_projector.mm_input_projection_weight", T.V_MM_INP_PROJ, True),
               ("multi_modal_projector.mm_soft_emb_norm", T.V_MM_SOFT_EMB_NORM, True)] + siglip_rows(_VIT)
    ALIASES = (siglip_aliases("model.vision_tower.vision_model.", "vision_tower.vision_model.",
                              "model.vision_tower.", "vision_tower.", canonical=_VIT)
               + [("model.multi_modal_projector.", "multi_modal_projector."),
                  ("multi_modal_projector.", "multi_modal_projector.")])

    def family_metadata(self) -> list[KV]:
        kv = [KV(CV.USE_GELU, True, BOOL)]
        n_per_side = int(int(self.preprocessor.get("image_seq_length", 256)) ** 0.5)
        scale = (int(self.vparam("image_size")) // int(self.vparam("patch_size"))) // n_per_side
        if scale > 0 and scale != 4:  # libmtmd's default otherwise
            kv.append(KV(CV.Projector.SCALE_FACTOR, scale, U32))
        return kv

    def force_type(self, hf_name: str, gguf_name: str):
        if "input_projection" in hf_name:
            return Q.F16
        if ".embeddings." in hf_name:
            return Q.F32
        return None

    def ignored(self, canonical_name: str) -> bool:
        return canonical_name.startswith(_VIT + "head.")

    def transform(self, gguf_name: str, x: np.ndarray) -> np.ndarray:
        if gguf_name == "mm.soft_emb_norm.weight":
            return x + np.float32(1.0)
        return x

