"""Shared by the benchmark scripts: best-of timing, one-core pinning, test rows, page-cache dropping.

Standard library only at import time (bench_e2e_q4km.py must not import NumPy before it measures).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def best_time(fn, repeat: int, clock=time.perf_counter) -> float:
    """Shortest of ``repeat`` runs of ``fn()`` on ``clock`` (wall by default; ``time.thread_time`` /
    ``time.process_time`` for CPU time, robust on a shared machine), in seconds (> 0)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return max(best, 1e-9)


def pin_to_one_core() -> None:
    """Keep this process on one core where the platform allows (single-thread comparisons)."""
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass


def weight_rows(rng, rows: int, cols: int):
    """float32[rows, cols] N(0, 1) from ``rng`` with every 97th column x8: outliers, like real weights."""
    import numpy as np

    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[:, ::97] *= 8.0
    return x


def drop_caches() -> None:
    """Flush and drop the page cache (needs root; otherwise only flushes)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass
