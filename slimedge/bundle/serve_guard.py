"""Limits and request checks in front of llama-cpp-python's OpenAI-compatible server (an ASGI middleware).

llama-cpp-python's server answers a malformed body, an unknown message role or a wrong type with HTTP 500
and a traceback, and takes ``"max_tokens": -5`` (or none, in a chat) as "generate until the context is
full". :class:`Guard` wraps its app and answers such requests itself, the way the OpenAI API does: status
400 and ``{"error": {"message", "type", "param", "code"}}`` naming the field; 413 for a body over
``max_body_bytes`` (408 for one that stalls); 429 (with ``Retry-After``) when ``max_concurrent`` POST
requests are already in flight or waiting for the model; 401 for a missing/wrong API key (checked first,
before the body is read). A request that passes is handed on with its body as sent, except that a chat
without ``max_tokens`` (or a null one) gets ``max_tokens_limit`` and text content parts are joined; for a model
with a vision projector, ``image_url`` parts are checked by the bundle's image policy (vision_runtime.py: 400
naming the part for a file that is not an image, a huge image, a path outside the image folder, a remote URL
not allowed) and handed on as checked data URLs. Field
types and values are checked with the server's own request models (pydantic), plus the rules those models
leave out: ``messages``/``prompt`` required, known roles, ``1 <= max_tokens <= max_tokens_limit``, one
text prompt per request, finite numbers, and what would crash llama.cpp or the server (see
:func:`_check_sampling`, :func:`_check_vocab`).

Standard library and llama-cpp-python only: the bundle launcher (``run``) loads this file from beside
itself (``slimedge build`` copies it into every bundle), and ``slimedge serve`` runs the same launcher.
"""

from __future__ import annotations

import hmac
import json
from typing import NamedTuple

ROLES = ("system", "user", "assistant", "tool", "function")  # llama-cpp-python's message types
BODY_TIMEOUT_S = 30  # a body must arrive within this (408 after)
CHAT, COMPLETION = "/v1/chat/completions", ("/v1/completions", "/v1/engines/copilot-codex/completions")


class Limits(NamedTuple):
    max_tokens: int = 2048  # largest max_tokens a request may ask for (and what a chat without one gets)
    max_body_bytes: int = 4 << 20  # largest request body
    max_concurrent: int = 16  # POST requests in flight (generating or queued for the one model)


class Reject(Exception):
    """An OpenAI-style error answer: HTTP ``status``, a one-line message, the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.type = status, message, param, type


def _request_models() -> dict:
    from llama_cpp.server import types as t

    models = {CHAT: t.CreateChatCompletionRequest, "/v1/embeddings": t.CreateEmbeddingRequest,
              "/extras/tokenize": t.TokenizeInputRequest, "/extras/tokenize/count": t.TokenizeInputRequest,
              "/extras/detokenize": t.DetokenizeInputRequest}
    return dict(models, **{p: t.CreateCompletionRequest for p in COMPLETION})


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or :class:`Reject` (400)."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise Reject(400, "the request body is not UTF-8 text; send JSON") from None
    except json.JSONDecodeError as exc:
        raise Reject(400, f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                     f"{exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise Reject(400, f"the request body is not valid JSON ({str(exc)[:100] or 'nested too deeply'})") from None
    if not isinstance(body, dict):
        raise Reject(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _check_images(i: int, content: list, images) -> None:
    """A vision model's content parts: text, and images that ``images`` (vision_runtime.ImagePolicy) takes;
    each image becomes the checked data URL the chat handler loads."""
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
            raise Reject(400, f"{where} must be a text or image_url part", where)
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise Reject(400, f"{where}.text must be a string", f"{where}.text")
            continue
        ref = part.get("image_url")
        ref = ref.get("url") if isinstance(ref, dict) else ref
        try:
            part["image_url"] = {"url": images.inline(ref)}
        except ValueError as exc:
            raise Reject(400, f"{where}: {exc}", f"{where}.image_url") from None


def _check_messages(messages, images=None) -> None:
    if messages is None:
        raise Reject(400, "'messages' is required: a list of {\"role\", \"content\"} objects", "messages")
    if not isinstance(messages, list) or not messages:
        raise Reject(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Reject(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise Reject(400, f"messages[{i}].role {m.get('role')!r} is not one of {', '.join(ROLES)}",
                         f"messages[{i}].role")
        content = m.get("content")
        if images is not None and isinstance(content, list) and not all(
                isinstance(p, dict) and p.get("type") == "text" for p in content):
            _check_images(i, content, images)
        elif isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            m["content"] = "".join(p["text"] for p in content)  # text parts: the template takes a string
        elif content is None and m["role"] == "assistant" and m.get("tool_calls"):
            m["content"] = ""
        elif not isinstance(content, str):
            raise Reject(400, f"messages[{i}].content must be a string or a list of text parts (this server "
                         "serves a text model)", f"messages[{i}].content")


def _check_prompt(body: dict) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise Reject(400, "'prompt' is required: the text to complete", "prompt")
    if isinstance(prompt, list) and not (len(prompt) <= 1 and all(isinstance(p, str) for p in prompt)):
        raise Reject(400, "'prompt' must be a string (this server completes one prompt per request, "
                     "given as text)", "prompt")


def _check_max_tokens(body: dict, path: str, limit: int) -> None:
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        body["max_tokens"] = body["max_completion_tokens"]  # the newer name; llama-cpp-python reads max_tokens
    n = body.get("max_tokens")
    if n is None:
        if path == CHAT or "max_tokens" in body:  # otherwise a completion's own default (16) applies
            body["max_tokens"] = limit
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise Reject(400, f"'max_tokens' must be an integer, not {json.dumps(n)[:40]}", "max_tokens")
    if n < 1:
        raise Reject(400, f"'max_tokens' must be at least 1 (got {n})", "max_tokens")
    if n > limit:
        raise Reject(400, f"'max_tokens' is {n}; this server generates at most {limit} tokens per request "
                     "(its --max-tokens-limit)", "max_tokens")


_TYPE_NAMES = {"str", "int", "float", "bool", "none", "dict", "list", "literal_error"}


def _param_of(loc) -> str | None:
    """'messages[0].content' from a pydantic error location (union member names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part == part.lower() and part not in _TYPE_NAMES:
            out += f".{part}" if out else part
        elif not (isinstance(part, str) and part[:1].isupper()):  # a union member's class name: skipped
            break
    return out or None


def _check_models(path: str, body: dict) -> None:
    model = _request_models().get(path)
    if model is None:
        return
    from pydantic import ValidationError

    try:
        model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        err = errors[0]
        if path == CHAT and err.get("loc", ())[:1] == ("messages",):  # a union: the error of the message's role
            i = err["loc"][1] if len(err["loc"]) > 1 else 0
            role = str(body["messages"][i].get("role", "")).capitalize() if isinstance(i, int) else ""
            err = next((e for e in errors if f"ChatCompletionRequest{role}Message" in e.get("loc", ())), err)
        param = _param_of(err.get("loc", ()))
        raise Reject(400, f"'{param or 'body'}': {err.get('msg', 'invalid value')}", param) from None


def _check_sampling(body: dict, llama) -> None:
    """What the server hands to llama.cpp unchecked: logprobs (the model keeps no logits for them), logit
    bias token ids (out of range: an out-of-bounds write), a grammar (one llama.cpp cannot parse: a crash)."""
    if body.get("logprobs") or body.get("top_logprobs"):
        raise Reject(400, "logprobs are not available from this server", "logprobs")
    bias = body.get("logit_bias")
    if isinstance(bias, dict) and bias and body.get("logit_bias_type") != "tokens":
        n_vocab = llama.n_vocab() if llama is not None else None
        for key in bias:
            if not key.isdigit() or (n_vocab is not None and int(key) >= n_vocab):
                raise Reject(400, f"logit_bias key {key[:20]!r} is not a token id of this model (0 to "
                             f"{(n_vocab or 0) - 1})", "logit_bias")
    grammar = body.get("grammar")
    if isinstance(grammar, str) and llama is not None:
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            raise Reject(400, "'grammar' is not a GBNF grammar llama.cpp can parse (with a 'root' rule)",
                         "grammar")
        llama_cpp.llama_sampler_free(sampler)


def _check_tools(body: dict) -> None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        names = [(t.get("function") or {}).get("name") for t in body.get("tools") or []]
        if name not in names:
            listed = ", ".join(map(str, names)) or "none"
            raise Reject(400, f"tool_choice names function {name!r}, which is not in 'tools' ({listed})",
                         "tool_choice")


def _check_vocab(path: str, body: dict, llama) -> None:
    if llama is None:
        return
    if path == "/extras/detokenize":
        n_vocab = llama.n_vocab()
        bad = next((t for t in body.get("tokens") or [] if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise Reject(400, f"token {bad} is not a token id of this model (0 to {n_vocab - 1})", "tokens")
    if path == "/v1/embeddings" and not llama.context_params.embeddings:
        raise Reject(400, "this server serves its model for generation, not embeddings (no /v1/embeddings)",
                     None)


def check_request(path: str, raw: bytes, limits: Limits, llama=None, images=None) -> bytes:
    """The body to hand on for a POST to ``path``, or :class:`Reject` (``llama``: the served model, for
    the checks that need its vocabulary; ``images``: a vision model's image policy, None for a text model).
    A path the server has no request model for is handed on as is (its 404/405 is the server's)."""
    if path not in _request_models():
        return raw
    body = parse_body(raw)
    if path == CHAT:
        _check_messages(body.get("messages"), images)
    elif path in COMPLETION:
        _check_prompt(body)
    if path == CHAT or path in COMPLETION:
        _check_max_tokens(body, path, limits.max_tokens)
    _check_models(path, body)
    if path == CHAT or path in COMPLETION:
        _check_sampling(body, llama)
        _check_tools(body)
    _check_vocab(path, body, llama)
    return json.dumps(body).encode()


async def _answer(send, status: int, body: dict, headers: tuple = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


async def _read_body(receive, limit: int) -> bytes:
    import asyncio

    parts, size, more = [], 0, True
    while more:
        try:  # a client that stops sending mid-body would hold its slot for good
            msg = await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise Reject(408, f"the request body did not arrive within {BODY_TIMEOUT_S} s") from None
        if msg["type"] == "http.disconnect":
            raise ConnectionAbortedError
        size += len(msg.get("body", b""))
        if size > limit:
            raise Reject(413, f"the request body is over this server's limit of {limit} bytes "
                         "(its --max-body-bytes)", None)
        parts.append(msg.get("body", b""))
        more = msg.get("more_body", False)
    return b"".join(parts)


class Guard:
    """ASGI middleware: the checks of the module docstring in front of ``app``."""

    def __init__(self, app, limits: Limits = Limits(), api_key: str | None = None, llama=None, images=None):
        """``llama``: a callable that returns the served ``llama_cpp.Llama`` (vocabulary checks); ``images``:
        the image policy of a model with a vision projector (image_url parts taken), None for a text model."""
        self.app, self.limits, self.api_key, self.in_flight, self.llama = app, limits, api_key, 0, llama
        self.images = images

    def _authorized(self, scope) -> bool:
        if not self.api_key:
            return True
        got = dict(scope.get("headers") or []).get(b"authorization", b"")
        return hmac.compare_digest(got, b"Bearer " + self.api_key.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if not self._authorized(scope):
            return await _answer(send, 401, _error(Reject(401, "Invalid API key: send it as 'Authorization: "
                                                          "Bearer KEY'", None, "authentication_error")))
        if self.in_flight >= self.limits.max_concurrent:
            return await _answer(send, 429, _error(Reject(
                429, f"the server is busy ({self.in_flight} requests in flight, its --max-concurrent); retry "
                "shortly", None, "rate_limit_error")), ((b"retry-after", b"1"),))
        self.in_flight += 1
        try:
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.limits.max_body_bytes:
                raise Reject(413, f"the request body ({int(length)} bytes) is over this server's limit of "
                             f"{self.limits.max_body_bytes} bytes (its --max-body-bytes)")
            path = scope["path"][len(scope.get("root_path", "")):] if scope.get("root_path") else scope["path"]
            data = check_request(path.rstrip("/") or "/", await _read_body(receive, self.limits.max_body_bytes),
                                 self.limits, self.llama() if self.llama else None, self.images)
        except Reject as r:
            return await _answer(send, r.status, _error(r))
        except ConnectionAbortedError:
            return None
        else:
            return await self.app(_with_length(scope, len(data)), _replay(data, receive), send)
        finally:
            self.in_flight -= 1


def _error(r: Reject) -> dict:
    return {"error": {"message": r.message, "type": r.type, "param": r.param, "code": None}}


def _with_length(scope, n: int) -> dict:
    headers = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-length", b"transfer-encoding")]
    return dict(scope, headers=headers + [(b"content-length", str(n).encode())])


def _replay(data: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await receive()  # after the body: wait for the client's disconnect, as the server expects

    return replay
