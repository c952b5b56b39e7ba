"""`./run --serve` and `slimedge serve`: llama-cpp-python's OpenAI-compatible server on a tiny bundle.

Checked over real HTTP on a free loopback port: /v1/models, completions, chat completions rendered with
the GGUF's chat template, SSE streaming, stop strings, a burst of concurrent requests, SIGTERM, a taken
port, the API-key rule.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import jinja2
import pytest
from tests.serve.serve_helpers import free_port, request, run_argv, slimedge_argv

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0.0, "seed": 1, "max_tokens": 12}


@pytest.fixture(scope="module")
def server(serve_bundle, start_server):
    return start_server(run_argv(serve_bundle))


def rendered(manifest: dict, add_generation_prompt: bool = True, bos: str = "") -> str:
    """The chat template rendered the way Hugging Face does (jinja2), BOS left to the tokenizer."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(manifest["chat_template"]).render(messages=MESSAGES, bos_token=bos, eos_token="</s>",
                                                             add_generation_prompt=add_generation_prompt)


def manifest_of(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_models_lists_the_bundle(server, serve_bundle):
    status, body = request(server.port, "/v1/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == [manifest_of(serve_bundle)["name"]]


def test_completion(server):
    status, body = request(server.port, "/v1/completions", {"prompt": "def add(a, b):", **GREEDY})
    assert status == 200, body
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and choice["text"]
    assert body["usage"]["completion_tokens"] == 12 and choice["finish_reason"] == "length"
    again = request(server.port, "/v1/completions", {"prompt": "def add(a, b):", **GREEDY})[1]
    assert again["choices"][0]["text"] == choice["text"]  # greedy: deterministic


def test_chat_prompt_is_the_gguf_chat_template(server, serve_bundle):
    m = manifest_of(serve_bundle)
    assert "<|assistant|>" in m["chat_template"]  # the tiny tokenizer's Phi-3-style template
    status, chat = request(server.port, "/v1/chat/completions", {"messages": MESSAGES, **GREEDY})
    assert status == 200, chat
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    # the template rendered here, tokenized by the server (which puts BOS first, as the template's bos_token)
    prompt = rendered(m)
    n_tokens = request(server.port, "/extras/tokenize/count", {"input": prompt})[1]["count"]
    assert chat["usage"]["prompt_tokens"] == n_tokens
    without_gen_prompt = request(server.port, "/extras/tokenize/count", {"input": rendered(m, False)})[1]["count"]
    assert without_gen_prompt < n_tokens  # the count tells the renderings apart
    # the same tokens as a plain completion continue the same way (greedy)
    comp = request(server.port, "/v1/completions", {"prompt": prompt, **GREEDY})[1]
    assert comp["usage"]["prompt_tokens"] == n_tokens
    assert chat["choices"][0]["message"]["content"] == comp["choices"][0]["text"]


def sse_events(raw: str) -> list[str]:
    return [line[len("data:"):].strip() for line in raw.splitlines() if line.startswith("data:")]


def test_streaming_sse_gives_the_same_text(server):
    full = request(server.port, "/v1/completions", {"prompt": "import os", **GREEDY})[1]["choices"][0]["text"]
    status, raw = request(server.port, "/v1/completions", {"prompt": "import os", "stream": True, **GREEDY})
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and len(events) > 3
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == full
    status, raw = request(server.port, "/v1/chat/completions", {"messages": MESSAGES, "stream": True, **GREEDY})
    events = sse_events(raw)
    assert status == 200 and events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0].get("role") == "assistant"
    chat = request(server.port, "/v1/chat/completions", {"messages": MESSAGES, **GREEDY})[1]
    assert "".join(d.get("content") or "" for d in deltas) == chat["choices"][0]["message"]["content"]


def test_stop_string_cuts_the_text(server):
    body = {"prompt": "class Stack:", **GREEDY, "max_tokens": 24}
    full = request(server.port, "/v1/completions", body)[1]["choices"][0]["text"]
    k = len(full) // 2
    stop = full[k:k + 2]
    assert len(full) >= 6 and stop.strip(), full
    cut = request(server.port, "/v1/completions", dict(body, stop=[stop]))[1]["choices"][0]
    assert cut["text"] == full[:full.index(stop)]
    assert cut["finish_reason"] == "stop"


def test_concurrent_burst_all_answered(server):
    def one(i: int):
        if i % 4 == 3:  # some streaming ones in the mix
            status, raw = request(server.port, "/v1/completions",
                                  {"prompt": f"x = {i}", "stream": True, **GREEDY, "max_tokens": 6})
            return status, sse_events(raw)[-1] == "[DONE]"
        status, body = request(server.port, "/v1/chat/completions" if i % 2 else "/v1/completions",
                               {"messages": [{"role": "user", "content": f"count {i}"}]} if i % 2 else
                               {"prompt": f"y = {i}", **GREEDY, "max_tokens": 6})
        return status, bool(body["choices"]) if status == 200 else body

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert results == [(200, True)] * 8


def test_sigterm_shuts_down_cleanly(serve_bundle, start_server):
    srv = start_server(run_argv(serve_bundle))
    assert request(srv.port, "/v1/models")[0] == 200
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(timeout=60)
    assert rc == 128 + signal.SIGTERM, srv.output()
    assert "Traceback" not in srv.output()
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    with socket.socket() as s:  # and the port is free again (past connections may linger in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", srv.port))


def test_taken_port_is_one_clear_line(serve_bundle):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        r = subprocess.run(run_argv(serve_bundle) + ["--port", str(port)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "taken" in lines[0], r.stderr
        assert time.monotonic() - t0 < 60  # refused before the model loads
        r = subprocess.run(slimedge_argv(str(serve_bundle), "--port", str(port)), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and r.stderr.strip().startswith("Error: ") and str(port) in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("how", ["run", "slimedge"])
def test_non_loopback_host_needs_an_api_key(serve_bundle, how):
    argv = run_argv(serve_bundle) if how == "run" else slimedge_argv(str(serve_bundle))
    env = {k: v for k, v in __import__("os").environ.items() if k != "SLIMEDGE_API_KEY"}
    r = subprocess.run(argv + ["--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "0.0.0.0" in lines[0] and "--api-key" in lines[0], r.stderr


def test_api_key_is_enforced_gguf_with_target(serve_bundle, start_server):
    srv = start_server(slimedge_argv(str(serve_bundle / "model.gguf"), "--target", "cpu", "-t", "2"),
                       env={"SLIMEDGE_API_KEY": "s3cret"})
    body = {"prompt": "hi", **GREEDY, "max_tokens": 2}
    assert request(srv.port, "/v1/completions", body)[0] == 401
    assert request(srv.port, "/v1/completions", body, key="wrong")[0] == 401
    status, out = request(srv.port, "/v1/completions", body, key="s3cret")
    assert status == 200 and out["choices"][0]["text"] and out["usage"]["prompt_tokens"] > 0
    assert request(srv.port, "/v1/models", key="s3cret")[1]["data"][0]["id"] == manifest_of(serve_bundle)["name"]
