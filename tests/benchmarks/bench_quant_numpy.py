"""Benchmark: slimedge's NumPy reference quantizers vs ggml's reference C quantizers, single thread.

Both quantize the same float32 rows in the same run; the table gives Mweights/s and the ratio
slimedge/ggml (goal: >= 0.5 on the k-quants). Bytes are checked identical on the way.

    python tests/benchmarks/bench_quant_numpy.py [--rows 256] [--cols 4096] [--repeat 3] [--types Q4_K,Q6_K]
                                                 [--imatrix]   # importance-weighted paths instead
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for the tests package
from _common import best_time, pin_to_one_core, weight_rows  # noqa: E402  (tests/benchmarks/_common.py)
from tests.ggml_ref import ggml_dequantize, ggml_quantize  # noqa: E402

from slimedge.quant.formats import dequantize_rows, quantize_rows  # noqa: E402  (NumPy path, no C kernels)

CPU = time.process_time  # this process's CPU time: everything here runs on one thread
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--imatrix", action="store_true", help="quantize with a random importance vector")
    args = ap.parse_args()
    pin_to_one_core()

    rng = np.random.default_rng(0)
    x = weight_rows(rng, args.rows, args.cols)
    imx = rng.exponential(1.0, args.cols).astype(np.float32) if args.imatrix else None
    mw = x.size / 1e6
    print(f"{args.rows}x{args.cols} float32 rows ({mw:.2f} Mweights){' with imatrix' if args.imatrix else ''}, "
          f"single thread, best CPU time of {args.repeat}")
    print(f"{'type':6} {'slimedge Mw/s':>14} {'ggml Mw/s':>10} {'ratio':>7} | {'deq slimedge':>12} {'deq ggml':>9} "
          f"{'ratio':>6} | bytes")
    for t in args.types.split(","):
        ours = quantize_rows(x, t, imx)
        ref = ggml_quantize(x, t, imx)
        same = "identical" if np.array_equal(ours, ref) else "DIFFERENT"
        tq_s = best_time(lambda: quantize_rows(x, t, imx), args.repeat, CPU)
        tq_g = best_time(lambda: ggml_quantize(x, t, imx), args.repeat, CPU)
        td_s = best_time(lambda: dequantize_rows(ref, t, args.cols), args.repeat, CPU)
        td_g = best_time(lambda: ggml_dequantize(ref, t, args.cols), args.repeat, CPU)
        print(f"{t:6} {mw / tq_s:14.1f} {mw / tq_g:10.1f} {tq_g / tq_s:7.2f} | {mw / td_s:12.0f} {mw / td_g:9.0f} "
              f"{td_g / td_s:6.2f} | {same}", flush=True)


if __name__ == "__main__":
    main()
