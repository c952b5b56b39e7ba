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
`slimedge build`; it must not import slimedge.) Beside it the bundle carries the files it loads:
server_runtime.py (the llama.cpp runtime shared with `slimedge serve`, and the server; it loads the others),
serve_guard.py (--serve's request checks), machine.py (--bench's machine probes, slimedge's own), and where the
bundle has them vision_runtime.py (images) and draft.py (speculative decoding).

--serve binds 127.0.0.1 unless --host says otherwise; any other host needs an API key (--api-key or the
SLIMEDGE_API_KEY environment variable), which every request must then send as a Bearer token; SIGTERM stops it
gracefully (exit status 143). server_runtime.py's docstring says the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH_DIR = "bench"  # device measurements saved by --bench --json (slimedge report reads them; verify skips them)
RUNTIME = "server_runtime"  # the shared runtime beside this file (its load_sibling loads the other files)
# llama.cpp architectures that only embed (no LM head); others embed when their GGUF states a pooling type
ENCODER_ARCHS = ("bert", "nomic-bert", "nomic-bert-moe", "modern-bert", "jina-bert-v2", "jina-bert-v3", "neo-bert",
                 "eurobert", "gemma-embedding")
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def runtime():
    """server_runtime.py from beside this file, loaded once (as its own load_sibling names it): the one file
    this launcher loads by hand; it loads the others (:func:`load_sibling`)."""
    import importlib.util

    name, path = f"slimedge_{RUNTIME}", HERE / f"{RUNTIME}.py"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.is_file():
            sys.exit(f"run: {path} is missing; rebuild the bundle with `slimedge build`")
        mod = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return sys.modules[name]


def load_sibling(name: str):
    """``name``.py from beside this file (vision_runtime, machine, ...), through server_runtime's loader; a
    missing file ends the run in one line."""
    core = runtime()
    try:
        return core.load_sibling(name)
    except core.ServeError as exc:
        sys.exit(f"run: {exc}")


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
    core = runtime()  # the settings llama-cpp-python takes its own way; adapters and draft on the loaded model
    rt = core.draft_runtime(rt, None if embedding else getattr(args, "draft", None))
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
            kw[key] = core.CACHE_TYPES[rt[name]]
    t0 = time.perf_counter()
    with core.flash_attn_setting(rt):
        llm = Llama(**kw)
    try:
        core.apply_adapters(llm, getattr(args, "adapters", []))
        core.attach_draft(llm, getattr(args, "draft", None), n_ctx=n_ctx, threads=args.threads,
                          n_gpu_layers=args.ngl, verbose=args.verbose)
    except core.ServeError as exc:
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


def bench(args, rt: dict, bs: dict) -> dict:
    """Load, prompt processing (n_prompt random tokens) and generation (n_gen tokens), repeated."""
    import random

    probes = load_sibling("machine")  # slimedge/bench/machine.py, shipped beside this file
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
        gpu_mem = max(gpu_mem, probes.gpu_memory_used())  # while the model is still loaded
        del llm

    def sd(x):
        return statistics.stdev(x) if len(x) > 1 else 0.0

    rss = probes.peak_rss_bytes()
    return {"n_prompt": n_prompt, "n_gen": n_gen, "n_ctx": n_ctx, "repeats": repeats, "n_threads": args.threads or os.cpu_count(),
            "n_gpu_layers": args.ngl, "flash_attn": flash_attn_name(rt), "load_s": statistics.fmean(loads), "load_s_stddev": sd(loads),
            "pp_avg_ts": statistics.fmean(pp), "pp_stddev_ts": sd(pp), "avg_ts": statistics.fmean(tg),
            "stddev_ts": sd(tg), "peak_rss_bytes": rss, "gpu_mem_bytes": gpu_mem or None,
            "note": "peak RSS over all repeats in one process"}


def save_bench(record: dict, man: dict) -> Path:
    """``record`` + this machine as ``bench/<hostname>-<date>.json`` in the bundle (``-2``, ... when taken)."""
    here = load_sibling("machine").machine_info()  # slimedge/bench/machine.py's probes, shipped beside this file
    rec = dict(record, **here, test_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
    srv = runtime()  # --serve's server and its defaults
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
    p.add_argument("--port", type=int, default=srv.DEFAULT_PORT, help=f"--serve port (default {srv.DEFAULT_PORT})")
    p.add_argument("--api-key", default=os.environ.get(srv.API_KEY_ENV) or None,
                   help=f"--serve: require this Bearer token (default: ${srv.API_KEY_ENV})")
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
            srv.serve(HERE / args.model, rt, alias=man.get("name") or Path(args.model).stem, host=args.host,
                  port=args.port, api_key=args.api_key, n_ctx=args.ctx, n_gpu_layers=args.ngl, threads=args.threads,
                  has_template=bool(man.get("chat_template")), verbose=args.verbose, adapters=adapters_of(man),
                  embedding=bool(emb), draft=args.draft, mmproj=args.mmproj, image_dir=args.image_dir,
                  allow_remote_images=args.allow_remote_images,
                  limits=dict(max_tokens=args.max_tokens_limit, max_body_bytes=args.max_body_bytes,
                              max_concurrent=args.max_concurrent))
        except srv.ServeError as exc:
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
