#!/usr/bin/env python3
"""Run this bundle's model with llama-cpp-python, using the settings of the target it was built for.

    ./run "Write a haiku about the sea"          one-shot completion of a prompt
    ./run --chat                                 interactive chat (the model's chat template)
    ./run --bench                                measure load time, prompt and generation speed here
    ./run --help                                 all options (threads, context, GPU layers, ...)

Needs only Python 3.9+ and llama-cpp-python (`pip install llama-cpp-python`); the runtime settings
come from manifest.json next to this file. (This file is copied into every bundle by
`slimedge build`; it must not import slimedge.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}


def load_manifest() -> dict:
    try:
        return json.loads((HERE / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        sys.exit(f"run: cannot read {HERE / 'manifest.json'} ({exc}); is this a slimedge bundle?")


def open_model(args, rt: dict, n_ctx: int, logits_all: bool = False):
    try:
        from llama_cpp import Llama
    except ImportError:
        sys.exit("run: llama-cpp-python is not installed; `pip install llama-cpp-python`")
    kw = dict(model_path=str(HERE / args.model), n_ctx=n_ctx, n_batch=rt.get("n_batch", 512),
              n_ubatch=rt.get("n_ubatch", 512), n_gpu_layers=args.ngl, use_mmap=rt.get("use_mmap", True),
              use_mlock=rt.get("use_mlock", False), flash_attn=rt.get("flash_attn") is not False,
              verbose=args.verbose, logits_all=logits_all, seed=args.seed)
    if args.threads:
        kw["n_threads"] = kw["n_threads_batch"] = args.threads
    for key, name in (("type_k", "cache_type_k"), ("type_v", "cache_type_v")):
        if rt.get(name, "f16") != "f16":
            kw[key] = CACHE_TYPES[rt[name]]
    import llama_cpp.llama_cpp as lib

    enabled = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if rt.get("flash_attn") is None:  # no profile setting: llama.cpp's own default, auto
        lib.LLAMA_FLASH_ATTN_TYPE_ENABLED = lib.LLAMA_FLASH_ATTN_TYPE_AUTO
    t0 = time.perf_counter()
    try:
        llm = Llama(**kw)
    finally:
        lib.LLAMA_FLASH_ATTN_TYPE_ENABLED = enabled
    return llm, time.perf_counter() - t0


def flash_attn_name(rt: dict) -> str:
    fa = rt.get("flash_attn")
    return "auto" if fa is None else ("on" if fa else "off")


def one_shot(llm, args) -> None:
    n = 0
    for chunk in llm(args.prompt, max_tokens=args.max_tokens, temperature=args.temp, stream=True):
        choice = chunk["choices"][0]
        sys.stdout.write(choice["text"])
        sys.stdout.flush()
        n += choice.get("finish_reason") is None  # the closing chunk carries no token
    sys.stdout.write("\n")
    print(f"[{n} tokens]", file=sys.stderr)


def chat(llm, args, has_template: bool) -> None:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("chat: empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            user = input("> ").strip()
        except EOFError:
            break
        if not user:
            break
        messages.append({"role": "user", "content": user})
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

    n_prompt, n_gen, repeats = bs.get("n_prompt", 512), bs.get("n_gen", 128), args.repeats or bs.get("repeats", 3)
    loads, pp, tg = [], [], []
    for r in range(repeats):
        llm, load_s = open_model(args, rt, max(n_prompt + n_gen, 256))
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
        del llm

    def sd(x):
        return statistics.stdev(x) if len(x) > 1 else 0.0

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:  # Linux: this process image's own high-water mark (ru_maxrss may include the parent's)
        rss = next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return {"n_prompt": n_prompt, "n_gen": n_gen, "repeats": repeats, "n_threads": args.threads or os.cpu_count(),
            "n_gpu_layers": args.ngl, "flash_attn": flash_attn_name(rt), "load_s": statistics.fmean(loads), "load_s_stddev": sd(loads),
            "pp_avg_ts": statistics.fmean(pp), "pp_stddev_ts": sd(pp), "avg_ts": statistics.fmean(tg),
            "stddev_ts": sd(tg), "peak_rss_bytes": rss, "note": "peak RSS over all repeats in one process"}


def main(argv=None) -> int:
    man = load_manifest()
    rt, bs = man.get("runtime", {}), man.get("target", {}).get("bench", {})
    p = argparse.ArgumentParser(prog="run", description=f"Run {man.get('name', 'the model')} "
                                f"({man.get('quantization', {}).get('type', '?')}, target {man.get('target', {}).get('name', '?')}).")
    p.add_argument("prompt", nargs="?", help="prompt for a one-shot completion (omit with --chat/--bench)")
    p.add_argument("--chat", action="store_true", help="interactive chat using the model's chat template")
    p.add_argument("--bench", action="store_true", help="measure speed on this device and print JSON")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate (default 256)")
    p.add_argument("--temp", type=float, default=0.7, help="sampling temperature (default 0.7)")
    p.add_argument("--system", default="", help="system prompt for --chat")
    p.add_argument("--threads", type=int, default=rt.get("n_threads") or None, help="CPU threads")
    p.add_argument("--ctx", type=int, default=rt.get("n_ctx", 2048), help="context length")
    p.add_argument("--ngl", type=int, default=rt.get("n_gpu_layers", 0), help="layers on the GPU (-1: all)")
    p.add_argument("--repeats", type=int, default=0, help="--bench repeats (default: the profile's)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--model", default=man.get("model", "model.gguf"), help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    args = p.parse_args(argv)
    if args.bench:
        print(json.dumps(bench(args, rt, bs), indent=2))
        return 0
    if not args.chat and args.prompt is None:
        p.error("give a prompt, --chat or --bench")
    llm, _ = open_model(args, rt, args.ctx)
    if args.chat:
        chat(llm, args, bool(man.get("chat_template")))
    else:
        one_shot(llm, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
