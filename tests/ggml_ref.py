"""ctypes access to ggml's own (reference) quantizers in the libggml-base that llama-cpp-python ships.

Tests and benchmarks compare slimedge against this. Usage::

    from tests.ggml_ref import ggml_quantize, ggml_dequantize
    q = ggml_quantize(x, "Q4_K")                 # float32[rows, n] -> uint8[rows, row_bytes]
    q = ggml_quantize(x, "Q4_K", imatrix=imx)    # importance weights float32[n]
    y = ggml_dequantize(q, "Q4_K", n)            # -> float32[rows, n]

``ggml_quantize`` calls ``ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix)``; ``ggml_dequantize``
calls the type's ``ggml_get_type_traits(type)->to_float``. The library is located next to the installed
``llama_cpp`` package (``site-packages/llama_cpp/lib``) without importing it; ``SLIMEDGE_GGML_BASE`` may
point at another ``libggml-base.so``.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


class _TypeTraits(ctypes.Structure):  # struct ggml_type_traits (ggml.h)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def library_path() -> Path:
    env = os.environ.get("SLIMEDGE_GGML_BASE")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36)")
    for loc in spec.submodule_search_locations:
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            p = Path(loc) / "lib" / name
            if p.exists():
                return p
    raise RuntimeError(f"libggml-base not found under {list(spec.submodule_search_locations)}/lib")


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library_path()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def _qtype(t) -> GGMLQuantizationType:
    if isinstance(t, str):
        return GGMLQuantizationType[t.upper()]
    return GGMLQuantizationType(int(t))


def row_bytes(qtype, n_per_row: int) -> int:
    bs, ts = GGML_QUANT_SIZES[_qtype(qtype)]
    return n_per_row // bs * ts


def ggml_quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml's quantization of ``x: float32[..., n_per_row]`` -> ``uint8[..., row_bytes]``."""
    t = _qtype(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    nrows = x.size // n
    rb = row_bytes(t, n)
    lib = _lib()
    assert lib.ggml_row_size(int(t), n) == rb, "gguf and ggml disagree on the row size"
    out = np.zeros(nrows * rb, dtype=np.uint8)
    imx = None
    if imatrix is not None:
        imx = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert imx.shape == (n,)
    written = lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, nrows, n,
                                      None if imx is None else imx.ctypes.data)
    assert written == out.size, (written, out.size)
    return out.reshape(*x.shape[:-1], rb)


def ggml_dequantize(q: np.ndarray, qtype, n_per_row: int) -> np.ndarray:
    """ggml's ``to_float`` of ``q: uint8[..., row_bytes]`` -> ``float32[..., n_per_row]``."""
    t = _qtype(qtype)
    q = np.ascontiguousarray(q, dtype=np.uint8)
    rb = row_bytes(t, n_per_row)
    nrows = q.size // rb
    traits = _lib().ggml_get_type_traits(int(t)).contents
    if not traits.to_float:
        raise RuntimeError(f"ggml has no to_float for {t.name}")
    out = np.empty(nrows * n_per_row, dtype=np.float32)
    _TO_FLOAT(traits.to_float)(q.ctypes.data, out.ctypes.data, nrows * n_per_row)
    return out.reshape(*q.shape[:-1], n_per_row)
