"""Perplexity and KL divergence follow llama.cpp's method: recomputed here from the same llama.cpp logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slimedge.bench import run_bench
from slimedge.bench.quality import Logprobs, compare, perplexity
from slimedge.errors import SlimedgeError

pytestmark = pytest.mark.slow  # runs llama.cpp over texts in child processes

N_CTX, CHUNKS = 128, 3


def raw_logits(path, text_file, n_ctx=N_CTX, chunks=CHUNKS):
    """llama.cpp's own logits for each chunk (BOS first), straight from llama_cpp, plus the chunk tokens.

    Opened with the attention setting bench uses by default (llama.cpp's flash attention ``auto``).
    """
    from slimedge.bench.child import _open

    llm = _open({"model": str(path), "n_ctx": n_ctx, "n_batch": n_ctx, "n_ubatch": n_ctx, "n_threads": 2,
                 "n_gpu_layers": 0, "flash_attn": "auto"}, logits_all=True)
    try:
        toks = llm.tokenize(text_file.read_text().encode(), add_bos=True)
        out = []
        for c in range(chunks):
            chunk = toks[c * n_ctx:(c + 1) * n_ctx]
            llm.reset()
            llm.eval([llm.token_bos()] + chunk[1:])
            out.append((np.array(llm.scores[:n_ctx], dtype=np.float64), np.array(chunk)))
        return out
    finally:
        llm.close()


def log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def test_ppl_kl_top1_match_an_independent_numpy_computation(ggufs, text_file):
    rec = run_bench(ggufs["Q4_K_M"], ref=ggufs["F32"], text=text_file, n_ctx=N_CTX, max_chunks=CHUNKS,
                    n_threads=2, n_batch=N_CTX, speed=False)
    first = N_CTX // 2
    nll, nll_ref, kl, same = [], [], [], []
    for (lq, toks), (lp, toks_ref) in zip(raw_logits(ggufs["Q4_K_M"], text_file), raw_logits(ggufs["F32"], text_file)):
        assert np.array_equal(toks, toks_ref)
        q, p = log_softmax(lq[first:N_CTX - 1]), log_softmax(lp[first:N_CTX - 1])  # positions predicting first+1..
        target = toks[first + 1:]
        nll.append(-q[np.arange(len(target)), target])
        nll_ref.append(-p[np.arange(len(target)), target])
        kl.append((np.exp(p) * (p - q)).sum(-1))
        same.append(p.argmax(-1) == q.argmax(-1))
    ppl, ppl_ref = math.exp(np.concatenate(nll).mean()), math.exp(np.concatenate(nll_ref).mean())
    assert len(np.concatenate(nll)) == CHUNKS * (N_CTX - 1 - first)
    assert rec["perplexity"] == pytest.approx(ppl, rel=1e-5)
    assert rec["ref_perplexity"] == pytest.approx(ppl_ref, rel=1e-5)
    assert rec["delta_ppl"] == pytest.approx(ppl - ppl_ref, rel=1e-3, abs=1e-4)
    assert rec["kld_mean"] == pytest.approx(np.concatenate(kl).mean(), rel=1e-3, abs=1e-6)
    assert rec["top1_agreement"] == pytest.approx(np.concatenate(same).mean())
    assert rec["n_chunks"] == CHUNKS and rec["kld_mean"] > 0 and 0 < rec["top1_agreement"] < 1


def test_hf_reference_is_converted_and_matches_itself(ggufs, hf_model, text_file):
    rec = run_bench(ggufs["F32"], ref=hf_model, text=text_file, n_ctx=N_CTX, max_chunks=2, n_threads=2,
                    n_batch=N_CTX, speed=False)
    assert rec["kld_mean"] == pytest.approx(0.0, abs=1e-6)
    assert rec["top1_agreement"] == 1.0 and rec["delta_ppl"] == pytest.approx(0.0, abs=1e-4)


def test_text_shorter_than_one_context(ggufs, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x + 1\n")
    with pytest.raises(SlimedgeError, match=r"short.txt: tokenizes to \d+ tokens, fewer than one context of 512"):
        run_bench(ggufs["Q4_K_M"], text=short, n_ctx=512, speed=False)
    with pytest.raises(SlimedgeError, match="--ref needs --text"):
        run_bench(ggufs["Q4_K_M"], ref=ggufs["F32"], speed=False)


def test_quality_math_on_known_distributions():
    n_chunks, n_ctx, n_vocab = 2, 8, 5
    first = n_ctx // 2
    toks = np.arange(n_chunks * n_ctx).reshape(n_chunks, n_ctx) % n_vocab
    uniform = np.full((n_chunks, n_ctx - 1 - first, n_vocab), -math.log(n_vocab), dtype=np.float32)
    lp = Logprobs(uniform, toks[:, first + 1:], toks, n_ctx, n_chunks * n_ctx)
    assert perplexity(lp)[0] == pytest.approx(n_vocab)  # a uniform model's perplexity is the vocabulary size
    peaked = np.log(np.full_like(uniform, 0.1))
    peaked[..., 2] = np.log(0.6)
    cmp = compare(Logprobs(peaked.astype(np.float32), lp.targets, toks, n_ctx, lp.n_tokens), lp)
    # KL(uniform || peaked) = sum 0.2 * log(0.2 / q)
    want = 4 * 0.2 * math.log(0.2 / 0.1) + 0.2 * math.log(0.2 / 0.6)
    assert cmp["kld_mean"] == pytest.approx(want, rel=1e-5)
    assert cmp["top1_agreement"] == 0.0  # argmax of the uniform rows is 0, of the peaked ones 2
    other = toks.copy()
    other[0, 0] += 1
    with pytest.raises(SlimedgeError, match="tokenize the text differently"):
        compare(lp, Logprobs(uniform, other[:, first + 1:], other, n_ctx, lp.n_tokens))
