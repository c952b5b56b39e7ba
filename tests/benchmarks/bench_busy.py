"""Benchmark: the torch commands on a busy machine — slimedge's thread policy against the runtimes' own defaults.

Four workloads on the shipped demo teacher (slimedge/data/demo-teacher), each a fixed small amount of work timed
in a fresh process (OpenMP reads its environment when it loads, so each run starts clean):

* ``tune``      — ``slimedge.tune.tune`` on the teacher's Q4_K_M, ``--steps`` optimizer steps (steps/s of the
                  steps alone: TuneResult.step_seconds);
* ``distill``   — ``slimedge.distill.distill``, a 2-layer student, ``--steps`` steps of 8 x 256 tokens
                  (steps/s of the training loop: the report's train_time_s);
* ``imatrix``   — ``slimedge.calib.compute_imatrix_tokens`` over 4 x ``--steps`` sequences of 256 tokens (after
                  a one-sequence warm-up: imports, model load);
* ``sensitivity`` — ``slimedge.calib.sensitivity.measure`` (the ``--type auto`` stage) for 2 x ``--steps``
                  (tensor, type) pairs over 2 x 256 tokens, after a one-pair warm-up;
* ``decode``    — llama.cpp in the same process, as ``slimedge run``/``serve``/``chat`` use it (the command line's
                  ``configure()`` first, ``llama_threads()`` threads): greedy decoding of 40 x ``--steps`` tokens
                  of the teacher's Q4_K_M (ggml's OpenMP barriers, hundreds per token, share torch's runtime and
                  its wait policy).

Each runs in three conditions: ``idle`` (whatever else the machine runs), ``busy`` (a one-core CPU hog,
``python -c "while True: pass"``, running beside it) and ``taskset`` (``taskset -c 0``: one CPU, no hog); and
two ways: ``policy`` (slimedge's thread policy, slimedge/threads.py) and ``off`` (``SLIMEDGE_THREADS=off``: torch's,
OpenMP's and the kernels' own defaults, as before the policy). Printed side by side: rates, busy/idle (goal
≥ 0.4x: half the cores are gone, ~0.5x is fair) and taskset/busy (goal ≥ 1: no slower than busy), and the
busy rate of the policy over that of ``off``.

    python tests/benchmarks/bench_busy.py [--steps 15] [--only tune,distill] [--out bench-busy]

A shared machine is never idle: the "idle" column is measured as found (the load average is printed with it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = ("tune", "distill", "imatrix", "sensitivity", "decode")
CONDITIONS = ("idle", "busy", "taskset")
MODES = ("policy", "off")
UNITS = {"tune": "steps/s", "distill": "steps/s", "imatrix": "seq/s", "sensitivity": "pairs/s", "decode": "tok/s"}


# --- the child: one workload, timed ----------------------------------------------------------------------------

def _prepare(out: Path) -> tuple[Path, Path, Path]:
    """(teacher folder, its Q4_K_M GGUF, the calibration text), written once into ``out``."""
    from slimedge.convert import convert
    from slimedge.demo import corpus
    from slimedge.demo.pipeline import shipped_teacher
    from slimedge.quant.mixes import QuantSpec

    out.mkdir(parents=True, exist_ok=True)
    teacher, text, q4 = shipped_teacher(), out / "train.txt", out / "teacher-Q4_K_M.gguf"
    if not text.is_file():
        text.write_text(corpus.train_text()[:300_000])
    if not q4.is_file():
        convert(teacher, q4, QuantSpec("Q4_K_M"), overwrite=True)
    return teacher, q4, text


def _tune(teacher, q4, text, steps: int, tmp: Path) -> float:
    from slimedge.tune import TuneConfig, tune

    r = tune(TuneConfig(gguf=str(q4), teacher=str(teacher), data=str(text), output=str(tmp / "tuned.gguf"),
                        steps=steps, seq_len=256, eval_blocks=1, checkpoint_every=0, overwrite=True))
    return steps / r.step_seconds


def _distill(teacher, q4, text, steps: int, tmp: Path) -> float:
    from slimedge.distill.api import distill
    from slimedge.distill.config import DistillConfig

    cfg = DistillConfig(teacher=str(teacher), data=str(text), output=str(tmp / "student"), overwrite=True,
                        token_cache=str(tmp / "tokens"), layers=2, seq_len=256, steps=steps, batch_size=8,
                        lr=1e-3, max_eval_blocks=1, eval_fraction=0.02, device="cpu", precision="fp32")
    return steps / distill(cfg).report["train_time_s"]


def _imatrix(teacher, q4, text, steps: int, tmp: Path) -> float:
    from slimedge.calib.imatrix import chunk_tokens, compute_imatrix_tokens, tokenize

    ids, bos = tokenize(teacher, text.read_text())
    chunks = chunk_tokens(ids, bos, 256, 4 * steps)
    compute_imatrix_tokens(teacher, chunks[:1])  # warm-up: imports, model load, first-call costs
    t0 = time.perf_counter()
    compute_imatrix_tokens(teacher, chunks)
    return len(chunks) / (time.perf_counter() - t0)


def _sensitivity(teacher, q4, text, steps: int, tmp: Path) -> float:
    from slimedge.calib.sensitivity import measure
    from slimedge.convert import plan
    from slimedge.quant.allocate import candidate_types, quantizable

    pairs = [(t.name, c) for t in quantizable(plan(teacher)) for c in candidate_types(t.name, t.shape)][:2 * steps]
    types: dict[str, list[str]] = {}
    for name, c in pairs:
        types.setdefault(name, []).append(c)
    words = text.read_text()[:40_000]
    measure(teacher, {pairs[0][0]: [pairs[0][1]]}, words, chunks=2)  # warm-up
    t0 = time.perf_counter()
    measure(teacher, types, words, chunks=2)
    return len(pairs) / (time.perf_counter() - t0)


def _decode(teacher, q4, text, steps: int, tmp: Path) -> float:
    from slimedge.threads import configure, llama_threads

    configure()  # what the command line does before any command, run and serve included
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(q4), n_ctx=1024, n_threads=llama_threads(), verbose=False)
    gen = llm.generate([1, 2, 3], temp=0.0, top_k=1)
    next(gen)  # the prompt's evaluation and the first token: not decoding
    t0 = time.perf_counter()
    n = sum(1 for _ in zip(range(40 * steps), gen))
    return n / (time.perf_counter() - t0)


def child(work: str, steps: int, out: Path) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    teacher, q4, text = _prepare(out)
    with tempfile.TemporaryDirectory(prefix="bench-busy-") as td:
        rate = globals()[f"_{work}"](teacher, q4, text, steps, Path(td))
    import torch

    print(json.dumps({"rate": rate, "torch_threads": torch.get_num_threads(),
                      "omp": os.environ.get("OMP_NUM_THREADS"), "wait": os.environ.get("OMP_WAIT_POLICY")}))


# --- the parent: conditions x modes, side by side ----------------------------------------------------------------

def _run(work: str, mode: str, cond: str, steps: int, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS")}
    env["SLIMEDGE_THREADS"] = "off" if mode == "off" else "auto"
    cmd = [sys.executable, __file__, "--child", work, "--steps", str(steps), "--out", str(out)]
    if cond == "taskset":
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if cond == "busy" else None
    try:
        load = os.getloadavg()[0]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if r.returncode != 0:
        raise SystemExit(f"{work} {mode} {cond} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["load"] = load
    print(f"  {work:11} {mode:6} {cond:7} {res['rate']:8.3f} {UNITS[work]:8} torch threads {res['torch_threads']} "
          f"OMP_NUM_THREADS={res['omp']} OMP_WAIT_POLICY={res['wait']} (load avg {load:.1f})", flush=True)
    return res


def _table(res: dict, works: list[str]) -> None:
    print("\n| workload | mode | idle | busy | taskset -c 0 | busy/idle | taskset/busy | busy: policy/off |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for w in works:
        for m in MODES:
            i, b, t = (res[w, m, c]["rate"] for c in CONDITIONS)
            gain = f"{b / res[w, 'off', 'busy']['rate']:.2f}x" if m == "policy" else ""
            print(f"| {w} ({UNITS[w]}) | {m} | {i:.3f} | {b:.3f} | {t:.3f} | {b / i:.2f}x | {t / b:.2f}x | {gain} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--out", default="bench-busy")
    ap.add_argument("--child", choices=WORKLOADS)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    if a.child:
        child(a.child, a.steps, out)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from slimedge.threads import cgroup_cpu_limit, usable_cpus

    _prepare(out)
    print(f"{os.cpu_count()} CPUs, affinity {sorted(os.sched_getaffinity(0))}, cgroup quota {cgroup_cpu_limit()}, "
          f"usable {usable_cpus()}; load avg {os.getloadavg()}; {a.steps} units of work each")
    works = [w for w in a.only.split(",") if w]
    res = {}
    for w in works:  # one workload's six runs back to back: the machine's other load drifts less between them
        for m in MODES:
            for c in CONDITIONS:
                res[w, m, c] = _run(w, m, c, a.steps, out)
    _table(res, works)


if __name__ == "__main__":
    main()
