"""The language model of SmolVLM / Idefics3 (``SmolVLMForConditionalGeneration``,
``Idefics3ForConditionalGeneration``) -> GGUF architecture ``llama``.

The text model is a Llama (``text_config``, which ``slimedge.source.hf`` merges into the config) stored under
``model.text_model.``; it converts exactly as ``llama.Llama`` once that prefix becomes ``model.`` (as llama.cpp's
converter strips ``text_model.``; SmolVLM2's missing ``num_attention_heads`` is Llama's default 32, as there). The
vision tower (``model.vision_model.``) and the pixel-shuffle connector
(``model.connector.``) are left out here: ``slimedge.arch.vision.idefics3`` writes them as the mmproj.
"""

from __future__ import annotations

import logging

from .llama import Llama

log = logging.getLogger(__name__)

_VISION = ("model.vision_model.", "model.connector.")


class _TextView:
    def __init__(self, source, tensors: dict):
        self.model_dir, self.tensors = source.model_dir, tensors


class SmolVLMText(Llama):
    hf_names = ("SmolVLMForConditionalGeneration", "Idefics3ForConditionalGeneration")

    def __init__(self, config: dict, hf_arch: str):
        # SmolVLM2's config.json leaves num_attention_heads at transformers' Llama default out (llama.cpp fills it)
        super().__init__({"num_attention_heads": 32, **config}, hf_arch)

    def tensors(self, source):
        refs, vision = {}, 0
        for name, ref in source.tensors.items():
            if name.startswith(_VISION):
                vision += 1
                continue
            refs["model." + name[len("model.text_model."):] if name.startswith("model.text_model.") else name] = ref
        if vision:
            log.info("%s: the vision tower and connector (%d tensors) are not in the text model; they go to the "
                     "mmproj (slimedge.mmproj)", source.model_dir, vision)
        return super().tensors(_TextView(source, refs))
