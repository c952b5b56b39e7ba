"""`run --serve` and `slimedge serve BUNDLE` decode with the bundle's draft: the draft GGUF is loaded beside the
model and a greedy completion is the model's own (as llama.cpp gives it without a draft)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.factory import cached_hf_model
from tests.serve.serve_helpers import free_port, request

PROMPT, N = "Hello world", 20


@pytest.fixture(scope="module")
def spec_bundle(tmp_path_factory):
    from slimedge.bundle import build_bundle

    tmp = tmp_path_factory.mktemp("draft-serve")
    return build_bundle(cached_hf_model(arch="llama"), "cpu", tmp / "spec", type="F32",
                        draft=cached_hf_model(arch="llama", num_hidden_layers=1, seed=3), draft_max=4)


def _plain_text(model) -> str:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=256, n_threads=2, verbose=False)
    try:
        return llm.create_completion(PROMPT, max_tokens=N, temperature=0.0)["choices"][0]["text"]
    finally:
        llm.close()


def _serve(argv, log):
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            assert time.monotonic() < deadline, "server did not listen within 120 s"
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["run", "slimedge"])
def test_served_completion_with_the_draft(spec_bundle, tmp_path, how):
    argv = ([sys.executable, str(spec_bundle / "run"), "--serve", "--threads", "2", "-v"] if how == "run" else
            [sys.executable, "-m", "slimedge", "serve", str(spec_bundle), "--threads", "2", "-v"])
    log = tmp_path / "server.log"
    proc, port = _serve(argv, log)
    try:
        # repeat_penalty 1.0: the server's default is 1.1, llama-cpp-python's create_completion's 1.0
        status, body = request(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": N, "temperature": 0,
                                                         "repeat_penalty": 1.0})
        assert status == 200, body
        assert body["choices"][0]["text"] == _plain_text(spec_bundle / "model.gguf")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert "draft.gguf" in log.read_text(errors="replace")  # llama.cpp's loader log names the draft it loaded
