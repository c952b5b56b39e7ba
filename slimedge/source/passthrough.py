"""Passing a quantized source's blocks through to the output unchanged (no float round trip).

A quantized reference (:mod:`slimedge.source.fp4src`) says which GGML type its bytes already are
(``stored_type``) and hands them out row range by row range (``raw_rows``). The converter copies them
when the plan gives the tensor that very type, provided the architecture's layout transform for the
tensor moves whole rows only (Llama's q/k head permutation does; a transform that changes values, such
as a folded scale, does not): :meth:`Passthrough.row_order` finds out by running the transform on the
row numbers (one float per row), and :meth:`Passthrough.raw_rows` applies the same order to the rows' bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Passthrough:
    """The raw side of one output tensor: its source reference and the architecture's transform of it."""

    ref: object  # stored_type, raw_rows(start, stop), extra_tensors(gguf name), keep_with_float
    transform: Callable[[np.ndarray], np.ndarray]
    _order: object = field(default=None, repr=False)  # cached row_order(): None, False or int64[n_rows]
    _probed: bool = field(default=False, repr=False)

    @property
    def stored_type(self):
        return self.ref.stored_type

    @property
    def keep_with_float(self) -> bool:
        return bool(getattr(self.ref, "keep_with_float", False))

    def row_order(self, shape: tuple[int, ...]):
        """None when the transform leaves rows in place, the source row of each output row when it only
        reorders them, False when it changes values (then the tensor cannot pass through)."""
        if not self._probed:
            self._probed = True
            n = int(np.prod(shape[:-1]))
            probe = np.arange(n, dtype=np.float32).reshape(*shape[:-1], 1)
            try:
                y = np.asarray(self.transform(probe.copy()))
            except Exception:  # a transform that needs real rows (column counts, ...): decode instead
                self._order = False
                return self._order
            order = y.reshape(-1).astype(np.int64) if y.size == n else None
            if (order is None or not np.array_equal(np.sort(order), np.arange(n))
                    or not np.array_equal(order, y.reshape(-1))):
                self._order = False
            elif np.array_equal(order, np.arange(n)):
                self._order = None
            else:
                self._order = order
        return self._order

    def raw_rows(self, shape: tuple[int, ...], start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """The stored bytes of output rows ``[start, stop)``, reordered as the transform orders rows (into the
        reused buffer ``out`` when the rows stay in place)."""
        order = self.row_order(shape)
        if order is None:
            return self.ref.raw_rows(start, stop, out=out)
        want = order[start:stop]
        lo, hi = int(want.min()), int(want.max()) + 1
        return self.ref.raw_rows(lo, hi)[want - lo]

    def extra_tensors(self, gguf_name: str) -> list[tuple[str, np.ndarray]]:
        return self.ref.extra_tensors(gguf_name)


def passthrough_of(ref, transform: Callable[[np.ndarray], np.ndarray]) -> Passthrough | None:
    """A :class:`Passthrough` for a quantized source reference, None for a float one."""
    if getattr(ref, "stored_type", None) is None or not hasattr(ref, "raw_rows"):
        return None
    return Passthrough(ref, transform)
