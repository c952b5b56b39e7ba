"""Bit-exactness of slimedge's NumPy formats against ggml's reference quantizers (ggml_quantize_chunk).

For every format and every kind of data (Gaussian, heavy-tailed, zero/constant blocks, outliers, tiny and
subnormal values, huge values) and several row lengths, slimedge's bytes must equal ggml's byte for byte, and
slimedge's dequantization must equal ggml's ``to_float`` bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from tests.ggml_ref import ggml_dequantize, ggml_quantize
from slimedge.quant import REGISTRY, dequantize_rows, get_format, quantize_rows
from slimedge.quant.kquant_search import seqsum
from slimedge.quant.types import FLOAT_TYPES, QK_K, REQUIRES_IMATRIX, block_size

# every registered format (a new one is checked here without editing this file), by family
LEGACY = [t.name for t in REGISTRY if t not in FLOAT_TYPES and block_size(t) != QK_K]  # 32-weight blocks
KQUANTS = [t.name for t in REGISTRY if t not in FLOAT_TYPES and block_size(t) == QK_K]
ALL = LEGACY + KQUANTS
# without importance weights: not the types ggml only quantizes with them (its quantizer asserts)
PLAIN = [q for q in ALL if GGMLQuantizationType[q] not in REQUIRES_IMATRIX]
FLOATS = [t.name for t in REGISTRY if t in FLOAT_TYPES and t != GGMLQuantizationType.F32]  # ggml: no F32 to_float


def _cases(n: int, seed: int) -> dict[str, np.ndarray]:
    """Rows of length n (a multiple of 256 for the k-quants, 32 for legacy formats)."""
    rng = np.random.default_rng(seed)
    r = 6
    gauss = rng.standard_normal((r, n))
    zero_blocks = gauss.copy()
    zero_blocks[:, : n // 2] = 0.0
    zero_blocks[0, :] = 0.0
    zero_blocks[1, ::2] = -0.0
    const = np.repeat(rng.standard_normal((r, max(1, n // 32))), 32, axis=1)[:, :n]
    const[0, :] = 0.75  # positive constant, whole row
    const[1, :] = -2.5  # negative constant
    outlier = rng.standard_normal((r, n))
    outlier[:, rng.integers(0, 32) :: 32] *= 1e4  # one huge value per 32-block (and per 16-sub-block pair)
    tiny = rng.standard_normal((r, n)) * 1e-7
    subnormal = rng.standard_normal((r, n)) * 1e-39
    mixed_scale = rng.standard_normal((r, n)) * 10.0 ** rng.integers(-30, 5, (r, n // 16)).repeat(16, axis=1)
    return {
        "gaussian": gauss,
        "student_t3": rng.standard_t(3, (r, n)),
        "cauchy": rng.standard_t(1, (r, n)),
        "zero_blocks": zero_blocks,
        "constant_blocks": const,
        "outlier": outlier,
        "tiny": tiny,
        "subnormal": subnormal,
        "mixed_scale": mixed_scale,
        "huge": rng.standard_normal((r, n)) * 1e6,  # fp16 scales overflow for the legacy formats
        "small_ints": rng.integers(-4, 4, (r, n)).astype(np.float64),
        "positive": np.abs(gauss) + 0.5,
        "fp16_values": rng.standard_normal((r, n)).astype(np.float16).astype(np.float64),
    }


def _lengths(qtype: str) -> list[int]:
    if qtype in FLOATS:
        return [32, 512]
    bs = block_size(qtype)
    return [bs, 2 * bs, 16 * bs] if qtype in KQUANTS else [bs, 3 * bs, 16 * bs, 128 * bs]  # 256.. / 32, 96, ..


def _report(ours: np.ndarray, ref: np.ndarray, type_size: int, x: np.ndarray, block_size: int) -> str:
    a, b = ours.reshape(-1, type_size), ref.reshape(-1, type_size)
    diff = (a != b).sum(axis=1)
    worst = int(np.argmax(diff))
    xb = x.reshape(-1, block_size)[worst]
    first = np.flatnonzero(a[worst] != b[worst])[:12]
    return (f"{(diff == 0).mean():.2%} of {len(diff)} blocks identical; worst block {worst} differs in "
            f"{diff[worst]} bytes at {first.tolist()}: ours {a[worst, first].tolist()} ggml "
            f"{b[worst, first].tolist()}; block amax {np.abs(xb).max():.3g}")


# the grid i-quants' NumPy search is slow (~0.05x ggml): their cases run in the full suite only (and
# tests/quant/test_iquants.py checks them on both backends in the quick loop at smaller sizes)
_GRID = ("IQ1_", "IQ2_", "IQ3_")


def _param(q: str, n: int):
    return pytest.param(q, n, id=f"{q}-{n}", marks=[pytest.mark.slow] if q.startswith(_GRID) else [])


def _params():
    for q in PLAIN + FLOATS:
        for n in _lengths(q):
            yield _param(q, n)


@pytest.mark.parametrize("qtype,n", list(_params()))
def test_bytes_identical_to_ggml(qtype, n):
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    failures = []
    with np.errstate(all="ignore"):
        for name, x in _cases(n, seed=n).items():
            x = x.astype(np.float32)
            ours = quantize_rows(x, qtype)
            ref = ggml_quantize(x, qtype)
            assert ours.shape == ref.shape and ours.dtype == np.uint8
            if not np.array_equal(ours, ref):
                failures.append(f"{name}: {_report(ours, ref, ts, x, bs)}")
                continue
            # dequantize: ours == ggml's to_float, bit for bit
            y_ours = dequantize_rows(ref, qtype, n)
            y_ref = ggml_dequantize(ref, qtype, n)
            if not np.array_equal(y_ours.view(np.uint32), y_ref.view(np.uint32)):
                bad = np.flatnonzero(y_ours.view(np.uint32) != y_ref.view(np.uint32))
                failures.append(f"{name}: dequantize differs at {bad.size} values, first {bad[:5].tolist()}")
    assert not failures, f"{qtype} n={n}:\n" + "\n".join(failures)


@pytest.mark.parametrize("qtype", ALL)
def test_dequantize_random_bytes_like_ggml(qtype):
    """Arbitrary block bytes (every bit pattern of every field, incl. inf/NaN scales) decode like ggml."""
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    rng = np.random.default_rng(3)
    q = rng.integers(0, 256, (8, 16 * ts), dtype=np.uint8)
    n = 16 * bs
    with np.errstate(all="ignore"):
        ours = dequantize_rows(q, qtype, n)
    ref = ggml_dequantize(q, qtype, n)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("qtype", [pytest.param(q, marks=[pytest.mark.slow] if q.startswith(_GRID) else [])
                                   for q in PLAIN])
def test_single_block_and_shapes(qtype):
    """One block, a 3-D tensor, and the block API directly give the same bytes as ggml."""
    fmt = get_format(qtype)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, fmt.block_size * 2)).astype(np.float32)
    ours = quantize_rows(x, qtype)
    assert ours.shape == (2, 3, fmt.row_bytes(x.shape[-1]))
    np.testing.assert_array_equal(ours.reshape(6, -1), ggml_quantize(x.reshape(6, -1), qtype))
    one = x.reshape(-1, fmt.block_size)[:1]
    np.testing.assert_array_equal(fmt.quantize_blocks(one), ggml_quantize(one, qtype))


def _imatrix_params():
    for q in ALL:
        bs = block_size(q)
        for n in ([bs, 4 * bs] if q in KQUANTS else [3 * bs, 16 * bs]):  # 256, 1024 / 96, 512
            yield _param(q, n)


@pytest.mark.parametrize("qtype,n", list(_imatrix_params()))
def test_imatrix_bytes_identical_to_ggml(qtype, n):
    """ggml's importance-weighted paths (quantize_row_*_impl) with an imatrix row."""
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    rng = np.random.default_rng(n + 1)
    imatrices = {
        "exponential": rng.exponential(1.0, n),
        "heavy": rng.exponential(1.0, n) ** 3,
        "some_zero": np.where(rng.random(n) < 0.3, 0.0, rng.random(n)),
        "uniform": np.ones(n),
    }
    failures = []
    with np.errstate(all="ignore"):
        for (name, x), (iname, imx) in zip(_cases(n, seed=n + 2).items(), list(imatrices.items()) * 4):
            x, imx = x.astype(np.float32), imx.astype(np.float32)
            ours = quantize_rows(x, qtype, imatrix=imx)
            ref = ggml_quantize(x, qtype, imatrix=imx)
            if not np.array_equal(ours, ref):
                failures.append(f"{name} / imatrix {iname}: {_report(ours, ref, ts, x, bs)}")
    assert not failures, f"{qtype} n={n}:\n" + "\n".join(failures)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_legacy_block_level_importance_refused(qtype):
    """Legacy imatrix paths need the whole row's variance: the block API says so instead of guessing."""
    x = np.ones((1, 32), np.float32)
    with pytest.raises(NotImplementedError, match="quantize_rows"):
        get_format(qtype).quantize_blocks(x, np.ones_like(x))


def test_q8_0_ignores_importance_like_ggml():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    imx = np.linspace(0.1, 3, 64).astype(np.float32)
    np.testing.assert_array_equal(quantize_rows(x, "Q8_0", imatrix=imx), ggml_quantize(x, "Q8_0", imatrix=imx))


def test_seqsum_is_the_sequential_c_loop():
    """Bit-exactness rests on NumPy summing axis 0 of a C-contiguous [n, M] array in order (s += a[i]),
    not pairwise; check it on data where the order changes the float32 result."""
    rng = np.random.default_rng(11)
    for n, m in [(16, 1), (16, 2), (32, 7), (32, 4096), (256, 33)]:
        a = (rng.standard_normal((n, m)) * 10.0 ** rng.integers(-6, 6, (n, m))).astype(np.float32)
        expect = a[0].copy()
        for i in range(1, n):
            expect += a[i]
        np.testing.assert_array_equal(seqsum(a), expect)
