"""Value statistics of a GGUF's tensors: min, max, mean, standard deviation, RMS and the non-finite count.

``tensor_stats(path)`` dequantizes each tensor (:func:`slimedge.quant.dequantize`; integer tensors are
read as they are) in slabs of rows, so memory stays bounded whatever the tensor's size, and merges each
slab's moments into running ones (Chan et al.). A tensor without statistics (big-endian file, a type
slimedge cannot dequantize, no finite value) gets a string saying why. It lives above both the header
reader (:mod:`slimedge.gguf_info`) and the quantizers, where its callers (``slimedge inspect --stats``) meet.

Example::

    stats = tensor_stats("model-q4_k_m.gguf")
    stats["token_embd.weight"].std            # 0.0213...
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import SlimedgeError
from .gguf_info import GGUFInfo, GGUFTensorInfo, one_line, read_info
from .quant import dequantize


@dataclass
class TensorStats:
    """One tensor's value statistics over its finite values."""

    min: float
    max: float
    mean: float
    std: float
    rms: float
    n_nonfinite: int  # NaN and ±Inf values (left out of the other numbers)


_INT_TYPES = {"I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "F64": np.float64}


def _rows_as_float(raw: np.ndarray, t: GGUFTensorInfo) -> np.ndarray:
    """uint8[n_rows, row_bytes] -> float[n_rows, ne0] for one slab of a tensor."""
    if t.type in _INT_TYPES:
        return raw.view(_INT_TYPES[t.type]).astype(np.float64)
    return dequantize(raw, t.type, t.shape[-1])


def tensor_stats(path: str | os.PathLike, info: GGUFInfo | None = None, names: list[str] | None = None,
                 slab_elements: int = 1 << 22) -> dict[str, TensorStats | str]:
    """Value statistics per tensor (dequantized); a string says why a tensor has none."""
    info = info or read_info(path)
    chosen = [t for t in info.tensors if names is None or t.name in names]
    if info.byte_order != "<":
        return {t.name: "no statistics: big-endian file" for t in chosen}
    data = np.memmap(info.path, mode="r", dtype=np.uint8)
    out: dict[str, TensorStats | str] = {}
    for t in chosen:
        ne0 = t.shape[-1] if t.shape else 1
        n_rows = t.n_elements // ne0 if ne0 else 0
        if n_rows == 0 or t.n_bytes == 0:
            out[t.name] = "empty tensor"
            continue
        row_bytes = t.n_bytes // n_rows
        rows = data[t.offset:t.offset + t.n_bytes].reshape(n_rows, row_bytes)
        step = max(1, slab_elements // max(ne0, 1))
        n, mean, m2, sq = 0, 0.0, 0.0, 0.0  # count, running mean, sum of squared deviations, sum of squares
        lo, hi = np.inf, -np.inf
        bad = 0
        try:
            for r0 in range(0, n_rows, step):
                x = np.asarray(_rows_as_float(np.ascontiguousarray(rows[r0:r0 + step]), t), dtype=np.float64)
                fin = np.isfinite(x)
                bad += int(x.size - fin.sum())
                x = x[fin]
                if x.size:  # merge this slab's moments into the running ones (Chan et al.)
                    nb, mb = x.size, float(x.mean())
                    m2b = float(np.square(x - mb).sum())
                    delta, tot = mb - mean, n + nb
                    mean += delta * nb / tot
                    m2 += m2b + delta * delta * n * nb / tot
                    n = tot
                    sq += float(np.dot(x, x))
                    lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        except (NotImplementedError, SlimedgeError) as exc:
            out[t.name] = f"no statistics: {one_line(exc)}"
            continue
        if n == 0:
            out[t.name] = f"no finite values ({bad} NaN/Inf)"
            continue
        out[t.name] = TensorStats(lo, hi, mean, (m2 / n) ** 0.5, (sq / n) ** 0.5, bad)
    del data
    return out
