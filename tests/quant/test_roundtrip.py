"""Round-trip error of every format on llama.cpp's own test signal, within test-quantize-fns.cpp's limits.

llama.cpp's tests/test-quantize-fns.cpp quantizes ``0.1 + 2*cosf(i + offset)`` (4096 values) and requires
``sqrt(sum((x - y)^2)) / n`` below 0.002 (0.0075 for Q2_K, 0.0040 for Q3_K). The same limits hold here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gguf import GGMLQuantizationType as T

from slimedge.quant import REGISTRY, dequantize_rows, quantize_rows
from slimedge.quant.types import FLOAT_TYPES

MAX_TOTAL_ERROR = {"Q2_K": 0.0075, "Q3_K": 0.0040}  # MAX_QUANTIZATION_TOTAL_ERROR_2BITS / _3BITS
# ..._BINARY (Q1_0) and ..._TERNARY (TQ1_0, TQ2_0, Q2_0)
MAX_TOTAL_ERROR.update({"Q1_0": 0.025, "TQ1_0": 0.01, "TQ2_0": 0.01, "Q2_0": 0.01})
MAX_TOTAL_ERROR.update({"IQ2_S": 0.0075, "IQ3_S": 0.0040, "IQ3_XXS": 0.0050})  # _2BITS, _3BITS, _3BITS_XXS
MAX_TOTAL_ERROR["NVFP4"] = 0.0030                   # MAX_QUANTIZATION_TOTAL_ERROR_FP4
DEFAULT_MAX_ERROR = 0.002                          # MAX_QUANTIZATION_TOTAL_ERROR
# every registered quantized format llama.cpp's test covers: it skips the types without a plain quantizer
# (no from_float in ggml-cpu: IQ2_XXS, IQ2_XS, IQ1_S need an imatrix, IQ1_M too); tests/quant/test_iquants.py
# bounds those with an imatrix
FORMATS = [t.name for t in REGISTRY if t not in FLOAT_TYPES and t not in (T.IQ2_XXS, T.IQ2_XS, T.IQ1_S, T.IQ1_M)]


def llama_test_signal(n: int = 4096, offset: float = 0.0, amplitude: float = 2.0) -> np.ndarray:
    """``dst[i] = 0.1 + amplitude*cosf(i + offset)`` as in test-quantize-fns.cpp's generate_data."""
    i = np.arange(n, dtype=np.float32)
    c = np.cos(i + np.float32(offset), dtype=np.float32)
    return (0.1 + amplitude * c.astype(np.float64)).astype(np.float32)


def array_rmse(a: np.ndarray, b: np.ndarray) -> float:
    """test-quantize-fns.cpp's array_rmse: sqrt of the double sum of squares, divided by n."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return math.sqrt(float(np.dot(d, d))) / a.size


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_total_quantization_error_within_llama_limits(qtype, offset):
    x = llama_test_signal(offset=offset)
    y = dequantize_rows(quantize_rows(x[None, :], qtype), qtype, x.size)[0]
    err = array_rmse(x, y)
    assert err < MAX_TOTAL_ERROR.get(qtype, DEFAULT_MAX_ERROR), f"{qtype}: {err}"


def test_error_shrinks_with_bits():
    """On Gaussian weights the RMS error orders as the bits per weight do."""
    x = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    order = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
    errs = [float(np.sqrt(np.mean((dequantize_rows(quantize_rows(x, q), q, 1024) - x) ** 2))) for q in order]
    assert all(a > b for a, b in zip(errs, errs[1:])), dict(zip(order, errs))
    assert errs[-1] < 0.01 and errs[0] < 0.6, dict(zip(order, errs))
