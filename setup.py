"""Build the optional C extension ``slimedge._kernels`` (project metadata lives in pyproject.toml).

The extension is optional: when there is no C compiler, or the build fails, installation still
succeeds and slimedge runs its NumPy reference path (``slimedge.quant.backend`` logs a notice).
``SLIMEDGE_NO_EXT=1`` skips the build on purpose.

Compiler flags (GCC/Clang), chosen to keep the bytes identical to ggml's reference quantizers:

* ``-O3`` to let the compiler vectorize the lane loops (kernels/kq_search.h);
* ``-ffp-contract=off``: never fuse a*b+c into one FMA (that rounds once instead of twice and
  changes bytes); ``-ffast-math`` and its parts that change values (reassociation, reciprocal
  math, finite-math, no-signed-zeros) are never used;
* ``-fno-math-errno -fno-trapping-math``: only drop errno writes and FP-trap preservation (no value
  changes), which lets sqrtf and the per-lane selects vectorize;
* no ``-march=native`` (a wheel built with it crashes on older CPUs): the baseline is the
  platform default (SSE2 on x86-64), and on x86-64 Linux the hot kernels are multi-versioned
  (``target_clones("avx2", "default")``) so AVX2 machines run 8-lane code from the same binary.
"""

from __future__ import annotations

import os
import sys
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

GNU_FLAGS = ["-std=c11", "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
             "-fno-strict-aliasing", "-fopenmp-simd", "-Wall"]
MSVC_FLAGS = ["/O2", "/fp:precise", "/std:c11"]


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the NumPy path works without the extension."""

    def build_extensions(self):
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else GNU_FLAGS
        for ext in self.extensions:
            ext.extra_compile_args = flags + list(ext.extra_compile_args or [])
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler at all (DistutilsPlatformError) and the like
            self._warn(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # compile or link error
            self._warn(e)

    @staticmethod
    def _warn(e: Exception) -> None:
        print(f"WARNING: building the slimedge C kernels failed ({e}); slimedge will use its "
              "NumPy path (slower, same results).", file=sys.stderr)


ext_modules = []
if os.environ.get("SLIMEDGE_NO_EXT", "") not in ("1", "true", "yes"):
    ext_modules.append(Extension(
        "slimedge._kernels",
        sources=sorted(glob("kernels/*.c")),
        depends=sorted(glob("kernels/*.h")),
        include_dirs=["kernels"],
    ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
