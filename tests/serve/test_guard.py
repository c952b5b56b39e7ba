"""serve_guard's checks and limits without a server: the ASGI middleware in front of a recording app.

The real server behind it is in test_hostile.py; here every branch is driven directly (asyncio): the
OpenAI-style 4xx body, 413 for a declared and for a streamed oversize body, 429 while the in-flight
limit is reached, 401 before the body is read, and a passing request handed on with its body intact.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from slimedge.bundle.serve_guard import CHAT, Guard, Limits, Reject, check_request

LIMITS = Limits(max_tokens=32, max_body_bytes=1000, max_concurrent=2)
MSG = [{"role": "user", "content": "hi"}]


def checked(path: str, body) -> dict:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return json.loads(check_request(path, raw, LIMITS))


def rejected(path: str, body) -> Reject:
    with pytest.raises(Reject) as exc:
        checked(path, body)
    assert exc.value.status == 400 and "\n" not in exc.value.message
    return exc.value


@pytest.mark.parametrize("body,param", [
    (b'{"messages": [', None), (b"[1, 2]", None), (b"\xff\xfe{}", None), (b'{"temperature": NaN}', None),
    ({}, "messages"), ({"messages": []}, "messages"), ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": MSG, "max_tokens": -5}, "max_tokens"), ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_tokens": 33}, "max_tokens"), ({"messages": MSG, "max_tokens": "10"}, "max_tokens"),
    ({"messages": MSG, "max_tokens": True}, "max_tokens"), ({"messages": MSG, "temperature": "hot"}, "temperature"),
    ({"messages": MSG, "top_p": 5}, "top_p"), ({"messages": MSG, "stop": 5}, "stop"),
    ({"messages": MSG, "logprobs": True}, "logprobs"),
    ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
])
def test_chat_refusals_name_the_field(body, param):
    assert rejected(CHAT, body).param == param


@pytest.mark.parametrize("body,param", [({}, "prompt"), ({"prompt": ["a", "b"]}, "prompt"),
                                        ({"prompt": [1, 2, 3]}, "prompt"), ({"prompt": "x", "max_tokens": -1},
                                                                            "max_tokens"),
                                        ({"prompt": "x", "logprobs": 2}, "logprobs")])
def test_completion_refusals_name_the_field(body, param):
    assert rejected("/v1/completions", body).param == param


def test_passing_requests_and_the_max_tokens_default():
    assert checked(CHAT, {"messages": MSG})["max_tokens"] == 32  # a chat without max_tokens gets the limit
    assert checked(CHAT, {"messages": MSG, "max_completion_tokens": 7})["max_tokens"] == 7
    assert "max_tokens" not in checked("/v1/completions", {"prompt": "x"})  # the completion default (16)
    assert checked("/v1/completions", {"prompt": "x", "max_tokens": None})["max_tokens"] == 32
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert checked(CHAT, parts)["messages"][0]["content"] == "ab"
    body = {"messages": MSG, "max_tokens": 32, "temperature": 0.5, "stop": ["\n"], "seed": 3}
    assert checked(CHAT, body) == body
    assert checked("/v1/models", {"anything": 1}) == {"anything": 1}  # no model for other paths
    assert check_request("/nowhere", b"{not json", LIMITS) == b"{not json"  # the server's 404 is its own


class Recorder:
    """A downstream ASGI app that records the body it was handed, optionally waiting on an event."""

    def __init__(self):
        self.bodies, self.release = [], None

    async def __call__(self, scope, receive, send):
        msg = await receive()
        self.bodies.append(msg["body"])
        if self.release is not None:
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app, body: bytes, headers=(), chunks: int = 1):
    sent, parts = [], [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    queue = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": list(headers)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), (json.loads(data) if data.startswith(b"{") else data)


def test_guard_asgi_limits_and_hand_on():
    async def run():
        rec = Recorder()
        guard = Guard(rec, LIMITS, api_key="k")
        good = json.dumps({"messages": MSG, "max_tokens": 4}).encode()
        auth = ((b"authorization", b"Bearer k"),)
        assert (await call(guard, b"not json"))[0] == 401  # the key before the body
        assert (await call(guard, good, auth))[:1] == (200,) and json.loads(rec.bodies[-1]) == json.loads(good)
        status, _, err = await call(guard, b"x" * 2000, auth + ((b"content-length", b"2000"),))
        assert status == 413 and "1000 bytes" in err["error"]["message"]
        assert (await call(guard, b" " * 1500, auth, chunks=3))[0] == 413  # streamed, no length declared
        status, _, err = await call(guard, b'{"messages": [', auth)
        assert status == 400 and err["error"]["type"] == "invalid_request_error"
        rec.release = asyncio.Event()
        held = [asyncio.create_task(call(guard, good, auth)) for _ in range(2)]
        await asyncio.sleep(0.05)
        status, headers, err = await call(guard, good, auth)
        assert status == 429 and headers[b"retry-after"] == b"1" and err["error"]["type"] == "rate_limit_error"
        rec.release.set()
        assert [(await t)[0] for t in held] == [200, 200] and guard.in_flight == 0
        assert (await call(guard, good, auth))[0] == 200

    asyncio.run(run())


def test_stalled_body_is_408_and_frees_its_slot(monkeypatch):
    import slimedge.bundle.serve_guard as sg

    monkeypatch.setattr(sg, "BODY_TIMEOUT_S", 0.1)

    async def run():
        guard, sent = Guard(Recorder(), LIMITS), []

        async def stall():
            await asyncio.sleep(3600)

        async def send(msg):
            sent.append(msg)

        await guard({"type": "http", "method": "POST", "path": CHAT, "headers": []}, stall, send)
        assert sent[0]["status"] == 408 and guard.in_flight == 0

    asyncio.run(run())
