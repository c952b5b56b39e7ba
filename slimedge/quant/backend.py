"""Backend switch: C kernels (``slimedge._kernels``) when built, NumPy reference otherwise.

``SLIMEDGE_PUREPYTHON=1`` forces NumPy. :func:`backend_name` tells which one is active.
(Placeholder until the C kernels land: NumPy only.)
"""

from __future__ import annotations

import numpy as np

from .formats import dequantize_rows, quantize_rows


def backend_name() -> str:
    return "numpy"


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None, threads: int | None = None,
             what: str = "tensor") -> np.ndarray:
    return quantize_rows(x, qtype, imatrix, what=what)


def dequantize(q: np.ndarray, qtype, n_per_row: int | None = None, threads: int | None = None) -> np.ndarray:
    return dequantize_rows(q, qtype, n_per_row)
