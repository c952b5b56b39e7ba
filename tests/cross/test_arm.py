"""The same bytes on aarch64: kernels/harness/quantize_file.c (the C kernels, no Python) built for x86-64 and
cross-compiled for aarch64 (Debian's gcc-aarch64-linux-gnu, static, run under qemu-user) quantizes the same
rows for every type of the kernels' table (SE_TYPES), with and without importance weights; the outputs must
be identical, and the x86-64 one equal to slimedge._kernels'.

Both builds use setup.py's flags (-O3 -ffp-contract=off ...: GCC would otherwise contract a*b+c into FMA on
aarch64 by default, which rounds once instead of twice). Result on this project's machine: no type differs
(every block identical on aarch64). Needs ``apt-get install -y gcc-aarch64-linux-gnu qemu-user``; without them
the test fails, it does not skip. So it is not part of README's suite: ``python -m pytest`` leaves tests/cross out
(pyproject's norecursedirs) and ``.ci/run`` runs it on its own, after README's two commands and the apt-get::

    sudo apt-get install -y gcc-aarch64-linux-gnu qemu-user
    python -m pytest -q tests/cross
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from slimedge import _kernels
from slimedge.quant import types  # noqa: F401  (registers the types gguf lacks)

ROOT = Path(__file__).resolve().parents[2]


def _setup_flags() -> list[str]:
    """setup.py's GNU_FLAGS (read, not imported: importing setup.py would run setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "GNU_FLAGS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no GNU_FLAGS")


GNU_FLAGS = _setup_flags()

pytestmark = pytest.mark.slow  # two builds of the kernels, then qemu


def _build(cc: str, out: Path, *extra: str) -> Path:
    srcs = [str(p) for p in sorted((ROOT / "kernels").glob("*.c")) if p.name != "binding.c"]
    cmd = [cc, *GNU_FLAGS, *extra, "-I", str(ROOT / "kernels"), str(ROOT / "kernels/harness/quantize_file.c"),
           *srcs, "-lm", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{cc} failed:\n{r.stderr[-3000:]}"
    return out


def _rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    rows = [rng.standard_normal(n), rng.standard_t(2, n), np.zeros(n), np.full(n, 0.75),
            rng.standard_normal(n) * 1e-39, rng.standard_normal(n) * 1e-7, rng.standard_normal(n) * 1e5,
            np.ldexp(1.0, rng.integers(-20, 20, n)) * (1 - 2.0 ** -24)]
    out = rng.standard_normal(n)
    out[::97] *= 1e4
    rows.append(out)
    return np.array(rows, dtype=np.float32)


def test_aarch64_bytes_equal_x86_64(tmp_path):
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    assert cross and qemu, ("needs the aarch64 cross compiler and qemu-user: "
                            "apt-get install -y gcc-aarch64-linux-gnu qemu-user")
    host = _build("cc", tmp_path / "qf-x86")
    arm = _build(cross, tmp_path / "qf-arm", "-static")
    n = 1024  # a multiple of every block size
    x = _rows(n)
    imx = np.random.default_rng(7).exponential(1.0, n).astype(np.float32)
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    (tmp_path / "imx.f32").write_bytes(imx.tobytes())
    report, differ = [], []
    for tid in _kernels.supported_types():
        t = T(tid)
        for weighted in (False, True):
            extra = [str(tmp_path / "imx.f32")] if weighted else []
            outs = []
            for exe, prefix in ((host, []), (arm, [qemu])):
                out = tmp_path / f"{t.name}-{weighted}-{exe.name}.bin"
                r = subprocess.run([*prefix, str(exe), t.name, str(n), str(tmp_path / "x.f32"), str(out), *extra],
                                   capture_output=True, text=True)
                outs.append((r.returncode, out.read_bytes() if r.returncode == 0 else r.stderr))
            (rc_h, a), (rc_a, b) = outs
            assert rc_h == rc_a, f"{t.name}: x86-64 exit {rc_h}, aarch64 exit {rc_a}: {a!r} {b!r}"
            if rc_h != 0:  # a type with no quantizer without weights (IQ2_XXS, IQ2_XS, IQ1_S) refuses on both
                continue
            ts = GGML_QUANT_SIZES[t][1]
            ba, bb = np.frombuffer(a, np.uint8).reshape(-1, ts), np.frombuffer(b, np.uint8).reshape(-1, ts)
            share = (ba == bb).all(axis=1).mean()
            report.append(f"{t.name}{'+imatrix' if weighted else ''}: {share:.2%}")
            if share < 1:
                differ.append(report[-1])
            if not weighted:  # the harness is the extension's code
                ref = np.empty_like(ba).reshape(x.shape[0], -1)
                _kernels.quantize(tid, x, ref, x.shape[0], n)
                assert ref.tobytes() == a, f"{t.name}: harness differs from slimedge._kernels"
    assert report and not differ, "aarch64 differs from x86-64 (identical blocks): " + ", ".join(differ)
