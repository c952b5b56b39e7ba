"""The language model of Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) and Qwen2-VL
(``Qwen2VLForConditionalGeneration``) → GGUF architecture ``qwen2vl``.

Qwen2's tensors (q/k/v biases, neox rope: no q/k permutation) under llama.cpp's ``qwen2vl`` architecture,
whose rope is multi-section (M-RoPE): each head's rotary pairs are split into time/height/width sections
(``rope_parameters.mrope_section``, written padded to four as ``rope.dimension_sections``); an image's tokens
get 2-D positions from libmtmd, text tokens the same position in every section (plain rope).

Checkpoint layouts: the Hub's (``model.layers.*``, ``visual.*``) and transformers 5's wrapper names
(``model.language_model.*``, ``model.visual.*``, :func:`text_view`). The vision tower (``visual.*``) is not
part of this file: :mod:`slimedge.arch.vision.qwen25vl` / ``qwen2vl`` write it as the mmproj beside it.
"""

from __future__ import annotations

import logging

from gguf import MODEL_ARCH, GGUFValueType, Keys

from ..errors import SlimedgeError
from .base import KV
from .qwen2 import Qwen2
from .qwen3 import refuse_sliding_window

log = logging.getLogger(__name__)

VISION_PREFIXES = ("visual.", "model.visual.")
_TEXT_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                  ("language_model.lm_head.", "lm_head."))


class _TextView:
    def __init__(self, model_dir, tensors: dict):
        self.model_dir, self.tensors = model_dir, tensors


def text_view(source):
    """``source`` seen through its language model: wrapper prefixes dropped, the vision tower left out (the
    mmproj converts it)."""
    tensors, vision = {}, 0
    for name, ref in source.tensors.items():
        if name.startswith(VISION_PREFIXES):
            vision += 1
            continue
        for old, new in _TEXT_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        tensors[name] = ref
    log.debug("%s: %d vision tensors left to the mmproj", source.model_dir, vision)
    return _TextView(source.model_dir, tensors)


def mrope_sections(arch) -> list[KV]:
    """``rope.dimension_sections``: the config's ``mrope_section`` padded to four (llama.cpp reads four);
    refused in one line when absent or when it does not cover the rotary half of a head."""
    sections = arch.hp.rope.get("mrope_section")
    if not isinstance(sections, list) or not 1 <= len(sections) <= 4 or not all(isinstance(s, int) for s in sections):
        raise SlimedgeError(f"config.json: {arch.hf_arch} needs rope_parameters.mrope_section (a list of up to 4 "
                            f"section sizes), found {sections!r}; fix config.json")
    if sum(sections) != arch.hp.head_dim // 2:
        raise SlimedgeError(f"config.json: {arch.hf_arch} mrope_section {sections} sums to {sum(sections)}, not "
                            f"head_dim / 2 = {arch.hp.head_dim // 2}; fix rope_parameters.mrope_section")
    return [KV(arch.key(Keys.Rope.DIMENSION_SECTIONS), list(sections) + [0] * (4 - len(sections)),
               GGUFValueType.ARRAY, GGUFValueType.INT32)]


class Qwen25VLText(Qwen2):
    hf_names = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
    gguf_arch = MODEL_ARCH.QWEN2VL

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        refuse_sliding_window(config, hf_arch)
        if str(self.hp.rope.get("rope_type", "")).lower() == "mrope":  # older configs' name for the sections
            self.hp.rope = {**self.hp.rope, "rope_type": "default"}

    def metadata(self) -> list[KV]:
        return super().metadata() + mrope_sections(self)

    def tensors(self, source):
        return super().tensors(text_view(source))
