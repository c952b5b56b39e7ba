"""Embedding bundles' docs and hints, and ``slimedge sweep`` on an embedding model.

Fast: an embedding bundle's Modelfile has no chat TEMPLATE and says how Ollama embeds (``/api/embed``); its
card shows ``run --embed``, ``llama-embedding`` / ``llama-server --embedding`` with the model's pooling and
Ollama's embed API; ``build`` ends with ``run --embed "..."``, not ``run "Hello"``; sweep refuses auto mixes for
an embedder and ``--text``-less sweeps of a generation model. Slow: a sweep of the tiny BERT embedder, whose
per-type cosine and nearest-neighbour figures are recomputed here from llama.cpp's own vectors (llama-cpp-python,
the sweep's F32 reference and each type's file) and must match.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.embed.embed_factory import cached_embedder

from slimedge.errors import SlimedgeError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from slimedge.cli import main

    src = cached_embedder(family="bert", pooling="mean")
    out = tmp_path_factory.mktemp("embdocs") / "bert-cpu"
    res = CliRunner().invoke(main, ["build", str(src), "--target", "cpu", "--type", "Q8_0", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_build_hint_says_run_embed(built):
    out, output = built
    assert f'python {out / "run"} --embed "some text"' in output and 'run "Hello"' not in output


def test_modelfile_of_an_embedding_bundle(built):
    out, _ = built
    text = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text and "TEMPLATE" not in text.replace("no TEMPLATE", "")
    assert "/api/embed" in text and "ollama run" not in text and "PARAMETER stop" not in text


def test_card_of_an_embedding_bundle(built):
    out, _ = built
    m = json.loads((out / "manifest.json").read_text())
    card = (out / "README.md").read_text()
    assert m["embedding"]["pooling"] == "mean"
    assert 'python run --embed "some text"' in card and "/v1/embeddings" in card
    assert "llama-embedding -m model.gguf" in card and "--embedding --pooling mean" in card
    assert "http://localhost:11434/api/embed" in card and 'python run "Once upon a time"' not in card


def test_sweep_refusals(tmp_path, hf_model):
    from slimedge.bench.sweep import run_sweep

    src = cached_embedder(family="bert", pooling="mean")
    with pytest.raises(SlimedgeError, match="auto mixes are chosen by next-token KL") as exc:
        run_sweep(src, "Q8_0,auto:4.5", None, tmp_path / "e")
    assert "\n" not in str(exc.value)
    with pytest.raises(SlimedgeError, match="--text is required"):
        run_sweep(hf_model, "Q8_0", None, tmp_path / "g")


def _llama_vectors(path, sentences) -> np.ndarray:
    from llama_cpp import Llama

    # flash attention on: what the bench child's llama.cpp default (auto) picks on a CPU; without it the
    # attention sums differ and the cosines move by ~1e-6
    llm = Llama(str(path), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, flash_attn=True,
                verbose=False)
    try:
        return np.asarray(llm.embed(list(sentences), normalize=False), dtype=np.float64)  # as bench's child does
    finally:
        llm.close()


@pytest.mark.slow
def test_sweep_of_an_embedder_reports_cosine_and_neighbours(tmp_path):
    from slimedge.bench.embed import SENTENCES
    from slimedge.cli import main

    src = cached_embedder(family="bert", pooling="mean")
    out = tmp_path / "sweep"
    res = CliRunner().invoke(main, ["sweep", str(src), "--types", "Q8_0,Q4_K_M", "-r", "1", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "| cosine mean | cosine min | NN agreement | embed t/s |" in res.output
    records = {r["sweep_label"]: r for r in json.loads((out / "sweep.json").read_text())}
    name = src.name
    ref = _llama_vectors(out / f"{name}-f32.gguf", SENTENCES)
    for label, rec in records.items():
        got = _llama_vectors(out / f"{name}-{label.lower()}.gguf", SENTENCES)
        a = got / np.linalg.norm(got, axis=1, keepdims=True)
        b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        cos = (a * b).sum(1)
        assert rec["embed_cosine_mean"] == pytest.approx(cos.mean(), abs=1e-7), label
        assert rec["embed_cosine_min"] == pytest.approx(cos.min(), abs=1e-7), label
        sa, sb = a @ a.T, b @ b.T
        np.fill_diagonal(sa, -np.inf)
        np.fill_diagonal(sb, -np.inf)
        assert rec["embed_nn_agreement"] == pytest.approx(np.mean(sa.argmax(1) == sb.argmax(1))), label
        assert rec["embed_ts"] > 0 and rec["perplexity"] is None
    assert records["Q8_0"]["embed_cosine_mean"] > records["Q4_K_M"]["embed_cosine_mean"]
    assert (out / "sweep.png").stat().st_size > 0 and "cosine mean" in (out / "sweep.md").read_text()
