"""The llama.cpp runtime a bundle's launcher and ``slimedge serve`` share, and the OpenAI-compatible server.

Standard library and llama-cpp-python only (it must never import slimedge): ``slimedge build`` copies this file
beside every bundle's launcher (``run``), which loads it from there (``run``'s ``runtime()``); ``slimedge serve``
imports it as :mod:`slimedge.bundle.server_runtime`, so bundles and the command line run the same code.

What run and serve share: :class:`ServeError` (a user error: one line naming what to change),
:func:`load_sibling` (the other shipped files — serve_guard.py, vision_runtime.py, draft.py, machine.py — from
beside this file, loaded once), the runtime settings llama-cpp-python takes its own way (:data:`CACHE_TYPES`,
:func:`flash_attn_setting`), and what is set on a loaded model (:func:`apply_adapters`, :func:`attach_draft`).

The server (:func:`serve`) binds 127.0.0.1 unless told otherwise; any other host needs an API key, which every
request must then send as a Bearer token. The socket is bound before the model loads (a taken port is one line,
at once); serve_guard.py's checks and limits sit in front of llama-cpp-python's app; SIGTERM shuts it down
gracefully (requests in flight finish) and the exit status is 143.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}
API_KEY_ENV = "SLIMEDGE_API_KEY"
DEFAULT_PORT = 8080


class ServeError(Exception):
    """A user error of the runtime or the server (one line, naming what to change)."""


def load_sibling(name: str):
    """``name``.py from beside this file (a bundle carries copies: serve_guard, vision_runtime, draft, machine;
    slimedge has them in its package), loaded once."""
    import importlib.util

    if f"slimedge_{name}" in sys.modules:
        return sys.modules[f"slimedge_{name}"]
    path = HERE / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"slimedge_{name}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ServeError(f"{path} is missing; rebuild the bundle with `slimedge build`")
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def attach_draft(llm, draft: dict | None, *, n_ctx: int, threads: int | None, n_gpu_layers: int = 0,
                 verbose: bool = False):
    """Decode ``llm`` speculatively: the draft GGUF runs in its own llama.cpp context (draft.py's GGUFDraft, from
    beside this file) and proposes tokens that ``llm`` checks in one batch (llama-cpp-python's draft-model
    hook, which needs every position's logits). Returns the draft, or None without one."""
    if not draft:
        return None
    import numpy as np

    if not (HERE / "draft.py").is_file():
        raise ServeError(f"{HERE / 'draft.py'} is missing; rebuild the bundle with `slimedge build --draft`")
    mod = load_sibling("draft")
    d = mod.GGUFDraft(draft["path"], n_ctx=n_ctx, n_threads=threads, k_max=draft["draft_max"],
                      n_gpu_layers=n_gpu_layers, verbose=verbose)
    problem = mod.vocab_mismatch(llm, d.llm)
    if problem:
        d.close()
        raise ServeError(f"{draft['path']}: the draft has a {problem}; a draft must share the model's "
                         "tokenizer: rebuild the bundle with another --draft (or run with --no-draft)")
    llm._stack.callback(d.close)
    if llm.scores.shape[0] < llm.n_ctx():  # the target's logits at every position, as Llama(draft_model=) keeps
        llm.scores = np.ndarray((llm.n_ctx(), llm.n_vocab()), dtype=np.single)
    llm._logits_all, llm.draft_model = True, d
    return d


def apply_adapters(llm, adapters) -> None:
    """Load each LoRA adapter GGUF onto ``llm``'s model and set them all, at their scales, on its context
    (llama.cpp's llama_set_adapters_lora; llama-cpp-python's own lora_path takes one adapter only)."""
    if not adapters:
        return
    import ctypes

    import llama_cpp

    handles = []
    for path, _ in adapters:
        a = llama_cpp.llama_adapter_lora_init(llm.model, str(path).encode("utf-8"))
        if a is None:
            raise ServeError(f"llama.cpp cannot load the LoRA adapter {path} (another base model?); run "
                             f"`slimedge verify` on the bundle")
        llm._stack.callback(llama_cpp.llama_adapter_lora_free, a)  # freed before the model
        handles.append(a)
    n = len(handles)
    arr = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*handles)
    scales = (ctypes.c_float * n)(*[float(s) for _, s in adapters])
    if llama_cpp.llama_set_adapters_lora(llm.ctx, arr, n, scales):
        raise ServeError(f"llama.cpp could not apply the LoRA adapters {', '.join(str(p) for p, _ in adapters)}")


def draft_runtime(rt: dict, draft) -> dict:
    """The runtime settings with a speculative draft: flash attention on where the profile turns it off. Its
    attention rounds the same for a batch of drafted tokens as for one token; without it the batched
    verification can flip a near-tie, and greedy output would drift from the model alone's."""
    return dict(rt, flash_attn=True) if draft and rt.get("flash_attn") is False else rt


@contextlib.contextmanager
def flash_attn_setting(rt: dict):
    """llama-cpp-python takes flash attention as a bool (enabled/disabled); a profile without a setting
    means llama.cpp's own default, auto: while a model loads in this block, "enabled" reads as auto."""
    import llama_cpp.llama_cpp as lib

    enabled = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if rt.get("flash_attn") is None:
        lib.LLAMA_FLASH_ATTN_TYPE_ENABLED = lib.LLAMA_FLASH_ATTN_TYPE_AUTO
    try:
        yield
    finally:
        lib.LLAMA_FLASH_ATTN_TYPE_ENABLED = enabled


# ---- the server (./run --serve, slimedge serve) ----

@contextlib.contextmanager
def swa_full_setting(rt: dict):
    """The server's ModelSettings has no swa_full: while its model loads in this block, ``llama_cpp.Llama``
    gets the profile's value (the server creates exactly one model, here)."""
    import llama_cpp

    llama = llama_cpp.Llama
    if rt.get("swa_full", True) is not True:
        llama_cpp.Llama = lambda *a, **kw: llama(*a, **dict(kw, swa_full=rt["swa_full"]))
    try:
        yield
    finally:
        llama_cpp.Llama = llama


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, api_key: str | None) -> None:
    """Anything but a loopback address serves the network: refused without an API key."""
    if not is_loopback(host) and not api_key:
        raise ServeError(f"--host {host} is not a loopback address, so anyone who can reach it could use the "
                         f"model: give --api-key KEY (or set {API_KEY_ENV}), or leave --host out for 127.0.0.1")


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a taken port is reported at once."""
    addr = "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does (TIME_WAIT is not "taken")
    try:
        sock.bind((addr, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): the port is taken or the "
                         "address is not this machine's; choose another --port or --host") from None
    return sock


def server_model_settings(model: Path, rt: dict, *, alias: str, n_ctx: int, n_gpu_layers: int,
                          threads: int | None, has_template: bool, verbose: bool, embedding: bool = False) -> dict:
    """llama_cpp.server ModelSettings fields for the profile's runtime settings."""
    kw = dict(model=str(model), model_alias=alias, n_ctx=n_ctx, n_batch=rt.get("n_batch", 512),
              n_ubatch=rt.get("n_ubatch", 512), n_gpu_layers=n_gpu_layers, use_mmap=rt.get("use_mmap", True),
              use_mlock=rt.get("use_mlock", False), flash_attn=rt.get("flash_attn") is not False,
              logits_all=False, verbose=verbose,
              # the GGUF's own chat template (llama-cpp-python registers it under this name)
              chat_format="chat_template.default" if has_template else None)
    if embedding:  # pooled vectors; an encoder takes the whole text in one micro-batch
        kw.update(embedding=True, chat_format=None, n_batch=n_ctx, n_ubatch=n_ctx)
    if threads:
        kw["n_threads"] = kw["n_threads_batch"] = threads
    for key, name in (("type_k", "cache_type_k"), ("type_v", "cache_type_v")):
        if rt.get(name, "f16") != "f16":
            kw[key] = CACHE_TYPES[rt[name]]
    return kw


class EmbeddingOnly:
    """ASGI wrapper for an embedding model's server: the generation endpoints answer one 400 line."""

    GENERATE = ("/v1/chat/completions", "/v1/completions")

    def __init__(self, app, name: str):
        self.app, self.name = app, name

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/")
        if scope["type"] != "http" or path not in self.GENERATE:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": {
            "message": f"{self.name} is an embedding model: it answers /v1/embeddings, not {path}",
            "type": "invalid_request_error", "param": None, "code": "embedding_model"}}).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def load_guard():
    """serve_guard.py from beside this file: the request limits and checks in front of the server."""
    return load_sibling("serve_guard")



def serve(model: Path, rt: dict, *, alias: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          api_key: str | None = None, n_ctx: int | None = None, n_gpu_layers: int | None = None,
          threads: int | None = None, has_template: bool = True, verbose: bool = False,
          limits: dict | None = None, adapters=(), embedding: bool = False, draft: dict | None = None,
          mmproj: Path | None = None, image_dir: Path | None = None, allow_remote_images: bool = False) -> None:
    """Serve ``model`` with llama-cpp-python's OpenAI-compatible server until SIGTERM/Ctrl-C.

    Checks the host/key rule and binds the port first, then loads the model with the runtime settings
    ``rt`` and runs uvicorn on the bound socket, behind serve_guard.py's checks with ``limits``
    (``serve_guard.Limits`` fields; None values: its defaults). ``embedding``: an embedding model, loaded
    for ``/v1/embeddings`` (generation endpoints refused). ``mmproj``: the vision projector; chat messages may
    then carry OpenAI ``image_url`` parts (vision_runtime.ImagePolicy: data URLs, files under ``image_dir``,
    remote URLs with ``allow_remote_images``). Raises :class:`ServeError` for a user error.
    """
    check_host(host, api_key)
    if mmproj is not None and not has_template and not embedding:
        raise ServeError(f"{model} has no chat template, which places images in the prompt: serve it without "
                         "its vision projector, or add a template")
    guard = load_guard()
    lim = guard.Limits(**{k: v for k, v in (limits or {}).items() if v is not None})
    if min(lim) < 1:
        shown = ", ".join(f"{k}={v}" for k, v in lim._asdict().items())
        raise ServeError(f"the serve limits must be at least 1 ({shown}); raise --max-tokens-limit, "
                         "--max-body-bytes or --max-concurrent")
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as exc:
        raise ServeError(f"the server needs llama-cpp-python's server packages ({exc.name} is missing): "
                         "pip install uvicorn fastapi sse-starlette 'starlette-context<0.4' pydantic-settings") from None
    sock = bind_socket(host, port)
    rt = draft_runtime(rt, None if embedding else draft)
    try:
        ms = ModelSettings(**server_model_settings(
            model, rt, alias=alias, n_ctx=n_ctx or rt.get("n_ctx", 2048), threads=threads, has_template=has_template,
            n_gpu_layers=rt.get("n_gpu_layers", 0) if n_gpu_layers is None else n_gpu_layers, verbose=verbose,
            embedding=embedding))
        # interrupt_requests=False: a new request waits for the one streaming instead of cutting it off
        ss = ServerSettings(host=host, port=port, api_key=api_key or None, interrupt_requests=False)
        with flash_attn_setting(rt), swa_full_setting(rt):
            app = create_app(server_settings=ss, model_settings=[ms])
        from llama_cpp.server import app as server_app  # its one loaded model, for the guard's vocabulary checks

        apply_adapters(server_app._llama_proxy(), adapters)  # the bundle's LoRA adapters, at their scales
        attach_draft(server_app._llama_proxy(), None if embedding else draft, n_ctx=ms.n_ctx, threads=threads,
                     n_gpu_layers=ms.n_gpu_layers, verbose=verbose)  # speculative decoding with its draft

        images = None
        if mmproj is not None and not embedding:  # images through the checked multimodal chat handler
            vision = load_sibling("vision_runtime")
            images = vision.ImagePolicy(image_dir, allow_remote_images)
            server_app._llama_proxy().chat_handler = vision.make_handler(mmproj, use_gpu=ms.n_gpu_layers != 0,
                                                                         verbose=verbose)
        if embedding:
            app = EmbeddingOnly(app, alias)
        app = guard.Guard(app, lim, api_key=api_key, llama=lambda: server_app._llama_proxy(), images=images)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # uvicorn re-raises it after its graceful stop
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {alias} at http://{shown}:{sock.getsockname()[1]}/v1 (OpenAI API; "
              f"{'API key required' if api_key else 'no API key'}); Ctrl-C or SIGTERM stops it",
              file=sys.stderr, flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="info" if verbose else "warning")).run(sockets=[sock])
    finally:
        sock.close()
