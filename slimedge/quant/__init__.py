"""Quantization: the format registry, the backend switch, the llama.cpp mixes and the per-tensor plan.

Public entry points::

    from slimedge.quant import quantize, dequantize, get_format
    q = quantize(w, "Q4_K")            # float32[rows, cols] -> uint8[rows, row_bytes]
    w2 = dequantize(q, "Q4_K", cols)    # -> float32[rows, cols]

``quantize``/``dequantize`` use the active backend (C kernels when built, else NumPy);
``SLIMEDGE_PUREPYTHON=1`` forces NumPy.
"""

from __future__ import annotations

from . import formats as _formats
from .formats import REGISTRY, QuantFormat, dequantize_rows, get_format, qtype_of, quantize_rows

# importing the format modules registers them
from . import legacy as _legacy  # noqa: F401,E402
from . import kquants as _kquants  # noqa: F401,E402
from .backend import backend_name, dequantize, quantize  # noqa: E402

__all__ = ["REGISTRY", "QuantFormat", "get_format", "qtype_of", "quantize", "dequantize",
           "quantize_rows", "dequantize_rows", "backend_name"]
