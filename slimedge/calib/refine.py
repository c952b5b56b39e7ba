"""Refine a proxy-priced auto mix with exact measurements where the allocation decides.

The proxy (:mod:`.sensitivity_fast`) prices every candidate type of a tensor from its output error and one
exact point; its errors matter only where the allocation makes its choices. So, after allocating on the
proxy's prices:

1. for every tensor, the chosen type and its neighbours by size (of each next smaller and next larger size,
   the type the current prices rank best) are the types whose prices decide the choice;
2. those still priced by the proxy are measured exactly (a partial forward from the tensor's block over the
   first ``sensitivity_fast.REFINE_BATCHES`` calibration batches, ``method="exact"``), the most costly tensors
   first, and replace the proxy's prices;
3. the budget is allocated again; repeat until every chosen neighbourhood is exact, ``ROUNDS`` rounds have
   run, or ``runs`` exact forwards are spent.

The default ``runs`` is ``RUNS_PER_CALIBRATION`` times the proxy's own exact calibration runs (one per kind of
block tensor at ``CALIB_DEPTHS`` depths, plus the tensors outside the blocks), so it grows with the number of
tensor kinds, not with depth. On the demo teacher it turns the proxy mix's KL from 1.10x / 1.14x of the
exhaustive mix's into 0.70-0.98x at both budgets over three Fisher samplings (docs/benchmarks.md).
The exact prices are kept in the sensitivity cache (``Sensitivity.exact``) beside the proxy's: the same call
again replays the same steps without measuring and gives the same mix, and another budget measures only the
pairs its own steps add.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from ..quant.allocate import Allocation, Sensitivity

log = logging.getLogger(__name__)

RUNS_PER_CALIBRATION = 4  # default exact re-measurements per exact calibration run of the proxy
ROUNDS = 6  # allocate, re-measure, allocate again: at most this many times
_BLK = re.compile(r"^blk\.\d+\.")


def default_runs(names) -> int:
    """``RUNS_PER_CALIBRATION`` x the proxy's calibration runs for these tensors (see the module docstring)."""
    from .sensitivity_fast import CALIB_DEPTHS

    kinds = {_BLK.sub("", n) for n in names if _BLK.match(n)}
    outside = sum(1 for n in names if not _BLK.match(n))
    return RUNS_PER_CALIBRATION * (len(kinds) * CALIB_DEPTHS + outside)


def neighbourhood(prices: dict[str, float], nbytes: dict[str, int], chosen: str) -> list[str]:
    """The chosen type and, of the next smaller and the next larger size, the type priced lowest."""
    sizes = sorted(set(nbytes.values()))
    at = sizes.index(nbytes[chosen])
    out = [chosen]
    for size in sizes[max(0, at - 1):at] + sizes[at + 1:at + 2]:
        out.append(min((q for q in prices if nbytes[q] == size), key=lambda q: (prices[q], q)))
    return out


def wanted(alloc: Allocation, prices: dict, exact: dict[str, set], nbytes: dict[str, dict[str, int]]
           ) -> list[tuple[str, str]]:
    """(tensor, type) pairs whose exact price could change the choice, most costly tensors first."""
    out = []
    for name, chosen in sorted(alloc.types.items(), key=lambda kv: (-prices[kv[0]][kv[1]], kv[0])):
        if name in nbytes:  # the others have no torch weight (every price 0): nothing to refine
            have = exact.get(name, set())
            out += [(name, q) for q in neighbourhood(prices[name], nbytes[name], chosen) if q not in have]
    return out


def refine(alloc: Allocation, s: Sensitivity, allocate_again: Callable[[dict], Allocation],
           measure_exact: Callable[[dict[str, list[str]]], dict[str, dict[str, float]]],
           nbytes: dict[str, dict[str, int]], runs: int) -> tuple[Allocation, int]:
    """Steps 1-3 of the module docstring -> (allocation, exact prices it used). ``s.costs`` (the proxy's prices)
    is left as it is; the exact prices go to ``s.exact``, and those already there are used without measuring,
    so the same call again replays the same steps for free and gives the same allocation. ``measure_exact``
    takes tensor -> types and returns their exact prices; ``nbytes``: tensor -> type -> bytes of the tensors
    the proxy priced."""
    prices = {n: dict(c) for n, c in s.costs.items()}
    used: dict[str, set] = {}
    spent = measured = 0
    for r in range(ROUNDS):
        todo = wanted(alloc, prices, used, nbytes)[:max(0, runs - spent)]
        if not todo:
            break
        ask: dict[str, list[str]] = {}
        for name, q in todo:
            if q not in s.exact.get(name, {}):
                ask.setdefault(name, []).append(q)
        n_ask = sum(map(len, ask.values()))
        if ask:
            for name, got in measure_exact(ask).items():
                s.exact.setdefault(name, {}).update({q: float(got[q]) for q in ask[name]})
        for name, q in todo:
            prices[name][q] = s.exact[name][q]
            used.setdefault(name, set()).add(q)
        spent, measured = spent + len(todo), measured + n_ask
        new = allocate_again(prices)
        log.info("refine round %d: %d exact prices (%d measured), %d tensors changed type", r + 1, len(todo),
                 n_ask, sum(new.types[n] != alloc.types[n] for n in alloc.types))
        alloc = new
    if spent:
        log.info("auto mix refined with %d exact prices (%d measured now, at most %d)", spent, measured, runs)
    return alloc, spent
