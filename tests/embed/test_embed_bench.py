"""``slimedge bench`` on embedding models: tokens/s at batch, cosine and nearest-neighbour agreement to --ref.

Slow: the tiny BERT embedder at F32, Q8_0 and Q4_0 against its own HF folder as --ref: F32 agrees to
cosine ≥ 0.9999 and 100% neighbours; quality falls with the bits (cos Q8_0 > cos Q4_0), as it would on a
real model. Fast: the comparison on vectors made by hand, the embedding check (same facts as the
launcher's) and the one-line refusal of --text for an embedder.
"""

from __future__ import annotations

import numpy as np
import pytest

from slimedge.bench.embed import ENCODER_ARCHS, compare, is_embedding
from slimedge.bench.runner import run_bench
from slimedge.bundle import launcher
from slimedge.convert import convert
from slimedge.errors import SlimedgeError
from slimedge.quant.mixes import QuantSpec
from tests.embed.embed_factory import cached_embedder


def test_compare_cosines_and_neighbours():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(8, 16))
    same = compare(ref * 3.0, ref)  # scale does not matter
    assert same["embed_cosine_min"] == pytest.approx(1.0) and same["embed_nn_agreement"] == 1.0
    shuffled = compare(ref[[1, 0, 2, 3, 4, 5, 6, 7]], ref)  # rows 0/1 swapped: their cosines drop
    assert shuffled["embed_cosine_min"] < 0.9 and shuffled["embed_cosine_mean"] < 1.0
    noisy = compare(ref + rng.normal(size=ref.shape) * 0.05, ref)
    assert 0.99 < noisy["embed_cosine_mean"] < 1.0


def test_embedding_check_matches_the_launcher():
    assert ENCODER_ARCHS == launcher.ENCODER_ARCHS
    for meta in ({"general.architecture": "bert"}, {"general.architecture": "qwen3"},
                 {"general.architecture": "qwen3", "qwen3.pooling_type": 3},
                 {"general.architecture": "llama"}):
        assert is_embedding(meta) == (launcher.embedding_of(meta) is not None)


def test_bench_refuses_text_for_an_embedder(tmp_path):
    out = tmp_path / "e.gguf"
    convert(cached_embedder(family="bert"), out, QuantSpec("F16"))
    text = tmp_path / "t.txt"
    text.write_text("some text " * 100)
    with pytest.raises(SlimedgeError, match="is an embedding model: it has no perplexity; leave --text out"):
        run_bench(out, text=text)


@pytest.mark.slow
def test_bench_ref_reports_embedding_quality(tmp_path):
    src = cached_embedder(family="bert")
    recs = {}
    for ftype in ("F32", "Q8_0", "Q4_0"):
        out = tmp_path / f"e-{ftype}.gguf"
        convert(src, out, QuantSpec(ftype))
        recs[ftype] = run_bench(out, ref=src, n_threads=2, repeats=1)
    f32, q8, q4 = recs["F32"], recs["Q8_0"], recs["Q4_0"]
    assert f32["embed_cosine_min"] >= 0.9999 and f32["embed_nn_agreement"] == 1.0
    assert f32["embed_ts"] > 0 and f32["n_sentences"] == 16 and f32["peak_rss_bytes"] > 0
    assert q8["embed_cosine_mean"] > q4["embed_cosine_mean"] and q4["embed_cosine_mean"] < f32["embed_cosine_mean"]
    assert f32["avg_ts"] is None and f32["perplexity"] is None  # no generation, no perplexity
