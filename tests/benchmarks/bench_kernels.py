"""Benchmark: slimedge C kernels vs ggml's reference quantizers vs slimedge NumPy, single thread.

All three quantize the same float32 rows in the same run (bytes are checked identical); the
table gives Mweights/s and the ratios C/ggml and NumPy/ggml, with the issue's goal for C/ggml.
Times are the best CPU time of --repeat runs (robust on a shared machine; every path runs on
this one thread, pinned to one core where the platform allows).

    python tests/benchmarks/bench_kernels.py [--rows 64] [--cols 4096] [--repeat 5] [--types Q4_K,Q6_K]
    python tests/benchmarks/bench_kernels.py --imatrix     # importance-weighted paths (no goals)
    python tests/benchmarks/bench_kernels.py --types new   # issue 12's IQ4_NL .. Q2_0 (goals: C >= 2x, NumPy >= 0.3x)
    python tests/benchmarks/bench_kernels.py --types grid  # issue 12's IQ1/IQ2/IQ3 grid types, with importance
                                                           # weights (3 of them need them; goal C >= 1.5x)
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for the tests package
from _common import best_time, pin_to_one_core, weight_rows  # noqa: E402  (tests/benchmarks/_common.py)
from tests.ggml_ref import ggml_dequantize, ggml_quantize  # noqa: E402

from slimedge import _kernels  # noqa: E402
from slimedge.quant.formats import quantize_rows  # noqa: E402  (NumPy path)

CPU = time.thread_time  # this thread's CPU time: every path runs on this one thread
# the non-grid types of issue 12 (``--types new`` runs only these)
NEW_TYPES = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "Q1_0", "Q2_0"]
TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"] + NEW_TYPES
GOAL = {"Q4_K": 4.0, "Q5_K": 4.0, "Q2_K": 4.0, "Q3_K": 1.5, "Q6_K": 1.5, "Q8_0": 1.0, "Q4_0": 1.0,
        **{t: 2.0 for t in NEW_TYPES}}
NUMPY_GOAL = {t: 0.3 for t in NEW_TYPES}  # NumPy / ggml
# the grid i-quants (``--types grid``, always with importance weights): NumPy measured, no goal
GRID_TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
GOAL.update({t: 1.5 for t in GRID_TYPES})


def c_quantize(x: np.ndarray, t: GGMLQuantizationType, imatrix: np.ndarray | None = None) -> np.ndarray:
    bs, ts = GGML_QUANT_SIZES[t]
    out = np.empty((x.shape[0], x.shape[1] // bs * ts), np.uint8)
    _kernels.quantize(int(t), x, out, x.shape[0], x.shape[1], imatrix)
    return out


def c_dequantize(q: np.ndarray, t: GGMLQuantizationType, n: int) -> np.ndarray:
    out = np.empty((q.shape[0], n), np.float32)
    _kernels.dequantize(int(t), q, out, out.size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--numpy-rows", type=int, default=16, help="rows for the (slow) NumPy path")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--imatrix", action="store_true", help="quantize with importance weights")
    args = ap.parse_args()
    if args.types == "new":
        args.types = ",".join(NEW_TYPES)
    if args.types == "grid":
        args.types, args.imatrix = ",".join(GRID_TYPES), True
    pin_to_one_core()

    rng = np.random.default_rng(0)
    x = weight_rows(rng, args.rows, args.cols)
    xn = x[: args.numpy_rows]
    imx = (rng.random(args.cols).astype(np.float32) * 4 + 0.01) if args.imatrix else None
    if args.imatrix:
        args.types = ",".join(t for t in args.types.split(",") if t not in ("F16", "BF16"))
    print(f"{args.rows}x{args.cols} float32 rows ({x.size / 1e6:.2f} Mweights; NumPy on {xn.shape[0]} rows), "
          f"single thread, best CPU time of {args.repeat}; C kernels: {_kernels.isa()}"
          f"{'; WITH IMPORTANCE WEIGHTS' if args.imatrix else ''}")
    head = (f"{'type':6} {'C Mw/s':>9} {'ggml Mw/s':>10} {'NumPy Mw/s':>11} {'C/ggml':>7} {'goal':>5} "
            f"{'NumPy/ggml':>10} | {'deq C':>8} {'deq ggml':>9} {'ratio':>6} | bytes")
    print(head)
    print("-" * len(head))
    misses = []
    for name in args.types.split(","):
        t = GGMLQuantizationType[name]
        ours, ref = c_quantize(x, t, imx), ggml_quantize(x, name, imatrix=imx)
        same = np.array_equal(ours, ref) and np.array_equal(quantize_rows(xn, name, imx), ref[: xn.shape[0]])
        tc = best_time(lambda: c_quantize(x, t, imx), args.repeat, CPU)
        tg = best_time(lambda: ggml_quantize(x, name, imatrix=imx), args.repeat, CPU)
        tn = best_time(lambda: quantize_rows(xn, name, imx), max(1, args.repeat // 2), CPU)
        c, g, npy = x.size / tc / 1e6, x.size / tg / 1e6, xn.size / tn / 1e6
        dc = best_time(lambda: c_dequantize(ref, t, x.shape[1]), args.repeat, CPU)
        dg = best_time(lambda: ggml_dequantize(ref, name, x.shape[1]), args.repeat, CPU)
        goal = GOAL.get(name) if not args.imatrix or name in GRID_TYPES else None
        if goal and c / g < goal:
            misses.append(name)
        npy_goal = None if args.imatrix else NUMPY_GOAL.get(name)
        if npy_goal and npy / g < npy_goal:
            misses.append(f"{name} (NumPy)")
        if not same:
            misses.append(f"{name} (bytes)")
        print(f"{name:6} {c:9.1f} {g:10.1f} {npy:11.1f} {c / g:7.2f} {'' if goal is None else f'{goal:.1f}':>5} "
              f"{npy / g:10.2f} | {x.size / dc / 1e6:8.0f} {x.size / dg / 1e6:9.0f} {dg / dc:6.2f} | "
              f"{'identical' if same else 'DIFFERENT'}")
    print("goals met" if not misses else f"below goal: {', '.join(misses)}")


if __name__ == "__main__":
    main()
