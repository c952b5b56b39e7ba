"""Tune a quantized GGUF against its teacher: learn the block scales, keep the codes, write the same file.

``slimedge tune`` and ``tune(TuneConfig(gguf=..., teacher=..., data=..., output=...))`` (:mod:`.api`) start from a
k-quant, legacy-quant or IQ4_NL/IQ4_XS GGUF of the teacher (or of a student distilled from it) and learn, by gradient descent in
torch, every quantized tensor's block parameters so that the quantized model's next-token distribution matches
the teacher's (forward KL, :func:`slimedge.distill.losses.divergence`, on calibration blocks cut by
:func:`slimedge.distill.tokens.prepare`). Integer codes do not change unless ``learn_codes`` (then each weight's
code is a float latent rounded to the type's range with a straight-through estimator, written back through
:func:`slimedge.quant.blockfields.pack`'s code bit map; 12 more bytes per weight while tuning). Tensor types,
block layout, metadata and file size stay exactly those of the input, so the result runs wherever it runs.

How:

* **Fields.** Each quantized tensor's blocks are read with :mod:`slimedge.quant.blockfields` (codes +
  ``d``/``dmin`` + integer sub-scales/mins; one formula for every supported type, equal bit for bit to
  ``slimedge.quant.dequantize``). In torch a :class:`~.modules.QuantWeight` holds the codes (int8) and learns
  ``log(d/d0)`` and ``log(dmin/dmin0)`` (fp32, rounded to fp16 in the forward pass with a straight-through
  estimator, so the forward weights are exactly what the file will hold) and continuous sub-scales/mins
  (rounded and clamped to their integer range, straight-through). Sub-scales get ``sub_lr``.
* **Model** (:mod:`.model`, :mod:`.modules`). The teacher's transformers architecture (``num_hidden_layers``
  from the GGUF's ``block_count``), built with empty weights, gets every weight from the GGUF: quantized matrices become
  :class:`QuantLinear` / :class:`QuantEmbedding` modules, everything else (norms, float tensors) is
  dequantized and frozen. GGUF names map to HF names through
  the converter's own table (:meth:`slimedge.arch.base.Arch.tensors`); the converter's layout transform
  (Llama's q/k rope row permutation) is probed on row indices and inverted — blocks run along rows, so rows
  move whole. An architecture whose transform is not a row permutation is refused.
* **Memory.** The file's codes live as int8 (1 byte per weight) plus a few fp32 numbers per block. When the
  model's float weights would take more than ``float_mb`` (256 MiB), each quantized linear layer keeps only
  its input for backward, which rebuilds the matrix from its fields (``LowMemoryLinear``; embeddings run under
  activation checkpointing), so a float matrix exists only while it multiplies: memory is then about the codes
  plus one matrix in float plus activations; smaller models keep their float weights for the step. For the KL
  steps the teacher (float, as transformers loads it) stays loaded; its log-probabilities on the calibration blocks are computed
  once and cached when they fit ``cache_mb`` (else it runs each step; :mod:`.teacher`).
* **Warm start** (:mod:`.warm`, optional, ``warm_steps``): each matrix alone first minimises its output error
  ``tr(E G E^T)`` against the teacher's weight, ``G`` its inputs' Gram matrix on calibration blocks.
* **Training** runs on distill's runtime and loop (:mod:`slimedge.distill.runtime`, :mod:`slimedge.distill.loop`):
  the same process group, device choice, teacher loading, calibration blocks, optimizer (Adam: AdamW without
  weight decay), cosine schedule, gradient sum across processes, NaN/Inf stop, progress and checkpoints (every
  ``checkpoint_every`` steps next to the output; ``resume`` continues bit for bit) as ``distill``.
* **Block-wise mode** (``mode="blockwise"``, :mod:`.blockwise`; the default ``"e2e"`` is the KL steps alone):
  first each decoder layer alone, as AutoRound does — the float teacher layer's output on its own cached inputs is
  the target, the quantized model's inputs to that layer the input; learned per layer: the block fields and a
  rounding offset in [-1/2, 1/2] per weight (codes ``round((w - offset) / scale + v)`` of the teacher's weights,
  straight-through; written back through the code bit map); a checkpoint file per layer. The teacher is read one
  decoder layer at a time from its safetensors (:mod:`.stream`; the same bytes as loaded whole), so this stage
  holds the codes plus one float layer; the ``steps`` KL steps after it load the whole teacher.
* **Output** (:func:`.model.write_tuned`). Every tensor is written in file order with
  :class:`slimedge.writer.GGUFStreamWriter` (atomic, :mod:`slimedge.publish`): tuned tensors as their original
  bytes with the new scale fields packed in (:func:`slimedge.quant.blockfields.pack`), all others and every metadata key copied unchanged.
"""

from .api import TuneConfig, TuneResult, tune

__all__ = ["TuneConfig", "TuneResult", "tune"]
