"""One measurement through llama.cpp, run in a fresh process: ``python -m slimedge.bench.child JOB.json``.

The job file says what to do; the result is written as JSON to ``job["result"]`` (stdout/stderr
belong to llama.cpp's logging). Two kinds of job:

* ``speed`` — load the model (timed), warm up, then the prompt-processing test (``n_prompt``
  random tokens in ``n_batch`` batches, like llama-bench's ``pp``) and the generation test
  (``n_gen`` single-token decodes, like ``tg``); reports seconds, peak RSS (VmHWM) and
  the machine/llama.cpp build.
* ``load`` — load the model and decode a few tokens (``slimedge verify``).
* ``spec`` — greedy generation with and without a bundle's draft model (:mod:`slimedge.bench.speculative`).
* ``embed`` — an embedding model: load it with ``embedding=True``, embed ``job["sentences"]`` once to
  warm up, then ``repeats`` timed passes over all of them; reports the vectors, tokens and seconds.
* ``logits`` — perplexity-style pass: the text's tokens cut into ``n_ctx`` chunks, the first
  token of each replaced by BOS (when the model adds one), logits for every position; the
  log-softmax rows of the scored second half (positions ``n_ctx//2 .. n_ctx-2``, each predicting
  the next token) go to an ``.npy`` file (float32, ``[n_chunks, n_ctx - 1 - n_ctx//2, n_vocab]``)
  and the tokens to another. :mod:`slimedge.bench.quality` turns these into PPL/KL numbers.

Only numpy, llama_cpp and the machine probes (:mod:`slimedge.bench.machine`, standard library only) are
imported here, so the measured process stays small.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .machine import machine_info, peak_rss_bytes


def _open(job: dict, **extra):
    """A ``llama_cpp.Llama`` for the job; ``job["flash_attn"]`` is ``auto``, ``on`` or ``off``.

    llama-cpp-python's ``Llama`` takes flash attention as a bool (enabled/disabled) while llama.cpp's
    own tools default to ``auto`` (on wherever the backend supports it): for ``auto`` the context is
    created with llama.cpp's AUTO value in place of ENABLED. This runs in a child process of its own.
    """
    import llama_cpp
    from llama_cpp import llama_cpp as lib

    fa = job.get("flash_attn")
    mode = "auto" if fa is None else ("on" if fa else "off") if isinstance(fa, bool) else fa
    kw = dict(model_path=job["model"], n_ctx=job["n_ctx"], n_batch=job["n_batch"], n_ubatch=job["n_ubatch"],
              n_threads=job["n_threads"], n_threads_batch=job["n_threads"], n_gpu_layers=job["n_gpu_layers"],
              use_mmap=job.get("use_mmap", True), flash_attn=mode != "off", seed=1234,
              swa_full=job.get("swa_full", True), verbose=bool(job.get("verbose", False)))
    for k in ("type_k", "type_v"):
        if job.get(k) is not None:
            kw[k] = job[k]
    kw.update(extra)
    enabled = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if mode == "auto":
        lib.LLAMA_FLASH_ATTN_TYPE_ENABLED = lib.LLAMA_FLASH_ATTN_TYPE_AUTO
    try:
        return llama_cpp.Llama(**kw)
    finally:
        lib.LLAMA_FLASH_ATTN_TYPE_ENABLED = enabled


def run_speed(job: dict) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    llm = _open(job)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    rng = np.random.default_rng(job.get("seed", 0))
    # random ids from the ordinary vocabulary (llama-bench feeds random tokens too)
    prompt = rng.integers(0, n_vocab, size=job["n_prompt"]).tolist()
    gen = rng.integers(0, n_vocab, size=job["n_gen"]).tolist()

    llm.eval(prompt[: min(16, len(prompt))])  # warm-up: page in weights, build graphs
    llm.eval(gen[:1])
    llm.reset()

    t0 = time.perf_counter()
    llm.eval(prompt)
    pp_s = time.perf_counter() - t0
    llm.reset()

    t0 = time.perf_counter()
    for tok in gen:
        llm.eval([tok])
    tg_s = time.perf_counter() - t0
    return {"load_s": load_s, "pp_s": pp_s, "tg_s": tg_s, "n_prompt": len(prompt), "n_gen": len(gen),
            "n_vocab": n_vocab, "peak_rss_bytes": peak_rss_bytes(), "machine": machine_info()}


def run_logits(job: dict) -> dict:
    import numpy as np

    n_ctx = job["n_ctx"]
    llm = _open(job, logits_all=True)
    text = Path(job["text"]).read_text(encoding="utf-8", errors="replace")
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    n_chunks = len(tokens) // n_ctx
    if job.get("max_chunks"):
        n_chunks = min(n_chunks, int(job["max_chunks"]))
    result = {"n_tokens": len(tokens), "n_chunks": n_chunks, "n_vocab": llm.n_vocab(),
              "add_bos": bool(llm._model.add_bos_token()) if hasattr(llm._model, "add_bos_token") else True}
    if n_chunks == 0:
        return result
    add_bos = result["add_bos"]
    bos = llm.token_bos()
    first = n_ctx // 2
    n_scored = n_ctx - 1 - first
    out = np.lib.format.open_memmap(job["logprobs"], mode="w+", dtype=np.float32,
                                    shape=(n_chunks, n_scored, llm.n_vocab()))
    toks = np.asarray(tokens[: n_chunks * n_ctx], dtype=np.int32).reshape(n_chunks, n_ctx)
    for c in range(n_chunks):
        chunk = toks[c].tolist()
        if add_bos:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[first: n_ctx - 1], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        out[c] = (logits - lse).astype(np.float32)
    out.flush()
    np.save(job["tokens"], toks)
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def run_embed(job: dict) -> dict:
    """Pooled vectors of the job's sentences (one batch per sentence, as llama-cpp-python embeds), timed."""
    t0 = time.perf_counter()
    llm = _open(job, embedding=True)
    load_s = time.perf_counter() - t0
    sentences = job["sentences"]
    n_tokens = sum(len(llm.tokenize(s.encode("utf-8"))) for s in sentences)
    vectors = llm.embed(sentences, normalize=False)
    secs = []
    for _ in range(job.get("repeats", 1)):
        t0 = time.perf_counter()
        llm.embed(sentences, normalize=False)
        secs.append(time.perf_counter() - t0)
    return {"vectors": vectors, "n_tokens": n_tokens, "seconds": secs, "load_s": load_s,
            "peak_rss_bytes": peak_rss_bytes(), "machine": machine_info()}


def run_load(job: dict) -> dict:
    """Load the model and decode a few tokens (an embedding model: embed them): proves llama.cpp accepts the file;
    with ``job["mmproj"]``, libmtmd loads that vision projector against it too."""
    from .embed import is_embedding

    llm = _open(job)
    toks = llm.tokenize(b"Hello, world", add_bos=True)
    if is_embedding(llm.metadata):  # an encoder has no KV cache to decode into: reopen it for embeddings
        llm.close()
        llm = _open(job, embedding=True)
        llm.embed("Hello, world")
    else:
        llm.eval(toks)
    if job.get("mmproj"):  # a vision projector: libmtmd loads it against this model (it checks the pair's width)
        import llama_cpp.mtmd_cpp as mtmd

        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings = job.get("n_gpu_layers", 0) != 0, job["n_threads"], False
        ctx = mtmd.mtmd_init_from_file(str(job["mmproj"]).encode(), llm.model, params)
        if not ctx:
            raise RuntimeError(f"libmtmd cannot load the vision projector {job['mmproj']} with this model")
        mtmd.mtmd_free(ctx)
    return {"n_vocab": llm.n_vocab(), "n_tokens": len(toks), "n_ctx_train": llm._model.n_ctx_train(),
            "peak_rss_bytes": peak_rss_bytes()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    try:
        from .speculative import run_spec

        kinds = {"speed": run_speed, "logits": run_logits, "load": run_load, "embed": run_embed,
                 "spec": lambda j: run_spec(j, _open)}
        res = kinds[job["kind"]](job)
        res["ok"] = True
    except Exception as exc:  # reported to the parent, which raises a SlimedgeError
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    tmp = job["result"] + ".tmp"
    Path(tmp).write_text(json.dumps(res))
    os.replace(tmp, job["result"])
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
