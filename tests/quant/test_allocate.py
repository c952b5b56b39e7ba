"""The auto-mix allocator (slimedge.quant.allocate): budget respected to the byte, optimal on small cases,
fallbacks, spec/metadata round trip; and (slow) a real auto mix of the trained demo teacher beats the
same-size llama.cpp mix on KL divergence measured through llama.cpp."""

import itertools
import random

import pytest

from slimedge.errors import SlimedgeError
from slimedge.quant.allocate import (Candidate, Item, allocate, budget_bytes, candidate_types, parse_size,
                                     quantizable, solve)


def _items(seed: int, n: int = 6) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for k in range(n):
        size = rng.choice([256, 512, 1024]) * rng.randint(1, 8)
        sens = rng.uniform(0.01, 1.0)
        cands = []
        for bits, err in ((2.625, 1.0), (3.4375, 0.35), (4.5, 0.1), (5.5, 0.03), (6.5625, 0.01), (8.5, 0.001)):
            cands.append(Candidate(f"T{bits}", int(size * bits / 8), sens * err * rng.uniform(0.8, 1.2)))
        items.append(Item(f"t{k}", size, cands))
    return items


def _brute(items: list[Item], budget: int) -> float:
    best = float("inf")
    for combo in itertools.product(*[range(len(it.candidates)) for it in items]):
        size = sum(it.candidates[j].nbytes for it, j in zip(items, combo))
        if size <= budget:
            best = min(best, sum(it.candidates[j].cost for it, j in zip(items, combo)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_solve_fits_budget_and_matches_brute_force(seed):
    items = _items(seed, n=5)
    lo = sum(min(c.nbytes for c in it.candidates) for it in items)
    hi = sum(max(c.nbytes for c in it.candidates) for it in items)
    for frac in (0.1, 0.35, 0.6, 0.9):
        budget = int(lo + frac * (hi - lo))
        choice = solve(items, budget)
        size = sum(it.candidates[j].nbytes for it, j in zip(items, choice))
        cost = sum(it.candidates[j].cost for it, j in zip(items, choice))
        assert size <= budget
        assert cost <= _brute(items, budget) * (1 + 1e-9) + 1e-12


def test_no_single_change_that_fits_would_lower_the_cost():
    items = _items(42, n=40)
    lo = sum(min(c.nbytes for c in it.candidates) for it in items)
    budget = lo + 12345
    choice = solve(items, budget)
    used = sum(it.candidates[j].nbytes for it, j in zip(items, choice))
    assert used <= budget
    for it, j in zip(items, choice):
        cur = it.candidates[j]
        for c in it.candidates:
            if c.cost < cur.cost:
                assert used - cur.nbytes + c.nbytes > budget, (it.name, cur.type, c.type)


def test_budget_below_smallest_is_a_user_error():
    items = _items(1)
    lo = sum(min(c.nbytes for c in it.candidates) for it in items)
    with pytest.raises(SlimedgeError, match="smallest auto mix"):
        solve(items, lo - 1)


def test_candidate_fallbacks():
    kq = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
    assert candidate_types("blk.0.ffn_down.weight", (256, 512), kq) == list(kq)
    # rows of 96: no k-quant block fits -> the legacy fallbacks, deduplicated
    assert candidate_types("blk.0.ffn_down.weight", (64, 96), kq) == ["Q4_0", "Q5_0", "Q5_1", "Q8_0"]


def test_parse_size():
    assert parse_size("3.5MB") == 3_500_000
    assert parse_size("2MiB") == 2 << 20
    assert parse_size("1234") == 1234
    with pytest.raises(SlimedgeError, match="--target-size"):
        parse_size("lots")


def test_allocate_plan_exact_budget_and_spec(hf_model, tmp_path):
    """On a real plan: the written file's tensor bytes are the allocation's, within the budget; the
    override spec gives exactly the allocated types; slimedge.mix.* metadata is in the file."""
    from slimedge.convert import convert, plan
    from slimedge.gguf_info import read_info
    from slimedge.quant.mixes import QuantSpec

    p = plan(hf_model)
    rng = random.Random(0)
    costs = {t.name: {q: rng.uniform(0.5, 1.5) / (i + 1) ** 2 for i, q in enumerate(candidate_types(t.name, t.shape))}
             for t in quantizable(p)}
    budget, how = budget_bytes(lambda mix: plan(hf_model, QuantSpec(mix)), target_size="Q4_K_M")
    assert budget == plan(hf_model, QuantSpec("Q4_K_M")).total_bytes
    a = allocate(p, costs, budget, target=how)
    assert a.total_bytes <= budget
    out = convert(hf_model, tmp_path / "auto.gguf", a.spec())
    assert out.plan.total_bytes == a.total_bytes
    got = {t.name: t.qtype.name for t in out.plan.tensors}
    assert all(got[n] == q for n, q in a.types.items())
    info = read_info(tmp_path / "auto.gguf")
    assert info.total_tensor_bytes == a.total_bytes
    assert info.metadata["slimedge.mix.target"] == "size of Q4_K_M"
    assert info.metadata["slimedge.mix.tensor_bytes"] == a.total_bytes
    b, _ = budget_bytes(lambda mix: plan(hf_model, QuantSpec(mix)), target_bpw=4.0)
    assert allocate(p, costs, b).bits_per_weight <= 4.0


@pytest.mark.slow
def test_auto_mix_beats_same_size_standard_mix_on_demo_teacher(tmp_path):
    """The trained demo teacher, a short calibration text (train split) and a short held-out text: the auto
    mix at Q3_K_M's size has lower KL vs F16 (through llama.cpp) than Q3_K_M, and is no larger."""
    from slimedge.bench import run_bench
    from slimedge.calib.sensitivity import auto_allocation
    from slimedge.convert import convert
    from slimedge.demo import corpus
    from slimedge.demo.pipeline import shipped_teacher
    from slimedge.quant.mixes import QuantSpec

    teacher = shipped_teacher()
    held = tmp_path / "held.txt"
    held.write_text(corpus.heldout_text()[:8000])
    a = auto_allocation(teacher, corpus.train_text()[:20000], target_size="Q3_K_M", ctx=128, chunks=2,
                        types=("Q2_K", "Q3_K", "Q4_K", "Q6_K"))
    f16 = convert(teacher, tmp_path / "f16.gguf", QuantSpec("F16")).out
    std = convert(teacher, tmp_path / "q3km.gguf", QuantSpec("Q3_K_M"))
    auto = convert(teacher, tmp_path / "auto.gguf", a.spec())
    assert auto.plan.total_bytes <= std.plan.total_bytes
    kl = {}
    for name, r in (("std", std), ("auto", auto)):
        b = run_bench(r.out, ref=f16, text=held, n_ctx=128, n_threads=1, speed=False)
        kl[name] = b["kld_mean"]
    assert kl["auto"] < kl["std"], kl
