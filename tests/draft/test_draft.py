"""GGUFDraft through llama-cpp-python's draft-model hook: greedy output identical to plain decoding, the
draft's KV cache reused across calls, k adapting to acceptance, a foreign vocabulary named."""

from __future__ import annotations

import numpy as np
import pytest

from slimedge.bundle.draft import GGUFDraft, vocab_mismatch
from slimedge.convert import convert
from slimedge.quant.mixes import QuantSpec
from tests.factory import cached_hf_model

PROMPT = [1, 17, 42, 5, 99, 23, 64, 8, 31, 77, 12, 50]
N_GEN = 48


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft")
    target = cached_hf_model(arch="llama")
    small = cached_hf_model(arch="llama", num_hidden_layers=1, seed=3)  # same tokenizer, another model
    return {"target": convert(target, root / "t-f32.gguf", QuantSpec("F32")).out,
            "q8": convert(target, root / "t-q8.gguf", QuantSpec("Q8_0")).out,
            "small": convert(small, root / "s-q8.gguf", QuantSpec("Q8_0")).out}


def _target(path, draft=None):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, draft_model=draft)


def _greedy(llm, prompt=PROMPT, n=N_GEN) -> list[int]:
    out = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1):
        out.append(int(tok))
        if len(out) == n:
            break
    return out


@pytest.mark.slow
@pytest.mark.parametrize("which", ["q8", "small"])
def test_greedy_output_identical_and_cache_reused(ggufs, which):
    plain = _target(ggufs["target"])
    want = _greedy(plain)
    plain.close()
    draft = GGUFDraft(ggufs[which], n_ctx=256, n_threads=2, k=4, k_max=8)
    spec = _target(ggufs["target"], draft)
    try:
        got = _greedy(spec)
        assert got == want  # token for token
        st = draft.stats
        assert st.calls > 0 and st.proposed > 0
        # prefix reuse: the draft evaluates each context token about once plus its own proposals; without
        # reuse every call would re-evaluate the whole context (sum of the context lengths)
        assert st.evaluated <= len(PROMPT) + N_GEN + st.calls * draft.k_max
        assert st.evaluated < sum(len(PROMPT) + i for i in range(1, st.calls + 1)) / 2
        if which == "q8":  # the same weights at Q8_0 agree with F32 nearly always; k grows
            assert st.acceptance > 0.7 and draft.k > 4
            assert st.calls < N_GEN / 2  # fewer target steps than tokens
        # a second generation reuses the shared prompt prefix of the draft context
        before = st.evaluated
        again = _greedy(spec, PROMPT[:8] + [3, 4], n=8)
        assert again == _greedy(_target(ggufs["target"]), PROMPT[:8] + [3, 4], n=8)
        first_sync = len(PROMPT[:8] + [3, 4]) - 8
        assert st.evaluated - before <= first_sync + 8 + st.calls * draft.k_max
    finally:
        spec.close()
        draft.close()


def test_create_completion_same_text(ggufs):
    plain = _target(ggufs["target"])
    want = plain.create_completion("hello world", max_tokens=24, temperature=0.0)["choices"][0]["text"]
    plain.close()
    draft = GGUFDraft(ggufs["q8"], n_ctx=256, n_threads=2)
    spec = _target(ggufs["target"], draft)
    try:
        got = spec.create_completion("hello world", max_tokens=24, temperature=0.0)["choices"][0]["text"]
        assert got == want
    finally:
        spec.close()
        draft.close()


def test_k_adapts_to_acceptance():
    d = GGUFDraft.__new__(GGUFDraft)  # the bookkeeping alone, no model
    from slimedge.bundle.draft import DraftStats

    d.k, d.k_min, d.k_max, d.stats, d._skip, d._backoff = 4, 1, 8, DraftStats(), 0, 0
    ctx = np.array([1, 2, 3], dtype=np.intc)
    d._pending = (ctx, np.array([5, 6, 7, 8], dtype=np.intc))
    d._learn(np.array([1, 2, 3, 5, 6, 7, 8, 9], dtype=np.intc))  # all four kept, plus the target's own
    assert (d.k, d.stats.accepted, d.stats.proposed) == (6, 4, 4)
    d._pending = (ctx, np.array([5, 6, 7, 8, 9, 10], dtype=np.intc))
    d._learn(np.array([1, 2, 3, 5, 4], dtype=np.intc))  # one kept, then the target differed
    assert (d.k, d.stats.accepted, d.stats.proposed, d.stats.steps) == (2, 5, 10, 2)
    d._pending = (ctx, np.array([5], dtype=np.intc))
    d._learn(np.array([9, 9, 9, 9], dtype=np.intc))  # another generation: nothing learnt
    assert d.stats.steps == 2 and d._pending is None
    # misses at k_min: the draft sits out 1, then 2 target steps (proposing nothing), then tries again
    d.k, long = 1, np.arange(1, 40, dtype=np.intc)
    d._pending = (long[:3], np.array([7], dtype=np.intc))
    assert len(d(long[:5])) == 0 and d._backoff == 1 and d._skip == 0  # sat out this step
    d._pending = (long[:6], np.array([99], dtype=np.intc))
    d._learn(long[:8])
    assert (d._backoff, d._skip) == (2, 2)
    assert len(d(long[:9])) == 0 and len(d(long[:10])) == 0 and d._skip == 0
    d._pending = (long[:10], np.array([11], dtype=np.intc))
    d._learn(long[:12])  # kept: the back-off ends
    assert d._backoff == 0 and d.stats.accepted == 6


def test_vocab_mismatch_named(ggufs, tmp_path):
    import llama_cpp

    other = cached_hf_model(arch="qwen2")  # another tokenizer
    path = convert(other, tmp_path / "other.gguf", QuantSpec("Q8_0")).out
    kw = dict(n_ctx=64, n_threads=2, verbose=False)
    t = llama_cpp.Llama(model_path=str(ggufs["target"]), **kw)
    same = llama_cpp.Llama(model_path=str(ggufs["small"]), **kw)
    diff = llama_cpp.Llama(model_path=str(path), **kw)
    try:
        assert vocab_mismatch(t, same) is None
        assert "the target" in vocab_mismatch(t, diff)
    finally:
        for m in (t, same, diff):
            m.close()


def test_sampled_generation_runs_with_the_draft(ggufs):
    """At temperature > 0 the hook samples the target at every drafted position: generation runs to length,
    every token from the target's vocabulary, and the draft was consulted."""
    draft = GGUFDraft(ggufs["q8"], n_ctx=256, n_threads=2)
    spec = _target(ggufs["target"], draft)
    try:
        out = []
        for tok in spec.generate(PROMPT, temp=0.8, top_k=40):
            out.append(int(tok))
            if len(out) == 32:
                break
        assert len(out) == 32 and all(0 <= t < spec.n_vocab() for t in out)
        assert draft.stats.calls > 0 and draft.stats.proposed > 0
    finally:
        spec.close()
        draft.close()
