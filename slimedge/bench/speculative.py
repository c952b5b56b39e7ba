"""Speculative decoding measured: a bundle with a draft model (manifest ``draft``), with and without it.

Each repeat is one fresh child process (job kind ``spec``, :func:`run_spec`): the bundle's model generates
``n_gen`` tokens greedily after each of :data:`PROMPTS`, first alone, then with the bundle's draft (the
GGUFDraft class from the bundle's own ``draft.py``, as its launcher runs it), both through llama-cpp-python's
``Llama.generate`` on the same prompts. Reported: generation tokens/s with and without the draft (mean ±
stddev over repeats) and their ratio, the draft's acceptance rate (accepted / proposed tokens), mean accepted
tokens per target step, whether the greedy tokens were identical, and the draft's file size beside the
model's. Only numpy and llama_cpp are used in the child (this module is imported there).
"""

from __future__ import annotations

import time
from pathlib import Path

PROMPTS = ("The history of the city begins", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three most important things to know about")

FIELDS = ("draft_model", "draft_size", "draft_avg_ts", "draft_stddev_ts", "nodraft_avg_ts", "nodraft_stddev_ts",
          "draft_speedup", "draft_acceptance", "draft_accepted_per_step", "draft_same_output")


def _generate(llm, n_gen: int) -> tuple[list[list[int]], float]:
    """Greedy tokens after each prompt and the seconds spent generating them (prompt evaluation excluded:
    the first token of each run is sampled before the clock starts)."""
    outs, secs = [], 0.0
    for text in PROMPTS:
        toks = llm.tokenize(text.encode("utf-8"), add_bos=True)
        llm.reset()
        gen = llm.generate(toks, temp=0.0, top_k=1, reset=True)
        out = [int(next(gen))]
        t0 = time.perf_counter()
        for tok in gen:
            out.append(int(tok))
            if len(out) == n_gen + 1:
                break
        secs += time.perf_counter() - t0
        outs.append(out)
    return outs, secs


def run_spec(job: dict, open_model) -> dict:
    """The child's side: ``open_model(job, **extra)`` opens the target (see :mod:`.child`)."""
    import importlib.util
    import sys

    llm = open_model(job)
    plain, plain_s = _generate(llm, job["n_gen"])
    llm.close()
    spec = importlib.util.spec_from_file_location("slimedge_bundle_draft", job["draft_py"])
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # registered: it defines a dataclass
    spec.loader.exec_module(mod)
    draft = mod.GGUFDraft(job["draft"], n_ctx=job["n_ctx"], n_threads=job["n_threads"], k_max=job["draft_max"],
                          n_gpu_layers=job["n_gpu_layers"])
    llm = open_model(job, draft_model=draft)
    with_draft, spec_s = _generate(llm, job["n_gen"])
    st = draft.stats
    llm.close()
    draft.close()
    n = job["n_gen"] * len(PROMPTS)
    return {"nodraft_ts": n / plain_s, "draft_ts": n / spec_s, "same": plain == with_draft, "proposed": st.proposed,
            "accepted": st.accepted, "steps": st.steps}


def draft_of(bundle: Path, manifest: dict, draft: str | Path | None = None, draft_max: int = 8):
    """(draft GGUF, its draft-model class file, drafted tokens per step) to measure, or None: ``draft`` given
    (a GGUF beside a plain model: the class is slimedge's own, what bundles ship), else a bundle's own."""
    if draft is not None:
        return Path(draft), Path(__file__).resolve().parents[1] / "bundle" / "draft.py", int(draft_max)
    d = manifest.get("draft")
    if not d:
        return None
    return bundle / d["file"], bundle / "draft.py", int(d.get("draft_max", 8))


def measure(rec: dict, model: Path, pair: tuple, common: dict, n_gen: int, repeats: int, progress) -> None:
    """Fill ``rec``'s :data:`FIELDS` for ``model`` with ``pair`` (:func:`draft_of`), ``repeats`` children."""
    from .process import mean_sd, run_child

    draft, draft_py, draft_max = pair
    job = dict(common, kind="spec", model=str(model), draft=str(draft), draft_py=str(draft_py),
               draft_max=draft_max, n_gen=n_gen, n_ctx=max(512, 64 + n_gen + 16))
    if job.get("flash_attn") == "off":  # as run/serve with a draft (server_runtime.draft_runtime): identical tokens
        job["flash_attn"] = "on"
    plain, fast, same, prop, acc, steps = [], [], True, 0, 0, 0
    for _ in range(repeats):
        r = run_child(job)
        plain.append(r["nodraft_ts"])
        fast.append(r["draft_ts"])
        same, prop, acc, steps = same and r["same"], prop + r["proposed"], acc + r["accepted"], steps + r["steps"]
        progress.update(1, label=f"draft {fast[-1]:.1f} t/s")
    rec["draft_avg_ts"], rec["draft_stddev_ts"] = mean_sd(fast)
    rec["nodraft_avg_ts"], rec["nodraft_stddev_ts"] = mean_sd(plain)
    rec.update(draft_model=str(draft), draft_size=draft.stat().st_size,
               draft_speedup=rec["draft_avg_ts"] / rec["nodraft_avg_ts"],
               draft_acceptance=acc / prop if prop else 0.0, draft_accepted_per_step=acc / steps if steps else 0.0,
               draft_same_output=same)
