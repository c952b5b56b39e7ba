"""Mistral (``MistralForCausalLM``) → GGUF architecture ``llama``: same tensors and q/k permutation.

llama.cpp runs Mistral 7B as ``llama``; its sliding window is not used by llama.cpp's llama graph.
"""

from __future__ import annotations

from .llama import Llama


class Mistral(Llama):
    hf_names = ("MistralForCausalLM",)
