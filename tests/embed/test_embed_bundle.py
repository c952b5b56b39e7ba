"""Embedding bundles: ``run --embed`` prints the vector, ``serve`` answers /v1/embeddings and refuses chat.

Slow: a Q8_0 bundle of the tiny BERT embedder (mean pooling + Normalize). ``./run --embed TEXT`` prints a
JSON vector whose cosine to SentenceTransformer.encode is ≥ 0.998; a prompt, --chat or a text longer than
the model's context is one line; ``slimedge serve BUNDLE`` and ``./run --serve`` answer /v1/embeddings with
the same vectors (OpenAI's shape) and /v1/chat/completions with one 400 line. Fast: the manifest's
``embedding`` entry and :func:`embedding_of`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from slimedge.bundle import build_bundle
from slimedge.bundle.launcher import embedding_of
from tests.embed.embed_checks import cosines, st_reference
from tests.embed.embed_factory import SENTENCES, cached_embedder
from tests.serve.serve_helpers import free_port, request


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    src = cached_embedder(family="bert", pooling="mean")
    return build_bundle(src, "cpu", tmp_path_factory.mktemp("emb") / "bert-cpu", type="Q8_0"), src


def _run(bundle, *args):
    return subprocess.run([sys.executable, str(bundle / "run"), "--threads", "2", *args], capture_output=True,
                          text=True, timeout=120)


def test_manifest_says_embedding(bundle):
    man = json.loads((bundle[0] / "manifest.json").read_text())
    assert man["embedding"] == {"pooling": "mean", "normalize": True}
    assert man["memory_estimate"]["kv_ram"] == 0  # llama.cpp gives an encoder no KV cache
    assert embedding_of({"general.architecture": "qwen3"}) is None
    assert embedding_of({"general.architecture": "qwen3", "qwen3.pooling_type": "3"})["pooling"] == "last"


@pytest.mark.slow
def test_run_embed_prints_the_vector(bundle):
    path, src = bundle
    r = _run(path, "--embed", SENTENCES[1])
    assert r.returncode == 0, r.stderr
    got = np.asarray(json.loads(r.stdout))
    ref, _ = st_reference(src, SENTENCES[1:2])
    assert got.shape == (64,) and abs(np.linalg.norm(got) - 1) < 1e-5
    assert cosines(got[None], ref)[0] >= 0.998


@pytest.mark.slow
def test_run_refuses_generation_and_long_texts(bundle):
    path, _ = bundle
    for args in (["hello"], ["--chat"]):
        r = _run(path, *args)
        assert r.returncode == 1 and r.stderr.strip().splitlines() == [
            f"run: {json.loads((path / 'manifest.json').read_text())['name']} is an embedding model: use --embed "
            "TEXT, or --serve for /v1/embeddings"]
    r = _run(path, "--embed", "word " * 300)
    assert r.returncode == 1 and "tokens, more than the model's context of 128: shorten it" in r.stderr.splitlines()[-1]


@pytest.fixture
def server():
    proc = None

    def start(argv):
        nonlocal proc
        port = free_port()
        proc = subprocess.Popen([*argv, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=dict(os.environ))
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return port
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)

    yield start
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["slimedge", "run"])
def test_serve_answers_embeddings_and_refuses_chat(bundle, server, how):
    path, src = bundle
    argv = ([sys.executable, "-m", "slimedge", "serve", str(path), "--threads", "2"] if how == "slimedge"
            else [sys.executable, str(path / "run"), "--serve", "--threads", "2"])
    port = server(argv)
    status, body = request(port, "/v1/embeddings", {"input": list(SENTENCES[:3])})
    assert status == 200, body
    got = np.asarray([d["embedding"] for d in body["data"]])
    ref, _ = st_reference(src, SENTENCES[:3])
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert cosines(got, ref).min() >= 0.998
    status, body = request(port, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and "is an embedding model: it answers /v1/embeddings" in json.loads(body)["error"]["message"]


@pytest.mark.slow
def test_verify_loads_an_embedding_bundle(bundle):
    r = subprocess.run([sys.executable, "-m", "slimedge", "verify", str(bundle[0])], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "llama.cpp loads the model" in r.stdout + r.stderr, r.stderr
