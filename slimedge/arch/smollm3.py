"""SmolLM3 (``SmolLM3ForCausalLM``: SmolLM3-3B) → GGUF architecture ``smollm3``.

A Llama layout (same tensor names, same q/k row permutation: llama.cpp ropes smollm3 in the
"normal" layout) whose every fourth layer skips rope ("NoPE" layers). llama.cpp stores no per-layer
metadata for that: its smollm3 graph fixes the pattern at layer ``il`` with ``(il + 1) % 4 == 0``.
config.json states it as ``no_rope_layers`` (1 = rope, 0 = no rope, one per layer) or derives it
from ``no_rope_layer_interval``; a pattern llama.cpp cannot run is refused instead of converted
into a model that computes something else.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import SlimedgeError
from .llama import Llama

LLAMA_CPP_NO_ROPE_STEP = 4  # llama.cpp's hparams.n_no_rope_layer_step for smollm3 (fixed in its loader)


def rope_layers(config: dict, n_layer: int) -> list[int]:
    """Per layer: 1 if it applies rope, 0 if not (config's ``no_rope_layers`` or the interval rule)."""
    flags = config.get("no_rope_layers")
    if flags is None:
        step = int(config.get("no_rope_layer_interval") or LLAMA_CPP_NO_ROPE_STEP)
        return [int((i + 1) % step != 0) for i in range(n_layer)]
    return [int(bool(f)) for f in flags]


class SmolLM3(Llama):
    hf_names = ("SmolLM3ForCausalLM",)
    gguf_arch = MODEL_ARCH.SMOLLM3

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        n = self.hp.n_layer
        got = rope_layers(config, n)
        want = [int((i + 1) % LLAMA_CPP_NO_ROPE_STEP != 0) for i in range(n)]
        if got != want:
            raise SlimedgeError(f"config.json: {hf_arch} no_rope_layers {got} is not llama.cpp's fixed pattern "
                                f"{want} (no rope on every {LLAMA_CPP_NO_ROPE_STEP}th layer); llama.cpp cannot "
                                f"run this model")
        if config.get("use_sliding_window") and config.get("sliding_window"):
            raise SlimedgeError(f"config.json: {hf_arch} with use_sliding_window=true is not supported "
                                f"(llama.cpp's smollm3 attends to the whole context); set it to false")
