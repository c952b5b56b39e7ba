"""Backend switch: C kernels (``slimedge._kernels``) when built, NumPy reference otherwise.

Both produce identical bytes (each is checked against ggml). The C path splits a tensor into
chunks of whole blocks and quantizes them on a thread pool (the kernels release the GIL);
``threads`` defaults to the thread policy's count (:mod:`slimedge.threads`: usable cores, ``--threads``).

* ``SLIMEDGE_PUREPYTHON=1`` forces NumPy (read at import; :func:`set_backend` switches later).
* A missing or broken extension falls back to NumPy with a one-line logged notice.
* :func:`backend_name` is ``"c"`` or ``"numpy"``; :func:`backend_info` adds the reason / the ISA.
* The kernels cover every registered type, with importance weights (imatrix) for all quantized
  ones, legacy formats included. A registered type without a kernel, or importance weights for
  F32/F16/BF16 (which ignore them), go to NumPy transparently (which refuses what it does not
  support either).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import SlimedgeError
from .formats import check_row_length, dequantize_rows, get_format, quantize_rows, quantized_rows
from .types import REQUIRES_IMATRIX

log = logging.getLogger(__name__)

MIN_CHUNK_VALUES = 1 << 16  # smallest share of a tensor one task gets: keeps task overhead < ~5%
TASKS_PER_THREAD = 4        # more tasks than threads evens out uneven chunks


def _load_kernels():
    """-> (module or None, reason shown when None)."""
    if os.environ.get("SLIMEDGE_PUREPYTHON", "").strip().lower() not in ("", "0", "false", "no"):
        return None, "SLIMEDGE_PUREPYTHON is set"
    try:
        from .. import _kernels
    except ImportError as exc:
        log.warning("slimedge C kernels unavailable (%s); using the NumPy quantizer (slower, same bytes)", exc)
        return None, f"C kernels not built ({exc})"
    return _kernels, ""


_K, _WHY_NOT = _load_kernels()


def backend_name() -> str:
    """``"c"`` when the C kernels are active, else ``"numpy"``."""
    return "c" if _K is not None else "numpy"


def backend_info() -> str:
    """One line for ``--version``: ``"c (avx2)"`` or ``"numpy (SLIMEDGE_PUREPYTHON is set)"``."""
    if _K is not None:
        return f"c ({_K.isa()})"
    return f"numpy ({_WHY_NOT})"


def set_backend(name: str) -> None:
    """Switch the active backend (``"c"`` or ``"numpy"``), e.g. for tests and benchmarks."""
    global _K, _WHY_NOT
    if name == "numpy":
        _K, _WHY_NOT = None, "selected"
    elif name == "c":
        try:
            from .. import _kernels
        except ImportError as exc:
            raise SlimedgeError(f"the C kernels are not built ({exc}); reinstall slimedge with a C compiler "
                                "(pip install -e .) or use the numpy backend") from None
        _K, _WHY_NOT = _kernels, ""
    else:
        raise SlimedgeError(f"unknown quantization backend {name!r}; choose 'c' or 'numpy'")


def default_threads() -> int:
    """The pool's size when no ``threads`` is given: the thread policy's count (:mod:`slimedge.threads`)."""
    from ..threads import kernel_threads

    return kernel_threads()


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(n: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="slimedge-quant")
        return _POOLS[n]


def _chunks(n_blocks: int, block_size: int, threads: int | None) -> list[tuple[int, int]]:
    """Split ``n_blocks`` blocks into ``[start, stop)`` block ranges for the thread pool."""
    t = default_threads() if threads is None else max(1, int(threads))
    if t == 1 or n_blocks * block_size < 2 * MIN_CHUNK_VALUES:
        return [(0, n_blocks)]
    min_blocks = -(-MIN_CHUNK_VALUES // block_size)
    per = max(min_blocks, -(-n_blocks // (t * TASKS_PER_THREAD)))
    return [(s, min(s + per, n_blocks)) for s in range(0, n_blocks, per)]


def _run(tasks, threads: int | None) -> None:
    if len(tasks) == 1:
        tasks[0]()
        return
    t = default_threads() if threads is None else max(1, int(threads))
    for f in [_pool(t).submit(task) for task in tasks]:
        f.result()


def active_kernels():
    """The C kernels' module while that backend is active (else None): for callers with kernels of their own."""
    return _K


def parallel_ranges(n: int, item_size: int, fn, threads: int | None = None) -> None:
    """``fn(start, stop)`` over ``[0, n)`` items of ``item_size`` values, split and pooled as quantization is."""
    _run([functools.partial(fn, a, b) for a, b in _chunks(n, item_size, threads)], threads)


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None, threads: int | None = None,
             what: str = "tensor") -> np.ndarray:
    """``float32[..., n_per_row]`` -> ``uint8[..., row_bytes]`` with the active backend.

    ``imatrix``: optional ``float32[n_per_row]`` column importance; ``threads``: None = all cores.
    """
    fmt = get_format(qtype)
    if imatrix is None and fmt.qtype in REQUIRES_IMATRIX:
        raise SlimedgeError(f"{what}: {fmt.qtype.name} needs an importance matrix (llama.cpp refuses it without "
                            "one); pass --imatrix or choose another type")
    k = _K
    if k is None or k.block_size(int(fmt.qtype)) == 0 or (imatrix is not None and not k.has_imatrix(int(fmt.qtype))):
        return quantize_rows(x, qtype, imatrix, what=what)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_per_row = x.shape[-1]
    check_row_length(fmt, n_per_row, what)
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n_per_row,):
            raise SlimedgeError(f"{what}: importance vector has shape {imatrix.shape}, expected ({n_per_row},)")
    out = np.empty((*x.shape[:-1], fmt.row_bytes(n_per_row)), dtype=np.uint8)
    if x.size == 0:
        return out
    bs, ts, t = fmt.block_size, fmt.type_size, int(fmt.qtype)
    src, dst = x.reshape(-1), out.reshape(-1)
    if imatrix is not None:  # weights are per column: chunks of whole rows
        rb = fmt.row_bytes(n_per_row)
        tasks = [(lambda a=a, b=b: k.quantize(t, src[a * n_per_row:b * n_per_row], dst[a * rb:b * rb], b - a,
                                              n_per_row, imatrix))
                 for a, b in _chunks(x.size // n_per_row, n_per_row, threads)]
        _run(tasks, threads)
        return out
    tasks = [(lambda a=a, b=b: k.quantize(t, src[a * bs:b * bs], dst[a * ts:b * ts], 1, (b - a) * bs))
             for a, b in _chunks(x.size // bs, bs, threads)]
    _run(tasks, threads)
    return out


def dequantize(q: np.ndarray, qtype, n_per_row: int | None = None, threads: int | None = None) -> np.ndarray:
    """``uint8[..., row_bytes]`` -> ``float32[..., n_per_row]`` with the active backend."""
    fmt = get_format(qtype)
    k = _K
    if k is None or k.block_size(int(fmt.qtype)) == 0:
        return dequantize_rows(q, qtype, n_per_row)
    q, n = quantized_rows(q, fmt, n_per_row)
    out = np.empty((*q.shape[:-1], n), dtype=np.float32)
    if out.size == 0:
        return out
    bs, ts, t = fmt.block_size, fmt.type_size, int(fmt.qtype)
    src, dst = q.reshape(-1), out.reshape(-1)
    tasks = [(lambda a=a, b=b: k.dequantize(t, src[a * ts:b * ts], dst[a * bs:b * bs], (b - a) * bs))
             for a, b in _chunks(out.size // bs, bs, threads)]
    _run(tasks, threads)
    return out
