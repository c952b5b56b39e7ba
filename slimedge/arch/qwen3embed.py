"""Qwen3-Embedding (``Qwen3Model``: the decoder without its LM head) → GGUF architecture ``qwen3`` with pooling.

The same layers as Qwen3 (``qwen3.py``), saved without the ``model.`` prefix and without ``lm_head``; the
GGUF has no ``output.weight`` (llama.cpp's qwen3 reuses ``token_embd`` where it would need one). Attention
stays causal (llama.cpp's default), and the sentence vector is the last token's state:
``1_Pooling/config.json``'s ``pooling_mode_lasttoken`` becomes ``qwen3.pooling_type`` = LAST (3), as
llama.cpp's converter writes it; the Normalize module is noted (see ``_embedding.py``). Qwen3-Embedding's
tokenizer appends ``<|endoftext|>`` (its post-processor), which ``tokenizer.ggml.add_eos_token`` carries,
so the last token llama.cpp pools is the one sentence-transformers pools.
"""

from __future__ import annotations

from ._embedding import embedding_metadata, read_pipeline
from .qwen3 import Qwen3


class _Prefixed:
    """A bare ``Qwen3Model``'s tensors under the ``model.`` names the Qwen3 table uses."""

    def __init__(self, source):
        self.model_dir = source.model_dir
        self.tensors = {(n if n.startswith(("model.", "lm_head.")) else "model." + n): r
                        for n, r in source.tensors.items()}


class Qwen3Embedding(Qwen3):
    hf_names = ("Qwen3Model",)

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.hp.tied = True  # no LM head: llama.cpp duplicates token_embd where it needs an output matrix
        self.pipe = None

    def tensors(self, source):
        self.pipe = read_pipeline(source.model_dir)
        return super().tensors(_Prefixed(source))

    def metadata(self):
        pipe = self.pipe if self.pipe is not None else read_pipeline(None)
        return super().metadata() + embedding_metadata(self.arch, pipe, causal=None)
