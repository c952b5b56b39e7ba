"""Quality-driven mixes: choose each tensor's GGML type to minimise output divergence under a size budget.

Input: for every quantizable tensor a few candidate types, each with its size in bytes (from
:func:`slimedge.quant.types.tensor_nbytes`) and a *cost* — the measured
increase in the model's output KL divergence when that tensor alone is quantized to that type
(:mod:`slimedge.calib.sensitivity` measures it; this module needs no torch). Output: one type per
tensor whose total size is at most the budget (the tensors that are never quantized count too), and
whose summed cost is as small as the solver can make it.

How (a multiple-choice knapsack, costs taken as additive):

1. **Dynamic programme** over the budget cut into at most ``DP_UNITS`` units; every candidate's size
   is rounded *up* to whole units, so any solution of the programme fits the real budget.
2. **Greedy fill** of what the rounding left: repeatedly take the single-tensor change with the largest
   cost reduction that still fits (in real bytes), until none does. So the result is within the budget
   to the byte, and no one-tensor change that fits would lower the cost.

Candidates follow the block-size fallbacks of :func:`slimedge.quant.mixes.fallback` (a row length that
is not a multiple of 256 turns Q4_K into Q5_0, ...), so every type here is one the writer accepts.

The chosen types become per-tensor ``--tensor-type`` overrides (:meth:`Allocation.spec`): the plan and
the converter use the existing override machinery, and the file is plain standard GGUF. The allocation
is recorded in the file's metadata under ``slimedge.mix.*`` (keys llama.cpp ignores).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlimedgeError

log = logging.getLogger(__name__)

# the k-quants and Q8_0: the candidates of earlier releases (and of the bundles' profiles)
KQUANT_CANDIDATES: tuple[str, ...] = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
# every quantized type slimedge writes and llama.cpp runs, smallest first (bits per weight): what an auto mix
# chooses from. Left out: the ternary TQ1_0/TQ2_0 and Q1_0/Q2_0 (for models trained for them) and NVFP4.
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K", "IQ3_XXS", "IQ3_S", "Q3_K", "IQ4_XS", "MXFP4",
    "Q4_0", "IQ4_NL", "Q4_K", "Q4_1", "Q5_0", "Q5_K", "Q5_1", "Q6_K", "Q8_0")
DP_UNITS = 20_000  # budget resolution of the dynamic programme (the greedy fill then works in bytes)
MIX_PREFIX = "slimedge.mix."  # GGUF metadata keys of an auto mix


@dataclass
class Candidate:
    type: str  # GGML type name, e.g. "Q4_K"
    nbytes: int  # size of the tensor in this type
    cost: float = 0.0  # measured increase of output KL divergence (nats/token) with this tensor alone quantized


@dataclass
class Item:
    """One quantizable tensor and its candidate types (distinct, after block-size fallbacks)."""

    name: str
    n_params: int
    candidates: list[Candidate]


@dataclass
class Allocation:
    """The chosen type of every quantizable tensor, and what the choice is estimated to cost."""

    types: dict[str, str]  # GGUF tensor name -> GGML type name
    budget: int  # the budget in bytes of tensor data (all tensors)
    total_bytes: int  # tensor data of the whole file with these types (<= budget)
    n_params: int  # all tensors
    est_kl: float  # sum of the chosen candidates' costs (additive estimate of the mix's KL)
    target: str = ""  # how the budget was stated, e.g. "bpw 4.5" or "size Q4_K_M"
    base_mix: str = "Q4_K_M"  # a llama mix name for general.file_type (the dominant type's)
    extra: dict = field(default_factory=dict)  # recorded as slimedge.mix.<key>

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.total_bytes / max(self.n_params, 1)

    def spec(self, **kw):
        """A :class:`~slimedge.quant.mixes.QuantSpec` that writes exactly these types (one anchored
        override per tensor), with the allocation recorded in ``metadata``."""
        from .mixes import QuantSpec

        overrides = [(f"^{re.escape(n)}$", t) for n, t in self.types.items()]
        return QuantSpec(ftype=self.base_mix, overrides=overrides, metadata=self.metadata(), **kw)

    def metadata(self) -> dict[str, object]:
        """``slimedge.mix.*`` keys: the target, the budget, the estimated KL and the type counts."""
        counts: dict[str, int] = {}
        for t in self.types.values():
            counts[t] = counts.get(t, 0) + 1
        md: dict[str, object] = {
            MIX_PREFIX + "method": "sensitivity-knapsack",
            MIX_PREFIX + "target": self.target,
            MIX_PREFIX + "budget_bytes": int(self.budget),
            MIX_PREFIX + "tensor_bytes": int(self.total_bytes),
            MIX_PREFIX + "bpw": round(self.bits_per_weight, 4),
            MIX_PREFIX + "kl_estimate": float(self.est_kl),
            MIX_PREFIX + "types": ",".join(f"{k}={v}" for k, v in sorted(counts.items())),
        }
        for k, v in self.extra.items():
            md[MIX_PREFIX + k] = v
        return md

    def table(self) -> str:
        """One line per tensor (type, estimated cost), then the totals."""
        w = max((len(n) for n in self.types), default=6)
        lines = [f"{'tensor':<{w}}  type"]
        lines += [f"{n:<{w}}  {t}" for n, t in self.types.items()]
        lines.append(f"auto mix ({self.target}): {self.total_bytes / 1e6:.3f} MB of tensor data "
                     f"(budget {self.budget / 1e6:.3f} MB), {self.bits_per_weight:.3f} bits per weight, "
                     f"estimated KL {self.est_kl:.5f}")
        return "\n".join(lines)


def solve(items: list[Item], budget: int) -> list[int]:
    """Index of the chosen candidate of each item: total bytes <= ``budget``, summed cost minimal
    (see the module docstring). Refuses a budget below the smallest choice with the numbers."""
    import numpy as np

    if not items:
        return []
    smallest = sum(min(c.nbytes for c in it.candidates) for it in items)
    if smallest > budget:
        raise SlimedgeError(f"size budget {budget} bytes is below the smallest auto mix ({smallest} bytes of "
                            f"quantizable tensors with the smallest candidate types); raise --target-bpw / "
                            f"--target-size or add smaller candidate types")
    unit = max(1, -(-budget // DP_UNITS))
    n_units = budget // unit
    inf = float("inf")
    best = np.zeros(n_units + 1)  # best[u]: least cost of the items so far within u units
    picks = np.empty((len(items), n_units + 1), dtype=np.int16)
    for k, it in enumerate(items):
        new = np.full(n_units + 1, inf)
        pick = np.zeros(n_units + 1, dtype=np.int16)
        for j, c in enumerate(it.candidates):
            w = -(-c.nbytes // unit)
            if w > n_units:
                continue
            cand = np.full(n_units + 1, inf)
            cand[w:] = best[: n_units + 1 - w] + c.cost
            better = cand < new
            new[better] = cand[better]
            pick[better] = j
        best, picks[k] = new, pick
    u = int(np.argmin(best))
    if not np.isfinite(best[u]):  # the rounding made it infeasible: start from the smallest types
        choice = [min(range(len(it.candidates)), key=lambda j: it.candidates[j].nbytes) for it in items]
    else:
        choice = [0] * len(items)
        for k in range(len(items) - 1, -1, -1):
            j = int(picks[k, u])
            choice[k] = j
            u -= -(-items[k].candidates[j].nbytes // unit)
    return _greedy_fill(items, choice, budget)


def _greedy_fill(items: list[Item], choice: list[int], budget: int) -> list[int]:
    """Take single-tensor changes that lower the cost and fit the budget, best reduction first."""
    used = sum(it.candidates[j].nbytes for it, j in zip(items, choice))
    while True:
        best = None
        for k, it in enumerate(items):
            cur = it.candidates[choice[k]]
            for j, c in enumerate(it.candidates):
                gain = cur.cost - c.cost
                if gain > 0 and used - cur.nbytes + c.nbytes <= budget and (best is None or gain > best[0]):
                    best = (gain, k, j)
        if best is None:
            return choice
        _, k, j = best
        used += items[k].candidates[j].nbytes - items[k].candidates[choice[k]].nbytes
        choice[k] = j


def dominant_mix(types: dict[str, str], sizes: dict[str, int]) -> str:
    """The llama mix named after the type holding most bytes (for ``general.file_type``)."""
    by: dict[str, int] = {}
    for n, t in types.items():
        by[t] = by.get(t, 0) + sizes.get(n, 0)
    top = max(by, key=by.get) if by else "Q4_K"
    return {"Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K",
            "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "IQ1_S": "IQ1_S",
            "IQ1_M": "IQ1_M", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_S", "IQ3_XXS": "IQ3_XXS",
            "IQ3_S": "IQ3_S", "IQ4_XS": "IQ4_XS", "IQ4_NL": "IQ4_NL", "MXFP4": "MXFP4_MOE"}.get(top, "Q4_K_M")


def candidate_types(name: str, shape: tuple[int, ...], types=DEFAULT_CANDIDATES, *,
                    has_imatrix: bool = False) -> list[str]:
    """The distinct types ``types`` become for this tensor after block-size fallbacks, in order; without an
    importance matrix, the types llama.cpp refuses to quantize this tensor to without one are left out."""
    from gguf import GGMLQuantizationType as T

    from .mixes import QuantSpec, fallback, requires_imatrix
    from .types import REQUIRES_IMATRIX

    spec = QuantSpec("Q8_0")
    out: list[str] = []
    for t in types:
        q = fallback(name, shape[-1], T[t.upper()])
        if not has_imatrix and (q in REQUIRES_IMATRIX or requires_imatrix(name, q, spec)):
            continue
        if q.name not in out:
            out.append(q.name)
    return out


def quantizable(plan) -> list:
    """The plan's tensors an auto mix chooses a type for (those llama-quantize quantizes)."""
    from .mixes import TensorSpec, allows_quantization

    return [t for t in plan.tensors if allows_quantization(TensorSpec(t.name, t.shape), plan.arch)]


def allocate(plan, costs: dict[str, dict[str, float]], budget: int, *, target: str = "",
             types=DEFAULT_CANDIDATES, extra: dict | None = None, has_imatrix=False) -> Allocation:
    """Choose a type for every quantizable tensor of ``plan`` (a :class:`slimedge.convert.Plan`; only its
    names, shapes and the sizes of the other tensors are used) within ``budget`` bytes of tensor data.

    ``costs``: tensor -> type -> measured KL increase (:class:`Sensitivity`); a tensor or type without a
    cost is an error naming it (measure with the same candidate types). ``has_imatrix``: the file is written
    with an importance matrix (so the types that need one are candidates too): True, or the names of the
    tensors it covers."""
    from gguf import GGMLQuantizationType as T

    from .types import tensor_nbytes

    qt = quantizable(plan)
    qnames = {t.name for t in qt}
    fixed = sum(t.nbytes for t in plan.tensors if t.name not in qnames)
    items: list[Item] = []
    for t in qt:
        have = costs.get(t.name)
        if have is None:
            raise SlimedgeError(f"{t.name}: no sensitivity measured for this tensor; measure again for this model")
        cands = []
        hi = has_imatrix if isinstance(has_imatrix, bool) else t.name in has_imatrix
        for q in candidate_types(t.name, t.shape, types, has_imatrix=hi):
            if q not in have:
                raise SlimedgeError(f"{t.name}: no sensitivity measured for type {q}; measure again with "
                                    f"candidate types {','.join(types)}")
            cands.append(Candidate(q, tensor_nbytes(t.shape, T[q]), float(have[q])))
        items.append(Item(t.name, t.n_params, cands))
    choice = solve(items, budget - fixed)
    types_out = {it.name: it.candidates[j].type for it, j in zip(items, choice)}
    total = fixed + sum(it.candidates[j].nbytes for it, j in zip(items, choice))
    est = sum(it.candidates[j].cost for it, j in zip(items, choice))
    sizes = {it.name: it.candidates[j].nbytes for it, j in zip(items, choice)}
    alloc = Allocation(types_out, budget, total, plan.n_params, est, target, dominant_mix(types_out, sizes),
                       dict(extra or {}))
    log.info("auto mix (%s): %d bytes of %d budget, estimated KL %.5f", target, total, budget, est)
    return alloc


# ---- budgets --------------------------------------------------------------------------------------

_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """``'3.48MB'`` / ``'2GiB'`` / ``'3480000'`` -> bytes (a SlimedgeError for anything else)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise SlimedgeError(f"--target-size {text!r}: expected a size such as 3.5MB, 700MiB, 2GB or a byte "
                            "count, or a llama.cpp mix name such as Q4_K_M (that mix's size for this model)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def budget_bytes(plan_of, *, target_bpw: float | None = None, target_size: str | int | None = None
                 ) -> tuple[int, str]:
    """(budget in bytes of tensor data, how it was stated). ``plan_of(mix)`` returns the plan of the model
    with a llama mix (used for its parameter count, and for ``target_size`` given as a mix name:
    that mix's size, i.e. the same size as llama.cpp's file)."""
    from .mixes import MIXES

    if (target_bpw is None) == (target_size is None):
        raise SlimedgeError("--type auto needs exactly one of --target-bpw B or --target-size SIZE")
    if target_bpw is not None:
        if not 1.0 <= float(target_bpw) <= 32.0:
            raise SlimedgeError(f"--target-bpw {target_bpw}: expected bits per weight between 1 and 32, e.g. 4.5")
        n = plan_of("F16").n_params
        return int(float(target_bpw) * n / 8), f"bpw {float(target_bpw):g}"
    if isinstance(target_size, str) and target_size.strip().upper() in MIXES:
        mix = target_size.strip().upper()
        return plan_of(mix).total_bytes, f"size of {mix}"
    size = target_size if isinstance(target_size, int) else parse_size(target_size)
    return int(size), f"size {size}"


# ---- the measured sensitivities (a JSON file, reusable across budgets) -----------------------------

@dataclass
class Sensitivity:
    """Measured cost of each (tensor, type): KL(unquantized || model with only that tensor quantized)."""

    costs: dict[str, dict[str, float]]  # tensor -> type -> mean KL, nats/token
    model: str = ""  # the source measured
    key: str = ""  # digest of everything the numbers depend on (model, text, imatrix, settings)
    n_tokens: int = 0  # calibration tokens scored
    imatrix: bool = False  # quantized with importance weights
    seconds: float = 0.0
    method: str = "exhaustive"  # how: exhaustive, layerwise or proxy (slimedge.calib.sensitivity)
    exact: dict[str, dict[str, float]] = field(default_factory=dict)  # proxy: exact prices (calib.refine)

    def save(self, path: str | Path) -> None:
        from ..publish import write_atomic

        write_atomic(Path(path), json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Sensitivity":
        try:
            d = json.loads(Path(path).read_text())
            return cls(**d)
        except (OSError, ValueError, TypeError) as exc:
            raise SlimedgeError(f"{path}: not a slimedge sensitivity file ({exc}); delete it to measure again") from None
