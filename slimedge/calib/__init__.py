"""Calibration: statistics of a model's activations on text, measured in torch (transformers).

* :mod:`.imatrix` — the importance matrix llama.cpp's ``llama-imatrix`` collects (per-column sums of
  squared inputs of every weight matrix): :func:`compute_imatrix`. Files: ``slimedge.quant.imatrix_file``.
* :mod:`.sensitivity` — per-tensor sensitivity to quantization, for the quality-driven auto mix.

Importing this package does not import torch; the functions do when called.
"""

from __future__ import annotations


def compute_imatrix(*args, **kwargs):
    """See :func:`slimedge.calib.imatrix.compute_imatrix`."""
    from .imatrix import compute_imatrix as run

    return run(*args, **kwargs)


__all__ = ["compute_imatrix"]
