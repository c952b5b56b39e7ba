"""Hostile and mistaken requests to a real `slimedge serve` (and a bundle's `./run --serve`).

Each malformed request of issue 21 is sent over HTTP: the answer is the 4xx an OpenAI-compatible server
gives, with a JSON error body naming the field; the server log shows no traceback; and a good request is
answered afterwards. The limits are set small on the command line (max_tokens 32, body 64 KiB, two
requests in flight) and each is checked: over max_tokens, an oversize body (413), a third request while
two hold their slots (429), a chat without max_tokens generating at most the limit.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from tests.serve.serve_helpers import post_raw, run_argv, slimedge_argv

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "What is the capital of France?"}]
LIMIT_ARGS = ["--max-tokens-limit", "32", "--max-body-bytes", "65536", "--max-concurrent", "2"]


@pytest.fixture(scope="module")
def server(serve_bundle, start_server):
    return start_server(slimedge_argv(str(serve_bundle), "-t", "2", *LIMIT_ARGS))


def post(srv, path, body):
    return post_raw(srv.port, path, body if isinstance(body, bytes) else json.dumps(body).encode())


def assert_answers(srv):
    status, _, body = post(srv, CHAT, {"messages": MSG, "max_tokens": 4, "temperature": 0})
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant", body
    assert "Traceback" not in srv.output() and "Exception" not in srv.output(), srv.output()


HOSTILE = {  # name: (path, body, status, param)
    "malformed JSON": (CHAT, b'{"messages": [{"role": "user", "content": "hi"', 400, None),
    "unknown role": (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    "no messages": (CHAT, {"max_tokens": 4}, 400, "messages"),
    "max_tokens -5": (CHAT, {"messages": MSG, "max_tokens": -5}, 400, "max_tokens"),
    "max_tokens over the limit": (CHAT, {"messages": MSG, "max_tokens": 33}, 400, "max_tokens"),
    "temperature a string": (CHAT, {"messages": MSG, "temperature": "hot"}, 400, "temperature"),
    "messages a string": (CHAT, {"messages": "hi"}, 400, "messages"),
    "content a number": (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    "stream a list": (CHAT, {"messages": MSG, "stream": [1]}, 400, "stream"),
    "body an array": (CHAT, b"[1, 2, 3]", 400, None),
    "logprobs": (CHAT, {"messages": MSG, "logprobs": True, "max_tokens": 4}, 400, "logprobs"),
    "grammar llama.cpp cannot parse": (CHAT, {"messages": MSG, "grammar": "root ::= (", "max_tokens": 4}, 400,
                                       "grammar"),
    "logit_bias out of the vocabulary": (CHAT, {"messages": MSG, "logit_bias": {"99999999": 5}}, 400, "logit_bias"),
    "no prompt": ("/v1/completions", {"max_tokens": 4}, 400, "prompt"),
    "token-id prompt": ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt"),
    "detokenize out of the vocabulary": ("/extras/detokenize", {"tokens": [99999999]}, 400, "tokens"),
    "embeddings from a generation server": ("/v1/embeddings", {"input": "hi"}, 400, None),
    "oversize body": (CHAT, {"messages": [{"role": "user", "content": "x" * 70000}]}, 413, None),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_gets_its_4xx(server, name):
    path, body, want, param = HOSTILE[name]
    status, _, err = post(server, path, body)
    assert status == want, (status, err)
    assert set(err) == {"error"} and err["error"]["param"] == param and err["error"]["message"], err
    assert err["error"]["type"] == "invalid_request_error"
    assert_answers(server)


def test_chat_without_max_tokens_stops_at_the_limit(server):
    status, _, body = post(server, CHAT, {"messages": MSG, "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] <= 32, body


def hold_a_slot(port: int) -> socket.socket:
    """A client that sends its headers and half its body, then waits (its request stays in flight)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 400\r\n\r\n{\"messages\": ")
    return s


def test_too_many_concurrent_requests_get_429(server):
    for _attempt in range(3):  # fresh holders if the server answered 408 to the last ones before taking both in
        holders = [hold_a_slot(server.port) for _ in range(2)]
        try:
            deadline = time.monotonic() + 20  # less than the guard's 30 s body timeout for the holders
            while True:  # until the server has taken both holders' requests in (a busy machine may lag)
                status, headers, err = post(server, CHAT, {"messages": MSG, "max_tokens": 4})
                if status != 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            for s in holders:
                s.close()
        if status == 429:
            break
        time.sleep(1)
    assert status == 429 and err["error"]["type"] == "rate_limit_error", err
    assert headers.get("retry-after") == "1"
    deadline = time.monotonic() + 30
    while post(server, CHAT, {"messages": MSG, "max_tokens": 4})[0] == 429:  # the slots free as they drop
        assert time.monotonic() < deadline, "slots not freed after the clients went away"
        time.sleep(0.2)
    assert_answers(server)


def test_bundle_run_serve_has_the_same_guard(serve_bundle, start_server):
    srv = start_server(run_argv(serve_bundle) + ["--max-tokens-limit", "16"])
    status, _, err = post(srv, CHAT, b'{"messages": [')
    assert status == 400 and err["error"]["type"] == "invalid_request_error"
    status, _, err = post(srv, CHAT, {"messages": MSG, "max_tokens": 17})
    assert status == 400 and err["error"]["param"] == "max_tokens" and "16" in err["error"]["message"]
    assert_answers(srv)


def test_unknown_path_is_the_servers_404(server):
    assert post(server, "/v1/nowhere", b"{not json")[0] == 404
    assert_answers(server)
