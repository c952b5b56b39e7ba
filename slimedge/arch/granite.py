"""Granite 3.x (``GraniteForCausalLM``: granite-3.0/3.1/3.2/3.3 2B and 8B) → GGUF architecture ``granite``.

A Llama layout (same names, same q/k permutation: llama.cpp ropes granite in the "normal" layout)
with four scalar multipliers that llama.cpp reads as keys: ``embedding_multiplier`` →
``embedding_scale`` (embeddings times it), ``residual_multiplier`` → ``residual_scale`` (each
sub-layer's output times it before the residual add), ``attention_multiplier`` → ``attention.scale``
(replaces 1/sqrt(head_dim)), ``logits_scaling`` → ``logit_scale`` (logits divided by it). All four are
written with transformers' defaults (1.0) when config.json omits them, because llama.cpp's defaults
differ (its attention scale would fall back to 1/sqrt(head_dim)). Like llama.cpp's converter, a
``head_dim`` in config.json is not used: llama.cpp's granite takes hidden/heads.
"""

from __future__ import annotations

import logging

from gguf import MODEL_ARCH, Keys

from .base import F32, KV
from .llama import Llama

log = logging.getLogger(__name__)

# config.json key -> GGUF key template
MULTIPLIERS = (("embedding_multiplier", Keys.LLM.EMBEDDING_SCALE), ("residual_multiplier", Keys.LLM.RESIDUAL_SCALE),
               ("attention_multiplier", Keys.Attention.SCALE), ("logits_scaling", Keys.LLM.LOGIT_SCALE))


class Granite(Llama):
    hf_names = ("GraniteForCausalLM",)
    gguf_arch = MODEL_ARCH.GRANITE

    def __init__(self, config: dict, hf_arch: str):
        head_dim = config.get("head_dim")
        if head_dim and head_dim * config.get("num_attention_heads", 0) != config.get("hidden_size"):
            log.warning("config.json: %s head_dim %s is ignored (llama.cpp's granite takes hidden_size / heads)",
                        hf_arch, head_dim)
        super().__init__({k: v for k, v in config.items() if k != "head_dim"}, hf_arch)  # so no key_length

    def metadata(self) -> list[KV]:
        return super().metadata() + [KV(self.key(key), float(self.config.get(src, 1.0)), F32)
                                     for src, key in MULTIPLIERS]
