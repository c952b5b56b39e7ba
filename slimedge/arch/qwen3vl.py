"""The language model of Qwen3-VL (``Qwen3VLForConditionalGeneration``) → GGUF architecture ``qwen3vl``, and of
Qwen3-VL-MoE (``Qwen3VLMoeForConditionalGeneration``: Qwen3-VL-30B-A3B, 235B-A22B) → ``qwen3vlmoe``.

Qwen3's tensors (per-head q/k RMSNorm, no biases, neox-style rotation; the MoE variant Qwen3-MoE's router and
stacked experts, :mod:`slimedge.arch.qwen3moe`) under llama.cpp's ``qwen3vl``/``qwen3vlmoe`` architectures:
interleaved multi-section rope (``mrope_section`` → ``rope.dimension_sections``, see :mod:`slimedge.arch.qwen2vl`)
and DeepStack — the vision tower's features from ``deepstack_visual_indexes`` layers are added to the hidden
states of the first decoder layers at the image's positions. llama.cpp reads them as extra columns of the image
embeddings (``n_deepstack_layers`` → an input width of ``hidden × (1 + n)``); text tokens take zeros there, so
text runs as plain Qwen3. llama.cpp adds them after the last layer's output rows are pruned when every layer is
a DeepStack layer (an abort), so the text model must have more layers than DeepStack layers.

The MoE experts are fused (``mlp.experts.gate_up_proj``, gate rows first, and ``mlp.experts.down_proj``) in
one of two layouts: transformers 5's ``save_pretrained`` writes ``[n_expert, rows, cols]`` (llama.cpp's), the
Hub's checkpoints ``[n_expert, cols, rows]``. As transformers' loader does, the shape tells them apart (a
transposed tensor is read expert by expert through :class:`~slimedge.arch.moe.ExpertColumns`).

Names as in :mod:`slimedge.arch.qwen2vl` (transformers 5 saves ``model.language_model.*``/``model.visual.*``);
the vision tower goes to the mmproj (:mod:`slimedge.arch.vision.qwen3vl`).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, Keys

from ..errors import SlimedgeError
from .base import KV, U32
from .moe import ExpertColumns
from .qwen2vl import mrope_sections, text_view
from .qwen3 import Qwen3
from .qwen3moe import Qwen3Moe


def deepstack_layers(config: dict, n_layer: int, hf_arch: str) -> int:
    """How many DeepStack layers ``vision_config`` names; refused in one line unless fewer than ``n_layer``."""
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
    n = len(vision.get("deepstack_visual_indexes") or [])
    if n >= n_layer:
        raise SlimedgeError(f"config.json: {hf_arch} has {n} deepstack_visual_indexes for {n_layer} text layers; "
                            f"llama.cpp's graph needs more text layers than DeepStack layers")
    return n


class Qwen3VLText(Qwen3):
    hf_names = ("Qwen3VLForConditionalGeneration",)
    gguf_arch = MODEL_ARCH.QWEN3VL

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.n_deepstack = deepstack_layers(config, self.hp.n_layer, hf_arch)

    def metadata(self) -> list[KV]:
        return super().metadata() + mrope_sections(self) + [
            KV(self.key(Keys.LLM.NUM_DEEPSTACK_LAYERS), self.n_deepstack, U32)]

    def tensors(self, source):
        return super().tensors(text_view(source))


class Qwen3VLMoeText(Qwen3Moe):
    hf_names = ("Qwen3VLMoeForConditionalGeneration",)
    gguf_arch = MODEL_ARCH.QWEN3VLMOE

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.n_deepstack = deepstack_layers(config, self.hp.n_layer, hf_arch)

    def metadata(self) -> list[KV]:
        return super().metadata() + mrope_sections(self) + [
            KV(self.key(Keys.LLM.NUM_DEEPSTACK_LAYERS), self.n_deepstack, U32)]

    def tensors(self, source):
        view = text_view(source)
        e, ff, d = self.n_expert, self.n_ff_exp, self.hp.n_embd
        for bid in range(self.hp.n_layer):
            for part, rows, cols in (("gate_up_proj", 2 * ff, d), ("down_proj", d, ff)):  # llama.cpp's [e, rows, cols]
                name = f"model.layers.{bid}.mlp.experts.{part}"
                ref = view.tensors.get(name)
                if ref is not None and tuple(ref.shape) == (e, cols, rows) != (e, rows, cols):  # the Hub's layout
                    view.tensors[name] = ExpertColumns(name, ref, 0, 1)
        return super().tensors(view)
