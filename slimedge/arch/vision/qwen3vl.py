"""Qwen3-VL's vision tower (``Qwen3VLForConditionalGeneration`` and the MoE ``Qwen3VLMoeForConditionalGeneration``)
-> mmproj, llama.cpp projector ``qwen3vl_merger``.

The tower (``model.visual.*`` as transformers 5 saves it; ``visual.*`` too): a conv3d patch embedding with a
bias, a learned position embedding (``pos_embed``: a ``√n × √n`` grid, bilinearly resized to the image's patch
grid by both runtimes), blocks of LayerNorm → attention (one fused ``qkv``, kept fused: libmtmd splits it) with
2-D rope → LayerNorm → GELU(tanh) MLP (``linear_fc1``/``linear_fc2``), and the merger: LayerNorm, 2×2 patches
concatenated, MLP with GELU. DeepStack: after each block of ``deepstack_visual_indexes`` a merger of its own
(LayerNorm over the 2×2-concatenated features, MLP) gives extra features that the language model adds to its
first layers' hidden states; libmtmd returns them concatenated after the main ones, so an image token's embedding
is ``text hidden × (1 + number of deepstack layers)`` wide (the text GGUF's ``n_deepstack_layers``).

As llama.cpp's converter writes it (``conversion/qwen3vl.py``): the conv3d kernel split into two conv2d kernels
(``v.patch_embd.weight`` and ``.weight.1``, see :mod:`.qwen25vl`), ``merger.linear_fc1``/``fc2`` → ``mm.0``/
``mm.2``, deepstack merger ``i`` → ``v.deepstack.<block index>.{norm,fc1,fc2}``, ``clip.use_gelu``,
``clip.vision.spatial_merge_size``, ``clip.vision.is_deepstack_layers`` (one flag per block), ``image_size`` =
√(num_position_embeddings) × patch_size when the config has none. The vision LayerNorm eps is transformers'
fixed 1e-6 (llama.cpp's converter copies the text model's ``rms_norm_eps``, 1e-6 in the released models).
"""

from __future__ import annotations

from gguf import MODEL_TENSOR as T

from ...errors import SlimedgeError
from ..base import OutTensor
from .base import ARR, BOOL, CV, KV, U32, Projector
from .qwen25vl import (
    QWEN_VL_ALIASES,
    conv3d_as_two_conv2d,
    indexed_mm_name,
    vision_names,
)

V = "visual."
B = V + "blocks.{bid}."
DS = V + "deepstack_merger_list."


def _fc_index(hf: str) -> int:
    """``visual.merger.linear_fc1``/``fc2`` -> 0 / 2 (the mm indices libmtmd reads, as Qwen2-VL's merger)."""
    fc = hf.split(".merger.linear_fc", 1)[1].split(".", 1)[0]
    if fc not in ("1", "2"):
        raise SlimedgeError(f"{hf}: unexpected merger layer (Qwen3-VL's merger has linear_fc1 and linear_fc2)")
    return 0 if fc == "1" else 2


QWEN3VL_TENSORS = [
    (V + "patch_embed.proj", T.V_ENC_EMBD_PATCH, True),
    (V + "pos_embed", T.V_ENC_EMBD_POS, True),
    (B + "norm1", T.V_ENC_INPUT_NORM, True),
    (B + "attn.qkv", T.V_ENC_ATTN_QKV, True),
    (B + "attn.proj", T.V_ENC_ATTN_O, True),
    (B + "norm2", T.V_ENC_POST_ATTN_NORM, True),
    (B + "mlp.linear_fc1", T.V_ENC_FFN_UP, True),
    (B + "mlp.linear_fc2", T.V_ENC_FFN_DOWN, True),
    (V + "merger.norm", T.V_POST_NORM, True),
    (V + "merger.linear_fc1", T.V_MMPROJ, True),  # mm.0 (indexed_mm_name)
    (V + "merger.linear_fc2", T.V_MMPROJ, True),  # mm.2
]


class Qwen3VLProjector(Projector):
    hf_names = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")  # the same tower
    projector_type = "qwen3vl_merger"
    TENSORS = QWEN3VL_TENSORS
    ALIASES = QWEN_VL_ALIASES

    def __init__(self, config: dict, hf_arch: str, preprocessor: dict | None = None):
        vision = config.get("vision_config")
        if isinstance(vision, dict):
            n_pos, patch = vision.get("num_position_embeddings"), vision.get("patch_size")
            side = round(float(n_pos) ** 0.5) if n_pos else 0
            if n_pos and side * side != int(n_pos):
                raise SlimedgeError(f"config.json: {hf_arch} vision_config.num_position_embeddings {n_pos} is not "
                                    f"a square grid; fix config.json")
            size = side * int(patch) if side and patch else None
            config = {**config, "vision_config": vision_names(vision, hf_arch, size)}
        super().__init__(config, hf_arch, preprocessor)
        self.deepstack = [int(i) for i in self.vision.get("deepstack_visual_indexes") or []]
        bad = [i for i in self.deepstack if not 0 <= i < self.n_layer]
        if bad or len(set(self.deepstack)) != len(self.deepstack):
            raise SlimedgeError(f"config.json: {hf_arch} deepstack_visual_indexes {self.deepstack} must be distinct "
                                f"blocks of the {self.n_layer}; fix config.json")

    def family_metadata(self) -> list[KV]:
        kv = [KV(CV.USE_GELU, True, BOOL)]
        if self.vision.get("spatial_merge_size") is not None:
            kv.append(KV(CV.SPATIAL_MERGE_SIZE, int(self.vision["spatial_merge_size"]), U32))
        if self.n_layer:
            kv.append(KV(CV.IS_DEEPSTACK_LAYERS, [i in self.deepstack for i in range(self.n_layer)], ARR, BOOL))
        return kv

    def _rows(self):
        yield from super()._rows()
        for i, block in enumerate(self.deepstack):  # merger i follows block deepstack_visual_indexes[i]
            for part, mt in (("norm", T.V_DS_NORM), ("linear_fc1", T.V_DS_FC1), ("linear_fc2", T.V_DS_FC2)):
                yield f"{DS}{i}.{part}", mt, block, True

    def out_tensors(self, name: str, ref) -> list[OutTensor]:
        if name == "v.patch_embd.weight":
            return conv3d_as_two_conv2d(self, name, ref)
        return super().out_tensors(indexed_mm_name(self, name, _fc_index), ref)
