"""The language model of Qwen3-VL (``Qwen3VLForConditionalGeneration``) → GGUF architecture ``qwen3vl``.

Qwen3's tensors (per-head q/k RMSNorm, no biases, neox-style rotation) under llama.cpp's ``qwen3vl``
architecture: interleaved multi-section rope (``mrope_section`` → ``rope.dimension_sections``, see
:mod:`slimedge.arch.qwen2vl`) and DeepStack — the vision tower's features from ``deepstack_visual_indexes``
layers are added to the hidden states of the first decoder layers at the image's positions. llama.cpp reads
them as extra columns of the image embeddings (``n_deepstack_layers`` → an input width of
``hidden × (1 + n)``); text tokens take zeros there, so text runs as plain Qwen3.

Names as in :mod:`slimedge.arch.qwen2vl` (transformers 5 saves ``model.language_model.*``/``model.visual.*``);
the vision tower goes to the mmproj (:mod:`slimedge.arch.vision.qwen3vl`).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, Keys

from ..errors import SlimedgeError
from .base import KV, U32
from .qwen2vl import mrope_sections, text_view
from .qwen3 import Qwen3


class Qwen3VLText(Qwen3):
    hf_names = ("Qwen3VLForConditionalGeneration",)
    gguf_arch = MODEL_ARCH.QWEN3VL

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
        self.n_deepstack = len(vision.get("deepstack_visual_indexes") or [])
        if self.n_deepstack >= self.hp.n_layer:  # llama.cpp's graph then adds them after the pruned last layer
            raise SlimedgeError(f"config.json: {hf_arch} has {self.n_deepstack} deepstack_visual_indexes for "
                                f"{self.hp.n_layer} text layers; llama.cpp's qwen3vl needs more text layers than "
                                f"DeepStack layers")

    def metadata(self) -> list[KV]:
        return super().metadata() + mrope_sections(self) + [
            KV(self.key(Keys.LLM.NUM_DEEPSTACK_LAYERS), self.n_deepstack, U32)]

    def tensors(self, source):
        return super().tensors(text_view(source))
