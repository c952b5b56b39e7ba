"""Benchmark: thread scaling of the C kernels through slimedge.quant.quantize (the path users run).

One tensor (default 2048x4096, Llama-sized rows) is quantized with 1, 2, 4, ... up to all usable
cores; wall time (best of --repeat) gives Mweights/s and the speedup over 1 thread, and "busy" is
process CPU time / wall time of the all-cores runs (how many cores were really kept busy: close to
the thread count when the GIL is released and the machine is otherwise idle). ggml's
single-thread reference quantizer on the same tensor, measured in the same run, is the anchor.
Bytes are checked identical to the 1-thread result for every thread count.

    python tests/benchmarks/bench_threads.py [--rows 2048] [--cols 4096] [--repeat 3] [--types Q4_K,Q6_K,Q8_0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for the tests package
from _common import best_time  # noqa: E402  (tests/benchmarks/_common.py)
from tests.ggml_ref import ggml_quantize  # noqa: E402

from slimedge.quant import backend as qb  # noqa: E402


def busy(fn, repeat: int) -> float:
    """CPU seconds of this process per wall second over ``repeat`` runs."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.process_time() - c0) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default="Q4_K,Q6_K,Q3_K,Q8_0,Q4_0")
    args = ap.parse_args()
    qb.set_backend("c")
    cores = qb.default_threads()
    counts = sorted({1, *[2 ** i for i in range(1, 8) if 2 ** i < cores], cores})
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    mw = x.size / 1e6
    print(f"{args.rows}x{args.cols} float32 ({mw:.1f} Mweights), {cores} usable cores "
          f"(os.cpu_count()={os.cpu_count()}), best wall time of {args.repeat}; backend {qb.backend_info()}")
    head = f"{'type':6} {'ggml 1t':>9} " + " ".join(f"{f'{t} thr':>9}" for t in counts) + \
        f" | {'speedup':>8} {'vs ggml':>8} {'busy':>5}"
    print(head)
    print("-" * len(head))
    for name in args.types.split(","):
        tg = best_time(lambda: ggml_quantize(x, name), 1)
        one = qb.quantize(x, name, threads=1)
        rates = []
        for t in counts:
            assert np.array_equal(qb.quantize(x, name, threads=t), one), f"{name}: {t} threads changed the bytes"
            rates.append(mw / best_time(lambda: qb.quantize(x, name, threads=t), args.repeat))
        b = busy(lambda: qb.quantize(x, name, threads=counts[-1]), args.repeat)
        print(f"{name:6} {mw / tg:9.1f} " + " ".join(f"{r:9.1f}" for r in rates) +
              f" | {rates[-1] / rates[0]:7.2f}x {rates[-1] / (mw / tg):7.1f}x {b:5.2f}")
    print("(Mweights/s; speedup = all cores vs 1 thread; vs ggml = all cores vs ggml's 1-thread reference)")


if __name__ == "__main__":
    main()
