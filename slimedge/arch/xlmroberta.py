"""XLM-RoBERTa encoders (``XLMRobertaModel``: bge-m3, multilingual-e5, paraphrase-multilingual) → GGUF ``bert``.

BERT's layers (``bert.py``) with RoBERTa's positions: position ids start at ``pad_token_id + 1`` (fairseq),
so the first ``pad_token_id + 1`` rows of ``position_embeddings`` are never used; they are cut off and the
context shrinks by as many (514 → 512 for XLM-R), as llama.cpp's converter does, so llama.cpp's position 0
reads HF's row ``pad_token_id + 1``. ``roberta.``-prefixed checkpoints read the same. The tokenizer is a
SentencePiece unigram (``slimedge.vocab.unigram``: tokenizer model "t5").
"""

from __future__ import annotations

from gguf import MODEL_TENSOR

from .base import OutTensor
from .bert import Bert


class XLMRoberta(Bert):
    hf_names = ("XLMRobertaModel",)
    PREFIX = "roberta."

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        pad = config.get("pad_token_id")
        self.offset = int(pad) + 1 if pad is not None else 0
        self.hp.n_ctx -= self.offset

    def expected_shape(self, tensor, is_bias):
        if tensor == MODEL_TENSOR.POS_EMBD:
            return (self.hp.n_ctx + self.offset, self.hp.n_embd)
        return super().expected_shape(tensor, is_bias)

    def tensors(self, source):
        out = super().tensors(source)
        k = self.offset
        for i, t in enumerate(out):
            if t.name == "position_embd.weight" and k:
                out[i] = OutTensor(t.name, (t.shape[0] - k, t.shape[1]),
                                   lambda out=None, load=t.load: load()[k:].copy(), f"{t.origin} (rows {k}: on)")
        return out
