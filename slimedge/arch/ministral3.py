"""Ministral 3 (``Ministral3ForCausalLM``) and the text tower of ``Mistral3ForConditionalGeneration``
(Ministral 3 3B/8B/14B, Mistral Small 3.x) → GGUF architecture ``mistral3``.

A Llama layout (same tensor names, q/k rows permuted: llama.cpp ropes mistral3 in the "normal" layout)
with Ministral 3's long-context rope: YaRN (the common rope keys) whose attention factor comes from
``mscale``/``mscale_all_dim`` — written as ``rope.scaling.yarn_log_multiplier`` (llama.cpp assumes
``mscale`` = 1, so another value is refused) — and Llama 4's query temperature
``1 + beta * log(1 + floor(pos / original_max_position_embeddings))`` (``llama_4_scaling_beta`` →
``attention.temperature_scale``; llama.cpp takes the period from the YaRN original context).

Multimodal checkpoints: ``model.language_model.*`` / ``language_model.model.*`` become ``model.*``
(``language_model.lm_head`` → ``lm_head``); the Pixtral vision tower and projector are left out of the text
model (``slimedge.arch.vision.pixtral`` writes them as the mmproj).
"""

from __future__ import annotations

import logging

from gguf import MODEL_ARCH, Keys

from ..errors import SlimedgeError
from .base import F32, KV
from .llama import Llama

log = logging.getLogger(__name__)

VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
_TEXT_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                  ("language_model.lm_head.", "lm_head."), ("language_model.", ""))


class TextTower:
    """A source seen through its language model: multimodal wrappers' prefixes dropped, vision skipped."""

    def __init__(self, source, vision_prefixes: tuple[str, ...] = VISION_PREFIXES, hf_arch: str = ""):
        self.model_dir, self.tensors, vision = source.model_dir, {}, []
        for name, ref in source.tensors.items():
            if name.startswith(vision_prefixes):
                vision.append(name)
                continue
            for old, new in _TEXT_PREFIXES:
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            self.tensors[name] = ref
        if vision:
            from .vision import supported_projectors

            if hf_arch in supported_projectors():
                log.info("%s: the vision tower (%d tensors) is not in the text model; it goes to the mmproj "
                         "(slimedge.mmproj)", source.model_dir, len(vision))
            else:
                log.warning("%s: skipping the vision tower (%d tensors); slimedge converts the language model only",
                            source.model_dir, len(vision))


class Ministral3(Llama):
    hf_names = ("Ministral3ForCausalLM", "Mistral3ForConditionalGeneration")
    gguf_arch = MODEL_ARCH.MISTRAL3

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        rope = self.hp.rope
        if str(rope.get("rope_type", "")).lower() == "yarn" and rope.get("mscale_all_dim"):
            if float(rope.get("mscale") or 1.0) != 1.0:
                raise SlimedgeError(f"config.json: {hf_arch} rope mscale {rope['mscale']} is not supported "
                                    f"(llama.cpp assumes mscale 1 with mscale_all_dim); fix rope_parameters")
        if rope.get("llama_4_scaling_beta") and not rope.get("original_max_position_embeddings"):
            raise SlimedgeError(f"config.json: {hf_arch} rope llama_4_scaling_beta needs "
                                f"original_max_position_embeddings in rope_parameters; fix config.json")
        if config.get("sliding_window"):
            raise SlimedgeError(f"config.json: {hf_arch} with a sliding_window is not supported (llama.cpp's "
                                f"mistral3 attends to the whole context); remove sliding_window")

    def metadata(self) -> list[KV]:
        kv, rope, k = super().metadata(), self.hp.rope, self.key
        if str(rope.get("rope_type", "")).lower() == "yarn" and rope.get("mscale_all_dim"):
            kv.append(KV(k(Keys.Rope.SCALING_YARN_LOG_MUL), float(rope["mscale_all_dim"]), F32))
        if rope.get("llama_4_scaling_beta"):
            kv.append(KV(k(Keys.Attention.TEMPERATURE_SCALE), float(rope["llama_4_scaling_beta"]), F32))
        return kv

    def tensors(self, source):
        return super().tensors(TextTower(source, hf_arch=self.hf_arch))
