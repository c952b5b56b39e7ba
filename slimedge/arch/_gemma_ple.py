"""What Gemma 3n and Gemma 4 share (``gemma3n.py``, ``gemma4.py``): the per-layer-embedding (PLE) rows, the PLE
table padded to the vocabulary, zero stand-ins for weights llama.cpp loads but never reads, and the check that
a KV-sharing layout means the same in llama.cpp as in transformers."""

from __future__ import annotations

import numpy as np
from gguf import MODEL_TENSOR

from ..errors import SlimedgeError
from .moe import Part, StackedRef

T = MODEL_TENSOR
L = "model.layers.{bid}."

# per-layer tensors every Gemma-3n-style block has beyond Gemma 3's (PLE: also Gemma 4's)
PLE_LAYER = [(L + "per_layer_input_gate.weight", T.PER_LAYER_INP_GATE, True),
             (L + "per_layer_projection.weight", T.PER_LAYER_PROJ, True),
             (L + "post_per_layer_input_norm.weight", T.PER_LAYER_POST_NORM, True)]
PLE_GLOBAL = [("model.embed_tokens_per_layer.weight", T.PER_LAYER_TOKEN_EMBD, True),
              ("model.per_layer_model_projection.weight", T.PER_LAYER_MODEL_PROJ, True),
              ("model.per_layer_projection_norm.weight", T.PER_LAYER_PROJ_NORM, True)]


class Zeros:
    """Zero rows of a given length: a part of a :class:`StackedRef` (stand-in weights llama.cpp never reads)."""

    def __init__(self, like, cols: int):
        self.name, self.file, self.dtype = f"{like.name} (zeros)", like.file, "F32"
        self.cols = cols

    def load_rows(self, start: int, stop: int, out=None):
        buf = np.zeros((stop - start) * self.cols, np.float32) if out is None else out.reshape(-1)
        buf[...] = 0.0
        return buf.reshape(stop - start, self.cols)


def pad_rows(name: str, ref, rows: int) -> object:
    """``ref`` seen with copies of its row 0 appended up to ``rows`` (itself when it has that many already):
    transformers looks ids past ``vocab_size_per_layer_input`` up as id 0 (llama.cpp's converter pads zeros,
    which would differ for those ids)."""
    have = ref.shape[0]
    if have >= rows:
        return ref
    return StackedRef(name, (rows, ref.shape[-1]), [Part(ref, 0, have)] + [Part(ref, 0, 1)] * (rows - have))


def kv_sharing(hp, swa: tuple[bool, ...], n_shared: int, n_kv: int, what: str) -> None:
    """Refuse a KV-sharing layout that llama.cpp would map differently from transformers: llama.cpp gives
    layer il >= n_kv the cache of layer n_kv - 2 (sliding) or n_kv - 1 (full); transformers the last layer
    of the same kind before the first shared one."""
    if n_kv != hp.n_layer - n_shared:
        raise SlimedgeError(f"config.json: num_kv_shared_layers={n_shared} with {hp.n_layer} layers, but {what}; "
                            "this layout cannot be converted")
    if n_shared and (n_kv < 2 or not swa or swa[n_kv - 1] or not swa[n_kv - 2]):
        raise SlimedgeError(f"config.json: layer_types must make layer {n_kv - 2} sliding and layer {n_kv - 1} "
                            "full, the layers whose cache llama.cpp's shared-KV layers reuse; fix layer_types")
