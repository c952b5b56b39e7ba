"""The C kernels (slimedge._kernels) against ggml and the NumPy reference, plus the backend switch.

* bytes: C == ggml's ggml_quantize_chunk == slimedge's NumPy formats, for every format on Gaussian,
  heavy-tailed, zero, constant, outlier, tiny/subnormal, mixed-scale and huge rows of several lengths;
* dequantize: C == ggml's to_float == NumPy, bit for bit;
* threads: any thread count and chunking gives the bytes of one thread;
* the switch: SLIMEDGE_PUREPYTHON=1 selects NumPy, a missing extension falls back with a notice,
  and errors for bad shapes are the same on both backends.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from tests.ggml_ref import ggml_dequantize, ggml_quantize
from slimedge import _kernels
from slimedge.errors import SlimedgeError
from slimedge.quant import REGISTRY, dequantize_rows, quantize_rows
from slimedge.quant import backend as qb
from slimedge.quant.types import FLOAT_TYPES, QK_K, REQUIRES_IMATRIX, block_size

# every registered format (a new one is checked here without editing this file), by family
FLOATS = [t.name for t in REGISTRY if t in FLOAT_TYPES]
KQUANTS = [t.name for t in REGISTRY if t not in FLOAT_TYPES and block_size(t) == QK_K]
LEGACY = [t.name for t in REGISTRY if t not in FLOAT_TYPES and block_size(t) != QK_K]  # 32-weight blocks
ALL = FLOATS + LEGACY + KQUANTS
# without importance weights: not the types ggml only quantizes with them (its quantizer asserts)
PLAIN = [q for q in ALL if GGMLQuantizationType[q] not in REQUIRES_IMATRIX]


def _rows(n: int, seed: int, r: int = 3) -> np.ndarray:
    """float32[cases * r, n]: the data set of the k-quant issue (no NaN/inf)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((r, n))
    zero = g.copy()
    zero[:, : n // 2] = 0.0
    zero[0] = -0.0
    const = np.repeat(rng.standard_normal((r, -(-n // 32))), 32, axis=1)[:, :n]
    const[0] = 0.75
    outlier = rng.standard_normal((r, n))
    outlier[:, rng.integers(0, 32)::32] *= 1e4
    groups = -(-n // 16)
    mixed = rng.standard_normal((r, n)) * (10.0 ** rng.integers(-30, 5, (r, groups))).repeat(16, axis=1)[:, :n]
    cases = [g, rng.standard_t(3, (r, n)), rng.standard_t(1, (r, n)), zero, const, outlier,
             rng.standard_normal((r, n)) * 1e-7, rng.standard_normal((r, n)) * 1e-39, mixed,
             rng.standard_normal((r, n)) * 1e6, rng.integers(-4, 4, (r, n)).astype(np.float64),
             np.abs(g) + 0.5]
    return np.concatenate(cases).astype(np.float32)


def _lengths(qtype: str) -> list[int]:
    """1, 3 and 8 super-blocks (k-quants: 256, 768, 2048); 1, 3 and 32 blocks (legacy: 32, 96, 1024)."""
    if qtype in FLOATS:
        return [1, 7, 1024]
    bs = block_size(qtype)
    return [bs, 3 * bs, (8 if qtype in KQUANTS else 32) * bs]


def _c_quantize(x: np.ndarray, qtype: str) -> np.ndarray:
    t = GGMLQuantizationType[qtype]
    bs, ts = GGML_QUANT_SIZES[t]
    out = np.empty((x.shape[0], x.shape[1] // bs * ts), np.uint8)
    _kernels.quantize(int(t), x, out, x.shape[0], x.shape[1])
    return out


def _c_dequantize(q: np.ndarray, qtype: str, n: int) -> np.ndarray:
    out = np.empty((q.shape[0], n), np.float32)
    _kernels.dequantize(int(GGMLQuantizationType[qtype]), q, out, out.size)
    return out


def _mismatch(ours: np.ndarray, ref: np.ndarray, qtype: str, what: str) -> str:
    ts = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    a, b = ours.reshape(-1, ts), ref.reshape(-1, ts)
    bad = (a != b).any(axis=1)
    i = int(np.argmax(bad))
    return (f"{qtype} vs {what}: {1 - bad.mean():.3%} of {len(bad)} blocks identical; first bad block {i}: "
            f"ours {a[i][:16].tolist()} ref {b[i][:16].tolist()}")


@pytest.mark.parametrize("qtype", PLAIN)
def test_bytes_identical_to_ggml_and_numpy(qtype):
    for n in _lengths(qtype):
        x = _rows(n, seed=n)
        ours = _c_quantize(x, qtype)
        ref = ggml_quantize(x, qtype)
        assert np.array_equal(ours, ref), _mismatch(ours, ref, qtype, f"ggml (n={n})")
        numpy_ref = quantize_rows(x, qtype)
        assert np.array_equal(ours, numpy_ref), _mismatch(ours, numpy_ref, qtype, f"numpy (n={n})")
        for r in (1, 3, 5, 7):  # block counts that leave 1-3 blocks after groups of 2 and 4 super-blocks
            assert np.array_equal(_c_quantize(x[-r:], qtype), ref[-r:]), f"{qtype}: {r} rows of {n} differ"


@pytest.mark.parametrize("qtype", KQUANTS)
def test_imatrix_bytes_identical_to_ggml_and_numpy(qtype, monkeypatch):
    monkeypatch.setattr(qb, "_K", _kernels)
    monkeypatch.setattr(qb, "MIN_CHUNK_VALUES", 512)  # several row chunks on the thread pool
    assert _kernels.has_imatrix(int(GGMLQuantizationType[qtype]))
    for n in _lengths(qtype)[:2]:  # 256, 768
        x = _rows(n, seed=n + 1)
        rng = np.random.default_rng(n)
        for imx in (rng.random(n) * 10 + 0.01, (rng.random(n) ** 4), np.ones(n)):
            imx = imx.astype(np.float32)
            ours = qb.quantize(x, qtype, imatrix=imx, threads=3)
            ref = ggml_quantize(x, qtype, imatrix=imx)
            assert np.array_equal(ours, ref), _mismatch(ours, ref, qtype, f"ggml with imatrix (n={n})")
            numpy_ref = quantize_rows(x, qtype, imatrix=imx)
            assert np.array_equal(ours, numpy_ref), _mismatch(ours, numpy_ref, qtype, f"numpy with imatrix (n={n})")


@pytest.mark.parametrize("qtype", LEGACY)
def test_imatrix_legacy_bytes_identical_to_ggml_and_numpy(qtype, monkeypatch):
    monkeypatch.setattr(qb, "_K", _kernels)
    assert _kernels.has_imatrix(int(GGMLQuantizationType[qtype]))
    for n in _lengths(qtype):  # 1, 3 and 32 blocks: lane groups of 8 and single-block tails
        x = _rows(n, seed=n + 2)
        rng = np.random.default_rng(n)
        for imx in (rng.random(n) * 10 + 0.01, (rng.random(n) ** 4), np.ones(n)):
            imx = imx.astype(np.float32)
            ours = qb.quantize(x, qtype, imatrix=imx, threads=2)
            ref = ggml_quantize(x, qtype, imatrix=imx)
            assert np.array_equal(ours, ref), _mismatch(ours, ref, qtype, f"ggml with imatrix (n={n})")
            with np.errstate(all="ignore"):
                numpy_ref = quantize_rows(x, qtype, imatrix=imx)
            assert np.array_equal(ours, numpy_ref), _mismatch(ours, numpy_ref, qtype, f"numpy with imatrix (n={n})")


@pytest.mark.parametrize("qtype", ALL)
def test_dequantize_identical_to_ggml_and_numpy(qtype):
    n = _lengths(qtype)[-1]
    x = _rows(n, seed=7)
    imx = np.ones(n, np.float32) if qtype not in PLAIN else None  # ggml only quantizes these with weights
    q = ggml_quantize(x, qtype, imatrix=imx)
    ours = _c_dequantize(q, qtype, n)
    ref = q.view(np.float32) if qtype == "F32" else ggml_dequantize(q, qtype, n)  # ggml has no F32 to_float
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), f"{qtype}: dequantize differs from ggml"
    assert np.array_equal(ours.view(np.uint32), dequantize_rows(q, qtype, n).view(np.uint32)), \
        f"{qtype}: dequantize differs from numpy"


def test_fp16_conversion_all_finite_halves_and_rounding():
    # every finite half round-trips, and float32 values between halves round to nearest even like NumPy
    h = np.arange(0x10000, dtype=np.uint32).astype(np.uint16)
    h = h[np.isfinite(h.view(np.float16))]
    f = h.view(np.float16).astype(np.float32)
    back = np.empty(f.size * 2, np.uint8)
    _kernels.quantize(int(GGMLQuantizationType.F16), f, back, 1, f.size)
    assert np.array_equal(back.view(np.uint16), h)
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 0x7F800000, 200_000, dtype=np.uint32) | (rng.integers(0, 2, 200_000, dtype=np.uint32) << 31)
    x = bits.view(np.float32)
    x = np.concatenate([x, np.float32([65504, 65519.99, 65520, 6.1035156e-05, 2.9802322e-08, 5.9604645e-08])])
    out = np.empty(x.size * 2, np.uint8)
    _kernels.quantize(int(GGMLQuantizationType.F16), x, out, 1, x.size)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(out.view(np.uint16), expected)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0", "F16", "Q3_K"])
def test_threads_give_the_bytes_of_one_thread(qtype, monkeypatch):
    monkeypatch.setattr(qb, "_K", _kernels)
    monkeypatch.setattr(qb, "MIN_CHUNK_VALUES", 256)  # force many small chunks
    x = _rows(512, seed=11, r=2)[:, :512]
    x = np.concatenate([x] * 3)
    one = qb.quantize(x, qtype, threads=1)
    assert len(qb._chunks(x.size // GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0],
                          GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0], 4)) > 4
    for t in (2, 3, 4):
        assert np.array_equal(qb.quantize(x, qtype, threads=t), one)
    back = qb.dequantize(one, qtype, 512, threads=1)
    assert np.array_equal(qb.dequantize(one, qtype, 512, threads=4).view(np.uint32), back.view(np.uint32))


def test_backend_fixture_and_public_api(backend):
    assert qb.backend_name() == backend
    x = _rows(256, seed=5, r=1).reshape(-1, 2, 256)  # 3-D: leading dims are kept
    q = qb.quantize(x, "Q4_K")
    assert q.shape == (x.shape[0], 2, 144)
    assert np.array_equal(q.reshape(-1, 144), ggml_quantize(x.reshape(-1, 256), "Q4_K"))
    y = qb.dequantize(q, "Q4_K", 256)
    assert y.shape == x.shape
    assert np.array_equal(y.reshape(-1, 256), ggml_dequantize(q.reshape(-1, 144), "Q4_K", 256))


@pytest.mark.parametrize("bad", [
    dict(x=np.zeros((2, 100), np.float32), qtype="Q4_K"),
    dict(x=np.zeros((3, 48), np.float32), qtype="Q8_0"),
    dict(x=np.zeros((2, 256), np.float32), qtype="Q4_K", imatrix=np.ones(255, np.float32)),
])
def test_errors_identical_on_both_backends(bad, monkeypatch):
    msgs = []
    for k in (_kernels, None):
        monkeypatch.setattr(qb, "_K", k)
        with pytest.raises(SlimedgeError) as e:
            qb.quantize(bad["x"], bad["qtype"], imatrix=bad.get("imatrix"), what="blk.0.attn_q.weight")
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    assert "blk.0.attn_q.weight" in msgs[0] or "importance" in msgs[0]
    msgs = []
    for k in (_kernels, None):
        monkeypatch.setattr(qb, "_K", k)
        with pytest.raises(SlimedgeError) as e:
            qb.dequantize(np.zeros((2, 145), np.uint8), "Q4_K")
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]


def test_binding_checks_buffers():
    x = np.zeros(256, np.float32)
    with pytest.raises(ValueError, match="dst holds"):
        _kernels.quantize(int(GGMLQuantizationType.Q4_K), x, np.empty(100, np.uint8), 1, 256)
    with pytest.raises(ValueError, match="not supported"):
        _kernels.quantize(999, x, np.empty(144, np.uint8), 1, 256)
    with pytest.raises(ValueError, match="block size"):
        _kernels.quantize(int(GGMLQuantizationType.Q4_K), x, np.empty(144, np.uint8), 2, 128)
    with pytest.raises(BufferError):
        _kernels.quantize(int(GGMLQuantizationType.Q4_K), x, b"\0" * 144, 1, 256)  # read-only dst
    with pytest.raises(TypeError, match="float32"):  # float64 data is refused, not reinterpreted
        _kernels.quantize(int(GGMLQuantizationType.Q8_0), np.zeros(32, np.float64)[:16], np.empty(34, np.uint8), 1, 32)
    with pytest.raises(TypeError, match="float32"):
        _kernels.dequantize(int(GGMLQuantizationType.Q8_0), np.zeros(34, np.uint8), np.empty(16, np.float64), 32)
    assert set(_kernels.supported_types()) == {int(GGMLQuantizationType[t]) for t in ALL}
    assert _kernels.isa() in ("avx2", "baseline")


def test_purepython_env_selects_numpy():
    code = "from slimedge.quant.backend import backend_name, backend_info; print(backend_name(), backend_info())"
    out = subprocess.run([sys.executable, "-c", code], env={**_env(), "SLIMEDGE_PUREPYTHON": "1"},
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("numpy numpy (SLIMEDGE_PUREPYTHON is set)")
    out = subprocess.run([sys.executable, "-c", code], env={**_env(), "SLIMEDGE_PUREPYTHON": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("c c (")


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "SLIMEDGE_PUREPYTHON"}


def test_missing_extension_falls_back_with_a_notice(monkeypatch, caplog):
    monkeypatch.delenv("SLIMEDGE_PUREPYTHON", raising=False)
    import slimedge

    monkeypatch.setitem(sys.modules, "slimedge._kernels", None)  # makes `from .. import _kernels` fail
    monkeypatch.delattr(slimedge, "_kernels", raising=False)
    with caplog.at_level(logging.WARNING, logger="slimedge.quant.backend"):
        k, why = qb._load_kernels()
    assert k is None and "not built" in why
    notices = [r for r in caplog.records if "NumPy" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0].getMessage()
    monkeypatch.setattr(qb, "_K", k)
    monkeypatch.setattr(qb, "_WHY_NOT", why)
    assert qb.backend_name() == "numpy" and qb.backend_info().startswith("numpy (C kernels not built")
    x = _rows(256, seed=9, r=1)
    assert np.array_equal(qb.quantize(x, "Q6_K"), ggml_quantize(x, "Q6_K"))
    with pytest.raises(SlimedgeError, match="not built"):
        qb.set_backend("c")


@pytest.mark.slow  # compiles the kernels a second time
def test_baseline_isa_build_gives_the_same_bytes(tmp_path):
    """The extension runs an AVX2 clone here; a build without multi-versioning for the baseline ISA
    (SSE2 on x86-64: what older CPUs run) must give the same bytes."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert cc, "a C compiler is needed (the extension is built with one)"
    kernels = Path(__file__).resolve().parents[2] / "kernels"
    sources = [str(p) for p in sorted(kernels.glob("*.c")) if p.name != "binding.c"]
    arch = ["-march=x86-64"] if platform.machine() in ("x86_64", "AMD64") else []
    lib_path = tmp_path / "libse_baseline.so"
    subprocess.run([cc, "-shared", "-fPIC", "-std=c11", "-O3", "-ffp-contract=off", "-fno-math-errno",
                    "-fno-trapping-math", "-fno-strict-aliasing", "-fopenmp-simd", "-DSE_NO_MULTIVERSION", *arch,
                    *sources, "-o", str(lib_path)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.se_quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_void_p]
    for qtype in ALL:
        t = GGMLQuantizationType[qtype]
        for n in _lengths(qtype):
            x = _rows(n, seed=n)
            imx = np.random.default_rng(n).random(n).astype(np.float32) + 0.1
            weights = (None, imx) if _kernels.has_imatrix(int(t)) else (None,)
            if t in REQUIRES_IMATRIX:  # the kernels refuse these without importance weights, as ggml does
                weights = (imx,)
            for w in weights:
                bs, ts = GGML_QUANT_SIZES[t]
                ref = np.empty((x.shape[0], n // bs * ts), np.uint8)
                _kernels.quantize(int(t), x, ref, x.shape[0], n, w)
                out = np.zeros_like(ref)
                assert lib.se_quantize(int(t), x.ctypes.data, out.ctypes.data, x.shape[0], n,
                                       None if w is None else w.ctypes.data) == 0
                assert np.array_equal(out, ref), _mismatch(out, ref, qtype, f"baseline build (n={n}, imatrix {w is not None})")


def test_version_shows_the_active_backend(backend):
    from click.testing import CliRunner

    from slimedge.cli import main

    out = CliRunner().invoke(main, ["--version"]).output
    assert ("quant backend: c (" if backend == "c" else "quant backend: numpy (selected") in out
