"""Benchmark: what `slimedge tune` and `slimedge distill` cost at ~100M parameters and at the TinyLlama-1.1B
shape, with the projection to the whole 1.1B model (issue 21 part 3; issue 13's "100M under 20 minutes").

Models: TinyLlama-shaped (``_models.make_model``: 32000-token SentencePiece vocabulary, 32/4 GQA heads, untied
head) with random N(0, 0.02) bf16 weights — a model of that size and layout, not a trained one: the figures are
cost, not quality (quality: ``bench_tune.py``, ``bench_tune_vs_autoround.py``). Each is converted to Q4_K_M and
tuned against itself on the demo's training text, 4 x 256-token blocks a step (tune's default batch). Every run is
a fresh process (so its peak RSS is its own), with ``--threads`` threads (``SLIMEDGE_THREADS``):

* ``small``: 8 layers x 768 (102M parameters): ``--mode e2e`` for ``--steps`` KL steps at fp32 and bf16, and
  ``--mode blockwise --steps 0`` with ``--block-iters`` iterations per layer on ``--block-samples`` cached blocks;
* ``big``: the 1.1B shape itself (width 2048, FFN 5632, 44M parameters a block) with ``--big-layers`` of its 22
  blocks (default 1 and 2): e2e at fp32 on each depth and bf16 on the deepest, blockwise on the deepest, and
  ``slimedge distill`` steps (a float student of the teacher's own shape, fp32, AdamW) on each depth.

Timing comes from the progress events tune and distill emit (one per step, one per block-wise layer), CPU seconds
with it; when more than one step ran the first is left out (allocation, warm-up). A block-wise layer's time is
split into its iterations, its passes over the cached blocks (teacher-layer targets, errors before and after, the
next layer's input: ``slimedge.tune.blockwise._apply`` / ``_error`` timed by wrapping) and its checkpoint
(``_save``). The projection to all 22 blocks is printed with its formulas: a step costs ``L * t_layer + t_edge``
(embedding, head, loss), fitted over the depths; peak RSS likewise ``rss0 + L * r_layer``. The machine's load
average is printed at the start and the end: on a shared machine the CPU seconds / 2 is what 2 free cores take.

    python tests/benchmarks/bench_tune_100m.py [--out DIR] [--steps 3] [--only small,big,distill] [--threads 2]
    python tests/benchmarks/bench_tune_100m.py --layers 2 --hidden 128 --steps 2 --only small   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: F401  (puts the repository root on sys.path, for slimedge and tests)

BIG_HIDDEN, BIG_LAYERS, DEFAULT_STEPS, DEFAULT_ITERS, DEFAULT_SAMPLES = 2048, 22, 300, 200, 128


# ---------------------------------------------------------------------------------------------- one run (child)

def _clock():
    from slimedge.progress import Progress

    class Clock(Progress):
        """Records (task, wall, cpu) at every start and update of the tasks tune and distill report."""

        def __init__(self):
            self.desc, self.marks = "", {}

        def start(self, total, unit="", desc=""):
            self.desc = desc
            self.marks.setdefault(desc, []).append((time.monotonic(), time.process_time()))

        def update(self, n, label="", **info):
            self.marks.setdefault(self.desc, []).append((time.monotonic(), time.process_time()))

    return Clock()


def _wrap_blockwise(rec: dict) -> None:
    """Time the block-wise stage's passes over the cached blocks and its per-layer checkpoints."""
    from slimedge.tune import blockwise as B

    for name, key in (("_apply", "pass"), ("_error", "pass"), ("_save", "save")):
        real = getattr(B, name)

        def timed(*a, _real=real, _key=key, **kw):
            t0 = time.monotonic()
            try:
                return _real(*a, **kw)
            finally:
                rec.setdefault(_key, []).append((time.monotonic(), time.monotonic() - t0))

        setattr(B, name, timed)


def child(job: dict) -> dict:
    import resource

    os.environ["SLIMEDGE_THREADS"] = str(job["threads"])
    clock, rec = _clock(), {}
    w0, c0 = time.monotonic(), time.process_time()
    if job["kind"] == "distill":
        from slimedge.distill import DistillConfig, distill

        distill(DistillConfig(teacher=job["hf"], data=job["calib"], output=job["out"], overwrite=True,
                              steps=job["steps"], batch_size=job["batch"], seq_len=job["seq"], device="cpu",
                              precision=job["precision"], max_eval_blocks=1, eval_fraction=0.01), clock)
        loop = "distill"
    else:
        from slimedge.tune import TuneConfig, tune

        if job["mode"] == "blockwise":
            _wrap_blockwise(rec)
        r = tune(TuneConfig(gguf=job["gguf"], teacher=job["hf"], data=job["calib"], output=job["out"],
                            steps=job["steps"], batch_size=job["batch"], seq_len=job["seq"], threads=job["threads"],
                            precision=job["precision"], overwrite=True, checkpoint_every=0,
                            eval_blocks=job.get("eval_blocks", 1), mode=job["mode"], block_iters=job["iters"],
                            block_samples=job["samples"], stream_teacher=job.get("stream", True)), clock)
        assert Path(job["out"]).stat().st_size == Path(job["gguf"]).stat().st_size
        rec["kl"], rec["streamed"] = (r.kl_before, r.kl_after), r.streamed
        rec["sha256"] = hashlib.sha256(Path(job["out"]).read_bytes()).hexdigest()
        loop = "tune"
    wall, cpu = time.monotonic() - w0, time.process_time() - c0
    out = {"wall": wall, "cpu": cpu, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **rec}
    steps = clock.marks.get(loop, [])
    d = [(b[0] - a[0], b[1] - a[1]) for a, b in pairwise(steps)]
    use = d[1:] if len(d) > 1 else d
    if use:
        out["step_s"], out["step_cpu"] = sum(x for x, _ in use) / len(use), sum(c for _, c in use) / len(use)
        out["steps_total"] = steps[-1][0] - steps[0][0]
    layers = clock.marks.get("block-wise", [])
    if layers:
        per = []
        for a, b in pairwise(layers):
            inside = [s for k in ("pass", "save") for s in rec.get(k, []) if a[0] <= s[0] <= b[0]]
            passes = sum(s for t, s in rec.get("pass", []) if a[0] <= t <= b[0])
            save = sum(s for t, s in rec.get("save", []) if a[0] <= t <= b[0])
            per.append({"wall": b[0] - a[0], "cpu": b[1] - a[1], "pass": passes, "save": save,
                        "n_timed": len(inside)})
        out["layers"] = per
        out.pop("pass", None), out.pop("save", None)
    out["fixed"] = wall - out.get("steps_total", 0.0) - sum(p["wall"] for p in out.get("layers", []))
    return out


# ------------------------------------------------------------------------------------------ preparation (parent)

def prepare(out: Path, layers: int, hidden: int, calib: Path) -> tuple[Path, Path, int]:
    """The random model folder and its Q4_K_M GGUF (cached in ``out``); its parameter count."""
    import numpy as np
    from _models import (
        make_model,
        tensor_shapes,
        tinyllama_config,
        tinyllama_tokenizer,
        write_bf16_safetensors,
    )

    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec

    if hidden % 256:  # a smoke-test width: TinyLlama's ratios, rows below a k-quant super-block (fallback types)
        cfg = dict(tinyllama_config(layers), hidden_size=hidden, intermediate_size=-(-hidden * 11 // 4 // 32) * 32)
    else:
        cfg = tinyllama_config(layers, hidden)
    n = sum(int(np.prod(s)) for _, s in tensor_shapes(cfg))
    hf = out / f"model-{layers}x{hidden}"
    if not (hf / "model.safetensors").is_file():
        if hidden % 256:
            tinyllama_tokenizer(hf)
            (hf / "config.json").write_text(json.dumps(cfg, indent=1))
            write_bf16_safetensors(hf / "model.safetensors", tensor_shapes(cfg))
        else:
            make_model(hf, layers, hidden)
    q = out / f"model-{layers}x{hidden}-Q4_K_M.gguf"
    if not q.is_file():
        convert(hf, q, QuantSpec("Q4_K_M"), overwrite=True)
    return hf, q, n


def run_job(job: dict, results: Path, timeout: int) -> dict | None:
    """One run in a fresh process; its figures (also appended to ``results``), None if it failed."""
    t = time.monotonic()
    print(f"  {job['name']} ...", end="", flush=True)
    try:
        p = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f" timed out after {timeout} s", flush=True)
        return None
    if p.returncode != 0:
        print(f" FAILED (rc {p.returncode}):\n{p.stderr[-3000:]}", flush=True)
        return None
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(job=job, load=os.getloadavg()[0])
    with open(results, "a") as f:
        f.write(json.dumps(r) + "\n")
    print(f" {time.monotonic() - t:.0f} s (load {r['load']:.1f})", flush=True)
    return r


def jobs(a, out: Path, calib: Path) -> list[dict]:
    base = {"calib": str(calib), "threads": a.threads, "batch": a.batch_size, "seq": a.seq_len,
            "samples": a.block_samples, "iters": a.block_iters, "kind": "tune", "mode": "e2e", "precision": "fp32",
            "steps": a.steps}
    js = []

    def add(size, layers, hidden, n, hf, q, **kw):
        j = dict(base, size=size, layers=layers, hidden=hidden, params=n, hf=str(hf), gguf=str(q), **kw)
        j["name"] = f"{size} {layers}x{hidden} {j['kind']} {j['mode'] if j['kind'] == 'tune' else ''} {j['precision']}"
        j["out"] = str(out / (j["name"].replace(" ", "-").replace("--", "-") + (".gguf" if j["kind"] == "tune" else "")))
        js.append(j)

    only = a.only.split(",")
    depths = sorted(int(x) for x in a.big_layers.split(","))
    big = {L: prepare(out, L, BIG_HIDDEN, calib) for L in depths} if ("big" in only or "distill" in only) else {}
    if "big" in only:  # the 1.1B shape first: the projection needs it most
        for L in depths:
            add("big", L, BIG_HIDDEN, big[L][2], *big[L][:2])
        L = depths[-1]
        add("big", L, BIG_HIDDEN, big[L][2], *big[L][:2], mode="blockwise", steps=0)
        add("big", L, BIG_HIDDEN, big[L][2], *big[L][:2], precision="bf16")
    if "small" in only:
        hf, q, n = prepare(out, a.layers, a.hidden, calib)
        add("small", a.layers, a.hidden, n, hf, q)
        add("small", a.layers, a.hidden, n, hf, q, mode="blockwise", steps=0)
        add("small", a.layers, a.hidden, n, hf, q, precision="bf16")
    if "distill" in only:
        for L in depths:
            add("big", L, BIG_HIDDEN, big[L][2], *big[L][:2], kind="distill", steps=max(a.steps, 2))
    return js


# ------------------------------------------------------------------------------------------------ report (parent)

def _fit(xs, ys) -> tuple[float, float]:
    """(slope, intercept) of ys over xs (two or more depths)."""
    import numpy as np

    s, c = np.polyfit(xs, ys, 1)
    return float(s), float(c)


def _bw(r: dict, a) -> dict:
    """A block-wise run's per-layer figures and its per-layer cost at tune's defaults (200 iters, 128 blocks)."""
    ls = r["layers"]
    it = sum(x["wall"] - x["pass"] - x["save"] for x in ls) / len(ls) / max(r["job"]["iters"], 1)
    ps = sum(x["pass"] for x in ls) / len(ls)
    sv = sum(x["save"] for x in ls) / len(ls)
    cpu_share = sum(x["cpu"] for x in ls) / max(sum(x["wall"] for x in ls), 1e-9)
    layer = DEFAULT_ITERS * it + ps * DEFAULT_SAMPLES / r["job"]["samples"] + sv
    return {"iter": it, "pass": ps, "save": sv, "layer": layer, "share": cpu_share}


def _h(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min"


def report(rs: list[dict], a) -> None:
    print("\n| run | params | steps / iters run | s / step (wall) | CPU s / step | block-wise s / layer "
          "(iter, passes, checkpoint) | once (load, KL, write) | peak RSS |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for r in rs:
        j = r["job"]
        bw = _bw(r, a) if r.get("layers") else None
        ran = f"{j['iters']} iters x {j['layers']} layers" if bw else f"{j['steps']}"
        print(f"| {j['name']} | {j['params'] / 1e6:.0f} M | {ran} | "
              + (f"{r['step_s']:.2f} | {r['step_cpu']:.2f}" if "step_s" in r else "— | —")
              + (f" | {bw['iter']:.2f} s/iter, {bw['pass']:.1f} s on {j['samples']} blocks, {bw['save']:.1f} s"
                 if bw else " | —")
              + f" | {r['fixed']:.0f} s | {r['rss_mib']:,.0f} MiB |")
    small = {(r["job"]["mode"], r["job"]["precision"]): r for r in rs
             if r["job"]["size"] == "small" and r["job"]["kind"] == "tune"}
    if small:
        L = next(iter(small.values()))["job"]["layers"]
        print(f"\nProjected, the small model ({L} layers; tune's defaults: {DEFAULT_STEPS} KL steps; blockwise "
              f"{DEFAULT_ITERS} iters/layer on {DEFAULT_SAMPLES} cached blocks, then the {DEFAULT_STEPS} KL steps). "
              "wall = once + steps x s/step [+ layers x s/layer]; 2 free cores: the same from CPU seconds / 2:")
        for p in ("fp32", "bf16"):
            e = small.get(("e2e", p))
            if e:
                print(f"  e2e {p}: {_h(e['fixed'] + DEFAULT_STEPS * e['step_s'])} wall, "
                      f"{_h(e['fixed'] + DEFAULT_STEPS * e['step_cpu'] / 2)} on 2 free cores")
        b, e = small.get(("blockwise", "fp32")), small.get(("e2e", "fp32"))
        if b and e:
            bw = _bw(b, a)
            stage = L * bw["layer"]
            print(f"  blockwise stage (fp32 whatever --precision): {L} x ({DEFAULT_ITERS} x {bw['iter']:.2f} + "
                  f"{bw['pass']:.1f} x {DEFAULT_SAMPLES}/{b['job']['samples']} + {bw['save']:.1f}) = {_h(stage)}; "
                  f"with the {DEFAULT_STEPS} KL steps (fp32): {_h(stage + e['fixed'] + DEFAULT_STEPS * e['step_s'])}")
    project_big(rs, a)


def project_big(rs: list[dict], a) -> None:
    big = [r for r in rs if r["job"]["size"] == "big"]
    if not big:
        return
    n22 = BIG_LAYERS
    per_layer = (2048 * 2048 * 2 + 256 * 2048 * 2 + 3 * 2048 * 5632)  # q, o, k, v, gate, up, down
    print(f"\nProjected to the TinyLlama-1.1B shape ({n22} blocks x {BIG_HIDDEN}, FFN 5632, vocab 32000, "
          f"{(n22 * per_layer + 2 * 32000 * 2048) / 1e9:.2f} B parameters), fitted over the depths measured:")
    for kind, label in (("tune", "tune e2e"), ("distill", "distill")):
        rows = sorted((r for r in big if r["job"]["kind"] == kind and r["job"]["mode"] == "e2e"
                       and r["job"]["precision"] == "fp32" and "step_s" in r), key=lambda r: r["job"]["layers"])
        if not rows:
            continue
        Ls = [r["job"]["layers"] for r in rows]
        if len(set(Ls)) < 2:
            print(f"  {label} fp32: one depth measured ({Ls}); the projection needs two (--big-layers 1,2)")
            continue
        tl, te = _fit(Ls, [r["step_s"] for r in rows])
        cl, ce = _fit(Ls, [r["step_cpu"] for r in rows])
        fl, fe = _fit(Ls, [r["fixed"] for r in rows])
        rl, re_ = _fit(Ls, [r["rss_mib"] for r in rows])
        step, cstep, fixed, rss = n22 * tl + te, n22 * cl + ce, n22 * fl + fe, n22 * rl + re_
        print(f"  {label} fp32, depths {Ls}: s/step = {tl:.2f} x L + {te:.2f} -> {step:.1f} s/step at {n22} "
              f"(CPU {cl:.2f} x L + {ce:.2f} -> {cstep:.1f} s); peak RSS = {rl:,.0f} MiB x L + {re_:,.0f} -> "
              f"{rss / 1024:.1f} GiB; once = {fl:.1f} x L + {fe:.1f} -> {fixed:.0f} s")
        if kind == "tune":
            print(f"    {DEFAULT_STEPS} steps: {_h(fixed + DEFAULT_STEPS * step)} wall at this load, "
                  f"{_h(fixed + DEFAULT_STEPS * cstep / 2)} on 2 free cores")
            bf = [r for r in big if r["job"]["kind"] == "tune" and r["job"]["precision"] == "bf16" and "step_s" in r]
            for r in bf:
                ref = next((x for x in rows if x["job"]["layers"] == r["job"]["layers"]), None)
                if ref:
                    k, kc = r["step_s"] / ref["step_s"], r["step_cpu"] / ref["step_cpu"]
                    print(f"    bf16 at {r['job']['layers']} blocks: {k:.2f}x fp32's s/step (CPU {kc:.2f}x), "
                          f"peak RSS {r['rss_mib']:,.0f} vs {ref['rss_mib']:,.0f} MiB -> {DEFAULT_STEPS} steps: "
                          f"{_h(fixed + DEFAULT_STEPS * step * k)} wall, "
                          f"{_h(fixed + DEFAULT_STEPS * cstep * kc / 2)} on 2 free cores")
        else:
            tok = a.batch_size * a.seq_len
            print(f"    {tok} tokens a step: {tok / step:.0f} tokens/s at this load, {tok / (cstep / 2):.0f} on "
                  f"2 free cores; 1 M training tokens: {_h(1e6 / tok * step)}, {_h(1e6 / tok * cstep / 2)}")
    for r in big:
        if r.get("layers"):
            L, bw = r["job"]["layers"], _bw(r, a)
            # the checkpoint after each layer holds every tensor's fields and the codes of the layers done:
            # it grows with the model, so its time is scaled by the parameter ratio
            save = bw["save"] * (n22 * per_layer + 2 * 32000 * 2048) / r["job"]["params"]
            layer = bw["layer"] - bw["save"] + save
            stage = n22 * layer
            acts = 4 * (DEFAULT_SAMPLES - r["job"]["samples"]) * a.seq_len * BIG_HIDDEN * 4 / 2**20
            # the layers not measured: int8 codes and fields (1.3 B/param); the teacher streamed adds nothing per
            # layer (one layer at a time), loaded whole it adds its fp32 weights (4 B/param)
            bpp = 1.3 if r.get("streamed") else 5.3
            model = (n22 - L) * per_layer * bpp / 2**20
            print(f"  tune blockwise stage (fp32), measured on {L} blocks: s/layer = {DEFAULT_ITERS} x "
                  f"{bw['iter']:.2f} s/iter + {bw['pass']:.1f} s x {DEFAULT_SAMPLES}/{r['job']['samples']} blocks "
                  f"+ checkpoint {save:.1f} s = {layer:.0f} s -> {n22} layers: {_h(stage)} at this load "
                  f"({_h(stage * bw['share'] / 2)} on 2 free cores); then the KL steps as e2e")
            what = "int8 codes, fields; teacher streamed" if r.get("streamed") else "fp32 teacher, int8 codes, fields"
            print(f"    peak RSS {r['rss_mib']:,.0f} MiB + {n22 - L} blocks x {bpp} B/param ({what}) {model:,.0f} MiB "
                  f"+ 4 activations [{DEFAULT_SAMPLES - r['job']['samples']} more blocks, "
                  f"{a.seq_len}, {BIG_HIDDEN}] fp32 {acts:,.0f} MiB -> {(r['rss_mib'] + model + acts) / 1024:.1f} GiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench-tune-100m")
    ap.add_argument("--only", default="small,big,distill", help="small, big (tune on the 1.1B shape), distill")
    ap.add_argument("--steps", type=int, default=3, help="KL / distill steps per run (the first is not timed)")
    ap.add_argument("--block-iters", type=int, default=4, help="block-wise iterations per layer")
    ap.add_argument("--block-samples", type=int, default=16, help="block-wise cached blocks")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8, help="the small model's layers")
    ap.add_argument("--hidden", type=int, default=768, help="the small model's width")
    ap.add_argument("--big-layers", default="1,2", help="blocks of the 1.1B shape measured")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-chars", type=int, default=2_000_000)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    ap.add_argument("--report", help="only print the tables of a results file (OUT/bench_tune_100m.jsonl) again")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    if a.report:
        report([json.loads(line) for line in Path(a.report).read_text().splitlines() if line.strip()], a)
        return 0
    from slimedge.demo import corpus

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = out / f"train-{a.calib_chars}.txt"
    if not calib.is_file():
        calib.write_text(corpus.train_text()[: a.calib_chars])
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; {a.threads} threads, "
          f"{a.batch_size} x {a.seq_len} tokens a step ({time.strftime('%Y-%m-%d %H:%M')})", flush=True)
    results = out / "bench_tune_100m.jsonl"
    rs = [r for r in (run_job(j, results, a.timeout) for j in jobs(a, out, calib)) if r]
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    report(rs, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
