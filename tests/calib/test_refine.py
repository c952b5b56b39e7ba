"""Refining a proxy-priced auto mix (slimedge.calib.refine): the neighbourhood that decides a choice, the exact
re-measurements (equal to the whole forward's KL, capped, cached for another budget) and the allocation they
lead to, against the exhaustive reference on a tiny Llama."""

import pytest

from slimedge.calib import refine as R
from slimedge.calib import sensitivity as S
from slimedge.convert import plan
from slimedge.quant.allocate import Sensitivity, allocate, candidate_types, quantizable

TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q6_K", "Q8_0")


def test_neighbourhood_is_the_choice_and_the_best_type_one_size_either_side():
    nbytes = {"A": 10, "B": 20, "C": 20, "D": 30, "E": 40}
    prices = {"A": 9.0, "B": 5.0, "C": 4.0, "D": 3.0, "E": 1.0}
    assert R.neighbourhood(prices, nbytes, "C") == ["C", "A", "D"]
    assert R.neighbourhood(prices, nbytes, "D") == ["D", "C", "E"]  # C is priced below B at the same size
    assert R.neighbourhood(prices, nbytes, "A") == ["A", "C"]  # the smallest: one side only
    assert R.neighbourhood(prices, nbytes, "E") == ["E", "D"]


def test_default_runs_grow_with_tensor_kinds_not_depth():
    small = ["token_embd.weight", "output.weight"] + [f"blk.{i}.{k}.weight" for i in range(4) for k in "qkv"]
    deep = ["token_embd.weight", "output.weight"] + [f"blk.{i}.{k}.weight" for i in range(40) for k in "qkv"]
    assert R.default_runs(small) == R.default_runs(deep) == R.RUNS_PER_CALIBRATION * (3 * 3 + 2)


def _oracle_refine(per, costs, exact, p, budget, runs):
    """Refine ``costs`` (proxy prices) with ``exact`` as the exact measurement; the asked pairs are recorded."""
    from gguf import GGMLQuantizationType as T

    from slimedge.quant.types import tensor_nbytes

    shapes = {t.name: t.shape for t in p.tensors}
    nbytes = {n: {q: tensor_nbytes(shapes[n], T[q]) for q in c} for n, c in per.items()}
    s = Sensitivity(costs={n: dict(c) for n, c in costs.items()}, method="proxy")
    asked = []

    def measure_exact(ask):
        asked.extend((n, q) for n, qs in ask.items() for q in qs)
        return {n: {q: exact[n][q] for q in qs} for n, qs in ask.items()}

    def again(c):
        return allocate(p, c, budget, types=TYPES)

    alloc, used = R.refine(again(s.costs), s, again, measure_exact, nbytes, runs)
    return alloc, s, asked, nbytes, used


@pytest.mark.slow
def test_refined_mix_is_priced_exactly_where_it_chooses_and_is_no_worse(hf_model, text_file):
    """With the exhaustive prices as the exact measurement: every chosen type and its neighbours end exact,
    no pair is measured twice, the cap holds, and the refined mix's true cost is at most the proxy mix's."""
    text = text_file.read_text()
    p = plan(hf_model)
    per = {t.name: candidate_types(t.name, t.shape, TYPES) for t in quantizable(p)}
    m = {k: S.measure(hf_model, per, text, ctx=64, chunks=4, threads=1, method=k).costs
         for k in ("exhaustive", "proxy")}
    total = sum(t.nbytes for t in p.tensors)
    for frac in (0.30, 0.40):
        budget = int(total * frac)
        proxy = allocate(p, m["proxy"], budget, types=TYPES)
        refined, s, asked, nbytes, used = _oracle_refine(per, m["proxy"], m["exhaustive"], p, budget, runs=10_000)
        assert len(asked) == len(set(asked)) == used and refined.total_bytes <= budget
        prices = {n: {**c, **s.exact.get(n, {})} for n, c in m["proxy"].items()}
        exact = {n: set(c) for n, c in s.exact.items()}
        assert R.wanted(refined, prices, exact, nbytes) == []  # every choice and its neighbours priced exactly
        assert s.costs == m["proxy"]  # the proxy's prices are kept as they were
        true = [sum(m["exhaustive"][n][q] for n, q in a.types.items()) for a in (proxy, refined)]
        assert true[1] <= true[0] * 1.001, (frac, true)
        _, _, asked, _, _ = _oracle_refine(per, m["proxy"], m["exhaustive"], p, budget, runs=5)
        assert len(asked) == 5


def test_auto_allocation_refines_exactly_capped_and_cached(hf_model, text_file, tmp_path, monkeypatch):
    """Through auto_allocation: the exact re-measurements are partial forwards equal to the whole forward's KL,
    at most ``refine`` of them; the cache keeps them, so the same call again measures nothing and gives the same
    mix, and another budget measures only pairs not measured before; refine=0 measures none."""
    text = text_file.read_text()
    cache = tmp_path / "sens.json"
    calls = []
    real = S.measure

    def spy(src, types, *a, **kw):
        calls.append((kw.get("method"), [(n, q) for n, c in types.items() for q in c]))
        return real(src, types, *a, **kw)

    monkeypatch.setattr(S, "measure", spy)
    kw = dict(ctx=64, chunks=2, cache=cache, threads=1, types=("Q2_K", "Q4_K", "Q8_0"))
    a = S.auto_allocation(hf_model, text, target_bpw=4.5, refine=6, **kw)
    exact = [p for m, c in calls if m == "exact" for p in c]
    assert calls[0][0] == "proxy" and 0 < len(exact) <= 6 and len(set(exact)) == len(exact)
    saved = Sensitivity.load(cache)
    assert sorted(exact) == sorted((n, q) for n, c in saved.exact.items() for q in c)
    assert a.metadata()["slimedge.mix.refined"] == len(exact)
    n, q = exact[0]
    whole = real(hf_model, {n: [q]}, text, ctx=64, chunks=2, threads=1, method="exhaustive").costs[n][q]
    assert saved.exact[n][q] == pytest.approx(whole, rel=2e-3)
    before = len(calls)
    again = S.auto_allocation(hf_model, text, target_bpw=4.5, refine=6, **kw)
    assert len(calls) == before and again.types == a.types  # replayed from the cache
    S.auto_allocation(hf_model, text, target_bpw=3.5, refine=6, **kw)
    more = [p for m, c in calls[before:] for p in c]
    assert all(m == "exact" for m, _ in calls[before:]) and not set(more) & set(exact)  # only new pairs
    before = len(calls)
    S.auto_allocation(hf_model, text, target_bpw=4.5, refine=0, cache=tmp_path / "other.json",
                      **{k: v for k, v in kw.items() if k != "cache"})
    assert [m for m, _ in calls[before:]] == ["proxy"]
