"""The grid i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) on both backends against ggml.

* bytes: quantize == ggml_quantize_chunk on the hard cases (Gaussian, heavy-tailed, zero and constant
  blocks, one huge outlier, tiny and subnormal values, mixed scales), several row lengths, with importance
  weights (also with zeros) and without where ggml allows it; the share of identical blocks is reported;
* the types ggml only quantizes with an imatrix are refused without one (one-line SlimedgeError);
* dequantize == ggml's to_float bit for bit, on quantized and on random block bytes;
* round-trip error on llama.cpp's test signal (with an imatrix where one is needed) within
  test-quantize-fns.cpp's limits; the search tables and kernels/iq_grids.h come from gguf's grids.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from tests.ggml_ref import ggml_dequantize, ggml_quantize
from slimedge.errors import SlimedgeError
from slimedge.quant import dequantize, quantize
from slimedge.quant import iq_grids
from slimedge.quant.types import REQUIRES_IMATRIX

TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
# test-quantize-fns.cpp's limits (IQ2_S: _2BITS, IQ3_S: _3BITS, IQ3_XXS: _3BITS_XXS); it does not test the
# others (no plain quantizer): with an imatrix of ones, 1.2-1.6x the error of the bytes ggml itself writes
# (measured 0.0074, 0.0065, 0.0098, 0.0094 for IQ2_XXS, IQ2_XS, IQ1_S, IQ1_M)
MAX_ERROR = {"IQ2_S": 0.0075, "IQ3_S": 0.0040, "IQ3_XXS": 0.0050,
             "IQ2_XXS": 0.0090, "IQ2_XS": 0.0080, "IQ1_S": 0.016, "IQ1_M": 0.014}


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = 2
    g = rng.standard_normal((r, n))
    zero = g.copy()
    zero[:, : n // 2] = 0.0
    const = np.repeat(rng.standard_normal((r, n // 32)), 32, axis=1)
    outlier = rng.standard_normal((r, n))
    outlier[:, rng.integers(0, n)] = 1e4
    mixed = rng.standard_normal((r, n)) * (10.0 ** rng.integers(-12, 4, (r, n // 16))).repeat(16, axis=1)
    cases = {"gauss": g, "t3": rng.standard_t(3, (r, n)), "cauchy": rng.standard_t(1, (r, n)), "zero": zero,
             "all_zero": np.zeros((r, n)), "const": const, "outlier": outlier,
             "tiny": rng.standard_normal((r, n)) * 1e-7, "subnormal": rng.standard_normal((r, n)) * 1e-39,
             "mixed": mixed, "ints": rng.integers(-4, 4, (r, n)).astype(np.float64), "positive": np.abs(g) + 0.5}
    return {k: v.astype(np.float32) for k, v in cases.items()}


def _imatrices(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"exponential": rng.exponential(1.0, n), "heavy": rng.exponential(1.0, n) ** 3,
            "some_zero": np.where(rng.random(n) < 0.3, 0.0, rng.random(n)), "ones": np.ones(n)}


def _share(ours: np.ndarray, ref: np.ndarray, qtype: str) -> float:
    ts = GGML_QUANT_SIZES[T[qtype]][1]
    return float((ours.reshape(-1, ts) == ref.reshape(-1, ts)).all(axis=1).mean())


def _check(qtype: str, n: int, with_imatrix: bool) -> None:
    shares, failures = [], []
    ims = list(_imatrices(n, n).items())
    with np.errstate(all="ignore"):
        for i, (name, x) in enumerate(_rows(n, n + 1).items()):
            iname, imx = ims[i % len(ims)] if with_imatrix else ("none", None)
            imx = None if imx is None else imx.astype(np.float32)
            ours = quantize(x, qtype, imatrix=imx, threads=2)
            ref = ggml_quantize(x, qtype, imatrix=imx)
            share = _share(ours, ref, qtype)
            shares.append(share)
            if share < 1.0:
                failures.append(f"{name}/{iname}: {share:.2%} of blocks identical")
    assert not failures, f"{qtype} n={n}: " + "; ".join(failures)
    assert min(shares) == 1.0


@pytest.mark.parametrize("n", [256, 768])
@pytest.mark.parametrize("qtype", TYPES)
def test_bytes_identical_to_ggml_with_imatrix(backend, qtype, n):
    _check(qtype, n, with_imatrix=True)


@pytest.mark.parametrize("n", [256, 1024])
@pytest.mark.parametrize("qtype", [t for t in TYPES if T[t] not in REQUIRES_IMATRIX])
def test_bytes_identical_to_ggml_without_imatrix(backend, qtype, n):
    _check(qtype, n, with_imatrix=False)


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "IQ2_XS", "IQ1_S"])
def test_types_that_need_an_imatrix_are_refused_without(backend, qtype):
    assert T[qtype] in REQUIRES_IMATRIX
    x = np.ones((2, 256), np.float32)
    with pytest.raises(SlimedgeError, match=f"blk.0.ffn_down.weight: {qtype} needs an importance matrix"):
        quantize(x, qtype, what="blk.0.ffn_down.weight")


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_like_ggml(backend, qtype):
    """Quantized data and arbitrary block bytes (every bit pattern, inf/NaN scales) decode like ggml."""
    bs, ts = GGML_QUANT_SIZES[T[qtype]]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    q = ggml_quantize(x, qtype, imatrix=np.ones(512, np.float32))
    np.testing.assert_array_equal(dequantize(q, qtype, 512).view(np.uint32), ggml_dequantize(q, qtype, 512).view(np.uint32))
    raw = rng.integers(0, 256, (4, 8 * ts), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ours = dequantize(raw, qtype, 8 * bs)
    np.testing.assert_array_equal(ours, ggml_dequantize(raw, qtype, 8 * bs))


def llama_test_signal(n: int = 4096, offset: float = 0.0) -> np.ndarray:
    i = np.arange(n, dtype=np.float32)
    return (0.1 + 2.0 * np.cos(i + np.float32(offset), dtype=np.float32).astype(np.float64)).astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_round_trip_error_within_llama_limits(qtype, offset):
    x = llama_test_signal(offset=offset)[None, :]
    imx = None if T[qtype] not in REQUIRES_IMATRIX and qtype != "IQ1_M" else np.ones(x.shape[1], np.float32)
    y = dequantize(quantize(x, qtype, imatrix=imx), qtype, x.shape[1])
    d = (x - y).astype(np.float64).ravel()
    err = math.sqrt(float(d @ d)) / d.size
    assert err < MAX_ERROR[qtype], f"{qtype}: {err}"
    # and the same bytes as ggml on it
    assert _share(quantize(x, qtype, imatrix=imx), ggml_quantize(x, qtype, imatrix=imx), qtype) == 1.0


def test_threads_give_the_bytes_of_one_thread(monkeypatch):
    from slimedge import _kernels
    from slimedge.quant import backend as qb
    monkeypatch.setattr(qb, "_K", _kernels)
    monkeypatch.setattr(qb, "MIN_CHUNK_VALUES", 1024)  # several chunks on the thread pool
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    imx = rng.random(512).astype(np.float32)
    one = quantize(x, "IQ3_XXS", imatrix=imx, threads=1)
    assert np.array_equal(quantize(x, "IQ3_XXS", imatrix=imx, threads=4), one)
    assert np.array_equal(quantize(x, "IQ3_S", threads=4), quantize(x, "IQ3_S", threads=1))


def test_c_header_is_current_and_tables_match_gguf():
    header = Path(__file__).resolve().parents[2] / "kernels" / "iq_grids.h"
    assert header.read_text() == iq_grids.c_header(), "regenerate: python -m slimedge.quant.iq_grids > kernels/iq_grids.h"
    g = iq_grids.grid("iq3xxs")
    assert g.levels.shape == (256, 4) and (g.key_to_index >= 0).sum() == 256
    # a key off the grid lists its neighbours by (distance, index), nearest first
    off = int(np.flatnonzero(g.key_to_index < 0)[0])
    row = g.nb_index[g.nb_row[off], : g.nb_count[g.nb_row[off]]].astype(int)
    lv = (off >> (3 * np.arange(4))) & 7
    d2 = (((2 * g.levels[row].astype(int) + 1) - (2 * lv + 1)) ** 2).sum(axis=1)
    assert list(zip(d2, row)) == sorted(zip(d2, row)) and len(set(d2)) <= 2
