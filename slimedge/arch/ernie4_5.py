"""ERNIE 4.5 dense (``Ernie4_5ForCausalLM``: ERNIE-4.5-0.3B) → GGUF architecture ``ernie4_5``.

Llama's tensor names, but no q/k permutation: transformers' ERNIE 4.5 already ropes interleaved pairs
(``x[..., 0::2]``/``x[..., 1::2]``), which is llama.cpp's "normal" layout for ernie4_5. ``head_dim`` is
stated (128 over hidden 1024 / 16 heads) and written as key/value length. llama.cpp loads no MLP or q/k/v
biases for ernie4_5, so ``use_bias`` checkpoints are refused; the Paddle-era names (``ernie.`` prefix) are
read as ``model.``.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import SlimedgeError
from .base import Arch
from .llama import LLAMA_TENSORS


class _ModelPrefix:
    """A source whose ``ernie.*`` names read as ``model.*``."""

    def __init__(self, source):
        self.model_dir = source.model_dir
        self.tensors = {("model." + n[6:] if n.startswith("ernie.") else n): r for n, r in source.tensors.items()}


class Ernie4_5(Arch):
    hf_names = ("Ernie4_5ForCausalLM", "Ernie4_5_ForCausalLM")
    gguf_arch = MODEL_ARCH.ERNIE4_5
    TENSORS = [row for row in LLAMA_TENSORS if not row[0].endswith("_proj.bias")]

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        if config.get("use_bias"):
            raise SlimedgeError(f"config.json: {hf_arch} with use_bias=true is not supported (llama.cpp's "
                                f"ernie4_5 has no projection biases); only bias-free checkpoints convert")

    def tensors(self, source):
        return super().tensors(_ModelPrefix(source))
