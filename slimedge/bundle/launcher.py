#!/usr/bin/env python3
"""Run this bundle's model with llama-cpp-python, using the settings of the target it was built for.

    ./run "Write a haiku about the sea"          one-shot completion of a prompt
    ./run --chat                                 interactive chat (the model's chat template)
    ./run --embed "some text"                    an embedding bundle: print the text's vector (JSON)
    ./run --image photo.jpg "What is in it?"     a bundle with a vision projector (mmproj): ask about an image
                                                 (in --chat: a line `/image PATH` attaches one to the next turn)
    ./run --bench [--json]                       measure load time, prompt and generation speed here
                                                 (--json: also save bench/<hostname>-<date>.json here)
    ./run --serve [--port 8080] [--host H]       OpenAI-compatible server (llama-cpp-python's own)
    ./run --help                                 all options (threads, context, GPU layers, ...)

Needs only Python 3.9+ and llama-cpp-python (`pip install llama-cpp-python`; `--serve` also needs its
server extra's packages: uvicorn, fastapi, sse-starlette, starlette-context, pydantic-settings); the
runtime settings come from manifest.json next to this file. (This file is copied into every bundle by
`slimedge build`; it must not import slimedge. `slimedge serve` imports :func:`serve` from here, so
bundles and the command line run the same server code.)

The server binds 127.0.0.1 unless --host says otherwise; any other host needs an API key (--api-key or
the SLIMEDGE_API_KEY environment variable), which every request must then send as a Bearer token. The
socket is bound before the model loads (a taken port is one line, at once). SIGTERM shuts it down
gracefully (requests in flight finish) and the exit status is 143.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import resource
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}
BENCH_DIR = "bench"  # device measurements saved by --bench --json (slimedge report reads them; verify skips them)
API_KEY_ENV = "SLIMEDGE_API_KEY"
DEFAULT_PORT = 8080
# llama.cpp architectures that only embed (no LM head); others embed when their GGUF states a pooling type
ENCODER_ARCHS = ("bert", "nomic-bert", "nomic-bert-moe", "modern-bert", "jina-bert-v2", "jina-bert-v3", "neo-bert",
                 "eurobert", "gemma-embedding")
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


class ServeError(Exception):
    """A user error of --serve (one line, naming what to change)."""


def load_manifest() -> dict:
    try:
        return json.loads((HERE / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        sys.exit(f"run: cannot read {HERE / 'manifest.json'} ({exc}); is this a slimedge bundle?")


def embedding_of(meta: dict) -> dict | None:
    """``{"pooling", "normalize"}`` when GGUF metadata ``meta`` is an embedding model's, else None."""
    arch = meta.get("general.architecture")
    pooling = meta.get(f"{arch}.pooling_type")
    if pooling is None and arch not in ENCODER_ARCHS:
        return None
    normalize = meta.get("slimedge.embedding.normalize", True)
    return {"pooling": POOLING_NAMES.get(int(pooling or 0), str(pooling)),
            "normalize": normalize if isinstance(normalize, bool) else str(normalize).lower() == "true"}


def embed(llm, text: str, normalize: bool) -> list:
    """The text's pooled vector; a text longer than the context is refused in one line."""
    import llama_cpp

    n = len(llm.tokenize(text.encode("utf-8")))
    n_ctx = min(llm.n_ctx(), llama_cpp.llama_model_n_ctx_train(llm.model))  # positions past training: none
    if n > n_ctx:
        sys.exit(f"run: the text is {n} tokens, more than the model's context of {n_ctx}: shorten it")
    return llm.embed(text, normalize=normalize)


def open_model(args, rt: dict, n_ctx: int, logits_all: bool = False, embedding: bool = False):
    try:
        from llama_cpp import Llama
    except ImportError:
        sys.exit("run: llama-cpp-python is not installed; `pip install llama-cpp-python`")
    kw = dict(model_path=str(HERE / args.model), n_ctx=n_ctx, n_batch=rt.get("n_batch", 512),
              n_ubatch=rt.get("n_ubatch", 512), n_gpu_layers=args.ngl, use_mmap=rt.get("use_mmap", True),
              use_mlock=rt.get("use_mlock", False), flash_attn=rt.get("flash_attn") is not False,
              swa_full=rt.get("swa_full", True), verbose=args.verbose, logits_all=logits_all, seed=args.seed)
    if embedding:  # an encoder takes the whole text in one micro-batch
        kw.update(embedding=True, n_batch=n_ctx, n_ubatch=n_ctx)
    if getattr(args, "mmproj", None):  # images: libmtmd through llama-cpp-python's multimodal chat handler
        kw["chat_handler"] = load_sibling("vision_runtime").make_handler(args.mmproj, use_gpu=args.ngl != 0,
                                                                         verbose=args.verbose)
    if args.threads:
        kw["n_threads"] = kw["n_threads_batch"] = args.threads
    for key, name in (("type_k", "cache_type_k"), ("type_v", "cache_type_v")):
        if rt.get(name, "f16") != "f16":
            kw[key] = CACHE_TYPES[rt[name]]
    t0 = time.perf_counter()
    with flash_attn_setting(rt):
        llm = Llama(**kw)
    try:
        apply_adapters(llm, getattr(args, "adapters", []))
        attach_draft(llm, getattr(args, "draft", None), n_ctx=n_ctx, threads=args.threads, n_gpu_layers=args.ngl,
                     verbose=args.verbose)
    except ServeError as exc:
        llm.close()
        sys.exit(f"run: {exc}")
    return llm, time.perf_counter() - t0


def adapters_of(man: dict, folder: Path = HERE) -> list:
    """(path, scale) of the bundle's LoRA adapters (manifest ``adapters``, role "adapter")."""
    return [(folder / e["file"], float(e.get("scale", 1.0))) for e in man.get("adapters", [])]


def mmproj_of(man: dict, folder: Path = HERE) -> Path | None:
    """The bundle's vision projector (manifest ``mmproj``, role "mmproj"), or None."""
    e = man.get("mmproj")
    return folder / e["file"] if e else None


def draft_of(man: dict, folder: Path = HERE) -> dict | None:
    """The bundle's speculative draft (manifest ``draft``, role "draft") as ``{"path", "draft_max"}``, or None."""
    e = man.get("draft")
    return {"path": folder / e["file"], "draft_max": int(e.get("draft_max", 8))} if e else None


def attach_draft(llm, draft: dict | None, *, n_ctx: int, threads: int | None, n_gpu_layers: int = 0,
                 verbose: bool = False):
    """Decode ``llm`` speculatively: the draft GGUF runs in its own llama.cpp context (draft.py's GGUFDraft, from
    beside this file) and proposes tokens that ``llm`` checks in one batch (llama-cpp-python's draft-model
    hook, which needs every position's logits). Returns the draft, or None without one."""
    if not draft:
        return None
    import importlib.util

    import numpy as np

    path = HERE / "draft.py"
    spec = importlib.util.spec_from_file_location("slimedge_draft", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ServeError(f"{path} is missing; rebuild the bundle with `slimedge build --draft`")
    mod = sys.modules.get(spec.name)
    if mod is None:
        mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
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


def flash_attn_name(rt: dict) -> str:
    fa = rt.get("flash_attn")
    return "auto" if fa is None else ("on" if fa else "off")


def one_shot(llm, args) -> None:
    n = 0
    if args.image:  # a chat turn with the images (the model's template places libmtmd's image tokens)
        return load_sibling("vision_runtime").ask(llm, args.prompt, args.image, args.max_tokens, args.temp)
    for chunk in llm(args.prompt, max_tokens=args.max_tokens, temperature=args.temp, stream=True):
        choice = chunk["choices"][0]
        sys.stdout.write(choice["text"])
        sys.stdout.flush()
        n += choice.get("finish_reason") is None  # the closing chunk carries no token
    sys.stdout.write("\n")
    st = getattr(getattr(llm, "draft_model", None), "stats", None)  # a bundle's draft: how often it was right
    spec = (f"; draft: {st.accepted}/{st.proposed} accepted ({100 * st.acceptance:.0f}%), "
            f"{st.accepted_per_step:.2f} per step" if st is not None else "")
    print(f"[{n} tokens{spec}]", file=sys.stderr)


def chat(llm, args, has_template: bool) -> None:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    vision = load_sibling("vision_runtime") if getattr(args, "mmproj", None) else None
    images = list(args.image or [])
    print("chat: empty line or Ctrl-D to quit" + ("; /image PATH attaches an image" if vision else ""), file=sys.stderr)
    while True:
        try:
            user = input("> ").strip()
        except EOFError:
            break
        if not user:
            break
        if vision and vision.attach(user, images):  # a "/image PATH" line: the image waits for the next turn
            continue
        messages.append(vision.user_message(user, images) if vision else {"role": "user", "content": user})
        images = []
        if has_template:
            stream = llm.create_chat_completion(messages=messages, max_tokens=args.max_tokens,
                                                temperature=args.temp, stream=True)
            pieces = [c["choices"][0]["delta"].get("content", "") for c in stream if c["choices"]]
        else:  # no chat template in the model: a plain transcript
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            pieces = [c["choices"][0]["text"] for c in llm(prompt, max_tokens=args.max_tokens,
                                                           temperature=args.temp, stop=["\nuser:"], stream=True)]
        reply = "".join(pieces)
        print(reply)
        messages.append({"role": "assistant", "content": reply})


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


def load_sibling(name: str):
    """``name``.py from beside this file (a bundle carries copies: serve_guard, vision_runtime; slimedge has
    them in slimedge/bundle), loaded once."""
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


def bench(args, rt: dict, bs: dict) -> dict:
    """Load, prompt processing (n_prompt random tokens) and generation (n_gen tokens), repeated."""
    import random

    n_prompt, n_gen, repeats = bs.get("n_prompt", 512), bs.get("n_gen", 128), args.repeats or bs.get("repeats", 3)
    n_ctx = max(args.ctx, n_prompt + n_gen)
    loads, pp, tg, gpu_mem = [], [], [], 0
    for r in range(repeats):
        llm, load_s = open_model(args, rt, n_ctx)  # the profile's context: memory comparable to the estimate
        rng = random.Random(r)
        prompt = [rng.randrange(llm.n_vocab()) for _ in range(n_prompt)]
        gen = [rng.randrange(llm.n_vocab()) for _ in range(n_gen)]
        llm.eval(prompt[:16])
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        pp.append(n_prompt / (time.perf_counter() - t0))
        llm.reset()
        t0 = time.perf_counter()
        for tok in gen:
            llm.eval([tok])
        tg.append(n_gen / (time.perf_counter() - t0))
        loads.append(load_s)
        gpu_mem = max(gpu_mem, gpu_memory_used())  # while the model is still loaded
        del llm

    def sd(x):
        return statistics.stdev(x) if len(x) > 1 else 0.0

    rss = peak_rss_bytes()
    return {"n_prompt": n_prompt, "n_gen": n_gen, "n_ctx": n_ctx, "repeats": repeats, "n_threads": args.threads or os.cpu_count(),
            "n_gpu_layers": args.ngl, "flash_attn": flash_attn_name(rt), "load_s": statistics.fmean(loads), "load_s_stddev": sd(loads),
            "pp_avg_ts": statistics.fmean(pp), "pp_stddev_ts": sd(pp), "avg_ts": statistics.fmean(tg),
            "stddev_ts": sd(tg), "peak_rss_bytes": rss, "gpu_mem_bytes": gpu_mem or None,
            "note": "peak RSS over all repeats in one process"}


# ---- machine probes: a verbatim copy of slimedge/bench/machine.py's (tests/bundle/test_launcher_probes.py) ----

def _cmd(*argv: str) -> str:
    """A command's stripped standard output, "" when it is missing or fails."""
    import subprocess

    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: Linux ``VmHWM`` (this process image's own high-water mark;
    ``ru_maxrss`` carries the parent's across fork+exec), elsewhere ``ru_maxrss`` (macOS: bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def gpu_memory_used() -> int:
    """GPU memory this process holds now (NVIDIA: nvidia-smi's per-process figure), 0 when unknown."""
    out = _cmd("nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip() == str(os.getpid()) and mib.strip().isdigit():
            return int(mib) << 20
    return 0


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, macOS sysctl, then the platform module)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                return val.strip()
    except OSError:
        pass
    return _cmd("sysctl", "-n", "machdep.cpu.brand_string") or platform.processor() or platform.machine()


def machine_info() -> dict:
    """This device and llama.cpp build, with the field names of bench records."""
    import llama_cpp

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    gpu_info = _cmd("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader").replace("\n", "; ")
    if not gpu_info and gpu and sys.platform == "darwin":
        gpu_info = f"{cpu_model()} (Metal)"
    return {"hostname": socket.gethostname(), "cpu_info": cpu_model(), "n_cores": os.cpu_count() or 1,
            "gpu_info": gpu_info or None, "platform": f"{platform.system()} {platform.machine()}",
            "build_commit": f"llama-cpp-python {llama_cpp.__version__}", "backends": "GPU" if gpu else "CPU",
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}

# ---- end of the machine probes ----


def save_bench(record: dict, man: dict) -> Path:
    """``record`` + this machine as ``bench/<hostname>-<date>.json`` in the bundle (``-2``, ... when taken)."""
    rec = dict(record, **machine_info(), test_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               model_filename=man.get("model", "model.gguf"), model_type=man.get("quantization", {}).get("type"),
               source="run --bench --json")
    folder = HERE / BENCH_DIR
    folder.mkdir(exist_ok=True)
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in rec["hostname"]) or "host"
    stem, n = f"{host}-{time.strftime('%Y-%m-%d')}", 1
    while (folder / f"{stem}{'' if n == 1 else f'-{n}'}.json").exists():
        n += 1
    out = folder / f"{stem}{'' if n == 1 else f'-{n}'}.json"
    tmp = folder / f".{out.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    man = load_manifest()
    rt, bs = man.get("runtime", {}), man.get("target", {}).get("bench", {})
    p = argparse.ArgumentParser(prog="run", description=f"Run {man.get('name', 'the model')} "
                                f"({man.get('quantization', {}).get('type', '?')}, target {man.get('target', {}).get('name', '?')}).")
    p.add_argument("prompt", nargs="?", help="prompt for a one-shot completion (omit with --chat/--bench)")
    p.add_argument("--chat", action="store_true", help="interactive chat using the model's chat template")
    p.add_argument("--embed", metavar="TEXT", help="an embedding bundle: print TEXT's vector as JSON")
    p.add_argument("--bench", action="store_true", help="measure speed on this device and print JSON")
    p.add_argument("--json", action="store_true", help=f"with --bench: also save the result in {BENCH_DIR}/ "
                   "here (<hostname>-<date>.json) for `slimedge report`")
    p.add_argument("--serve", action="store_true", help="OpenAI-compatible HTTP server (llama-cpp-python's)")
    p.add_argument("--host", default="127.0.0.1", help="--serve address (default 127.0.0.1; any other "
                   "needs --api-key)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"--serve port (default {DEFAULT_PORT})")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                   help=f"--serve: require this Bearer token (default: ${API_KEY_ENV})")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate (default 256)")
    p.add_argument("--max-tokens-limit", type=int, help="--serve: most tokens one request may generate "
                   "(default 2048; also what a chat without max_tokens gets)")
    p.add_argument("--max-body-bytes", type=int, help="--serve: largest request body (default 4 MiB)")
    p.add_argument("--max-concurrent", type=int, help="--serve: requests in flight before more get HTTP 429 "
                   "(default 16)")
    p.add_argument("--temp", type=float, default=0.7, help="sampling temperature (default 0.7)")
    p.add_argument("--system", default="", help="system prompt for --chat")
    p.add_argument("--threads", type=int, default=rt.get("n_threads") or None, help="CPU threads")
    p.add_argument("--ctx", type=int, default=rt.get("n_ctx", 2048), help="context length")
    p.add_argument("--ngl", type=int, default=rt.get("n_gpu_layers", 0), help="layers on the GPU (-1: all)")
    p.add_argument("--repeats", type=int, default=0, help="--bench repeats (default: the profile's)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--image", action="append", metavar="PATH", help="a bundle with a vision projector: an image "
                   "for the prompt (repeatable; with --chat: for the first turn)")
    p.add_argument("--image-dir", metavar="DIR", help="--serve: local image files under DIR may be sent "
                   "(file:// URLs or paths); default: data URLs only")
    p.add_argument("--allow-remote-images", action="store_true", help="--serve: fetch http(s) image URLs")
    p.add_argument("--no-draft", action="store_true", help="decode without the bundle's draft model "
                   "(speculative decoding is on when the bundle has one)")
    p.add_argument("--model", default=man.get("model", "model.gguf"), help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    args = p.parse_args(argv)
    args.adapters = adapters_of(man)
    args.draft = None if args.no_draft or args.bench else draft_of(man)
    args.mmproj = None if args.bench else mmproj_of(man)
    emb = man.get("embedding")
    if args.image and not args.mmproj:
        sys.exit("run: --image needs a bundle with a vision projector (slimedge build VLM_DIR, or --mmproj FILE)")
    if args.image and not man.get("chat_template"):
        sys.exit("run: the model has no chat template, which places the image in the prompt; --image needs one")
    if args.image:
        try:
            args.image = load_sibling("vision_runtime").read_images(args.image)
        except ValueError as exc:
            sys.exit(f"run: {exc}")
    if emb and (args.chat or args.prompt is not None or args.bench):
        sys.exit(f"run: {man.get('name', 'this model')} is an embedding model: use --embed TEXT, or --serve for "
                 "/v1/embeddings")
    if args.embed is not None:
        if not emb:
            sys.exit("run: --embed needs an embedding bundle; this model generates text (give a prompt or --chat)")
        llm, _ = open_model(args, rt, args.ctx, embedding=True)
        print(json.dumps(embed(llm, args.embed, bool(emb.get("normalize", True)))))
        return 0
    if args.bench:
        rec = bench(args, rt, bs)
        if args.json:
            out = save_bench(rec, man)
            rec = json.loads(out.read_text(encoding="utf-8"))
            print(f"run: saved {out}", file=sys.stderr)
        print(json.dumps(rec, indent=2))
        return 0
    if args.serve:
        try:
            serve(HERE / args.model, rt, alias=man.get("name") or Path(args.model).stem, host=args.host,
                  port=args.port, api_key=args.api_key, n_ctx=args.ctx, n_gpu_layers=args.ngl, threads=args.threads,
                  has_template=bool(man.get("chat_template")), verbose=args.verbose, adapters=adapters_of(man),
                  embedding=bool(emb), draft=args.draft, mmproj=args.mmproj, image_dir=args.image_dir,
                  allow_remote_images=args.allow_remote_images,
                  limits=dict(max_tokens=args.max_tokens_limit, max_body_bytes=args.max_body_bytes,
                              max_concurrent=args.max_concurrent))
        except ServeError as exc:
            sys.exit(f"run: {exc}")
        return 0
    if not args.chat and args.prompt is None:
        p.error("give a prompt, --chat or --bench (or --serve)")
    llm, _ = open_model(args, rt, args.ctx)
    if args.chat:
        chat(llm, args, bool(man.get("chat_template")))
    else:
        one_shot(llm, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
