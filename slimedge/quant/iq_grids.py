"""The lattice grids of the i-quants (IQ1_S/IQ1_M, IQ2_XXS/XS/S, IQ3_XXS/S) and ggml's search tables.

The grid points are format definitions; they are read from the ``gguf`` package (``gguf.quants``: each
i-quant class carries its grid as ``grid_hex`` + ``grid_map``), the one place slimedge takes them from.
A grid point is ``dim`` levels ``l`` (``dim`` = 8 with 2 bits per level, or 4 with 3 bits); the key of a
vector of levels is ``sum(l[k] << bits*k)``.

From a grid this module builds what ggml's ``ggml_quantize_init`` (``iq2xs_init_impl`` /
``iq3xs_init_impl``) builds, lazily and once per grid:

* ``key_to_index``: grid index of each key (-1: not a grid point), over all keys up to the largest one;
* the neighbour lists of every key that is not a grid point: the grid points at the ``nwant`` smallest
  distinct squared distances (in units of the positions ``2*l+1``), ordered by (distance, index) —
  the order ggml's qsort gives, which decides ties in the quantizers' neighbour search.

The C kernels build the same tables at first use from ``kernels/iq_grids.h``, which
``python -m slimedge.quant.iq_grids`` writes from these grids (a test checks the header is current).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants as gq


@dataclass(frozen=True)
class Grid:
    name: str
    levels: np.ndarray      # uint8[n, dim]: the level (0..) of each coordinate of each grid point
    bits: int               # bits per level in a key
    key_to_index: np.ndarray  # int32[n_keys]: grid index of a key, -1 off the grid
    nb_row: np.ndarray      # int32[n_keys]: row of an off-grid key in nb_index (-1 for grid points)
    nb_index: np.ndarray    # int16[n_off, max_neighbours]: neighbours, by (distance, index), -1 padded
    nb_count: np.ndarray    # int32[n_off]: neighbours of each off-grid key

    @property
    def dim(self) -> int:
        return self.levels.shape[1]

    @property
    def pos(self) -> np.ndarray:
        """float32[n, dim]: 2*l+1, the positions the quantizers measure distances in."""
        return (2 * self.levels.astype(np.float32) + 1)


# grid name -> (gguf class holding the points, neighbour distance classes ggml keeps)
_SOURCES = {
    "iq2xxs": (gq.IQ2_XXS, 2), "iq2xs": (gq.IQ2_XS, 2), "iq2s": (gq.IQ2_S, 1), "iq1s": (gq.IQ1_S, 3),
    "iq3xxs": (gq.IQ3_XXS, 2), "iq3s": (gq.IQ3_S, 3),
}
# the grid each type quantizes on (IQ1_M shares IQ1_S's; IQ3_XXS's neighbours differ from IQ3_S's)
TYPE_GRID = {T.IQ2_XXS: "iq2xxs", T.IQ2_XS: "iq2xs", T.IQ2_S: "iq2s", T.IQ1_S: "iq1s", T.IQ1_M: "iq1s",
             T.IQ3_XXS: "iq3xxs", T.IQ3_S: "iq3s"}


def grid_levels(name: str) -> np.ndarray:
    """uint8[n, dim] levels of a grid, decoded from gguf's grid and its value map."""
    cls, _ = _SOURCES[name]
    cls.init_grid()
    values = np.asarray(cls.grid, dtype=np.float32).reshape(cls.grid_shape)
    vmap = np.asarray(cls.grid_map, dtype=np.float32)
    lv = np.searchsorted(vmap, values)
    assert np.array_equal(vmap[lv], values), name
    return lv.astype(np.uint8)


def _keys(levels: np.ndarray, bits: int) -> np.ndarray:
    shifts = (bits * np.arange(levels.shape[1])).astype(np.int64)
    return (levels.astype(np.int64) << shifts).sum(axis=1)


@functools.cache
def grid(name: str) -> Grid:
    """The grid ``name`` with its key map and neighbour lists (built once)."""
    levels = grid_levels(name)
    n, dim = levels.shape
    bits = 2 if dim == 8 else 3
    nwant = _SOURCES[name][1]
    keys = _keys(levels, bits)
    n_keys = 43692 if dim == 8 else 4096  # ggml's kmap sizes: every key of levels 0..2 (8 coords) or 0..7 (4)
    key_to_index = np.full(n_keys, -1, dtype=np.int32)
    key_to_index[keys] = np.arange(n, dtype=np.int32)
    off = np.flatnonzero(key_to_index < 0)
    pos_g = 2 * levels.astype(np.float32) + 1
    norm_g = (pos_g * pos_g).sum(axis=1)
    big = np.float32(1 << 30)
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for a in range(0, off.size, 4096):
        u = off[a:a + 4096]
        p = 2 * ((u[:, None] >> (bits * np.arange(dim))[None, :]) & ((1 << bits) - 1)).astype(np.float32) + 1
        d2 = (p * p).sum(axis=1)[:, None] + norm_g[None, :] - 2 * (p @ pos_g.T)  # small integers: exact
        thr = d2.min(axis=1)
        for _ in range(nwant - 1):
            thr = np.where(d2 > thr[:, None], d2, big).min(axis=1)
        take = d2 <= thr[:, None]
        count = take.sum(axis=1)
        width = int(count.max())
        sort_key = np.where(take, d2 * n + np.arange(n, dtype=np.float32)[None, :], big)  # (distance, index)
        part = np.sort(np.partition(sort_key, width - 1, axis=1)[:, :width], axis=1)
        idx = np.where(part < big, np.fmod(part, n), -1).astype(np.int16)
        rows.append((count, idx))
    width = max(idx.shape[1] for _, idx in rows)
    nb_row = np.full(n_keys, -1, dtype=np.int32)
    nb_row[off] = np.arange(off.size, dtype=np.int32)
    nb_index = np.full((off.size, width), -1, dtype=np.int16)
    nb_count = np.zeros(off.size, dtype=np.int32)
    for a, (count, idx) in zip(range(0, off.size, 4096), rows):
        nb_index[a:a + idx.shape[0], :idx.shape[1]] = idx
        nb_count[a:a + idx.shape[0]] = count
    return Grid(name, levels, bits, key_to_index, nb_row, nb_index, nb_count)


# ---- the C header ---------------------------------------------------------------------------------

def c_header() -> str:
    """Text of ``kernels/iq_grids.h``: each grid's points as keys (uint16, ``bits`` per level) and the
    value of each level in the dequantized format (gguf's ``grid_map``)."""
    out = ["/* The i-quant grids as keys (level l of coordinate k at bits*k), written by",
           " * `python -m slimedge.quant.iq_grids > kernels/iq_grids.h` from the gguf package's grids",
           " * (format definitions). Do not edit; tests/quant/test_iquants.py checks it is current. */",
           "#ifndef SE_IQ_GRIDS_H", "#define SE_IQ_GRIDS_H", "#include <stdint.h>"]
    for name in _SOURCES:
        lv = grid_levels(name)
        keys = _keys(lv, 2 if lv.shape[1] == 8 else 3)
        out.append(f"static const uint16_t se_kgrid_{name}[{len(keys)}] = {{")
        for i in range(0, len(keys), 16):
            out.append("    " + ", ".join(str(int(k)) for k in keys[i:i + 16]) + ",")
        out.append("};")
        vmap = ", ".join(str(int(v)) for v in _SOURCES[name][0].grid_map)
        out.append(f"static const int8_t se_gval_{name}[{len(_SOURCES[name][0].grid_map)}] = {{{vmap}}};")
    out.append("#endif")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(c_header())
