"""Cost and quality of the ``--type auto`` sensitivity stage at real model sizes.

    python tests/benchmarks/bench_auto_mix_cost.py [--work DIR] [--layers 2] [--only cost,quality]

**Cost** — a TinyLlama-1.1B-shaped Llama (vocabulary 32000, width 2048, FFN 5632, 32 heads / 4 KV heads;
random weights, built offline with transformers) with ``--layers`` of its 22 blocks, the default proxy method
and candidates (every type slimedge writes, no importance matrix) on 8 × 256 calibration tokens, on the CPU.
Every piece of the stage is timed (the reference forward, each tensor's proxy pass, each exact partial
forward and its quantization); a partial forward from block s costs ``(n_blocks - s) * t_block + t_head``,
fitted to the timed ones. Projection to 22 blocks (TinyLlama-1.1B) and to a Llama-3-8B shape (32 blocks,
width 4096, FFN 14336, 8 KV heads, vocabulary 128256): the same sum over the bigger model's tensors, each
piece scaled by its matrix-size ratio (FLOPs and quantized weights grow with it); the calibrated depths are
those the method would choose for that depth. The allocation's refinement (slimedge/calib/refine.py: its
default number of exact partial forwards, each from the middle of the depth over ``REFINE_BATCHES``, plus a model load
and reference forward per round, at most its ``ROUNDS``) is projected from the same pieces: the stage a user
waits for. Goal: ≤ 30 minutes for the 1.1B shape on 2 cores.

**Quality** — the trained demo teacher (slimedge/data/demo-teacher), an importance matrix from its training
text, the auto mix at the size of Q4_K_M and of Q3_K_M with sensitivities measured exhaustively (one whole
forward per tensor and type: the reference) and with the proxy (then refined, as by default), the same budget
and candidates; KL against
the F16 teacher measured through llama.cpp (``slimedge.bench.run_bench``) on held-out text. Goal: the proxy's
KL within 10% of the exhaustive one's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

TINYLLAMA = dict(vocab=32000, hidden=2048, ff=5632, heads=32, kv=4, layers=22)
LLAMA8B = dict(vocab=128256, hidden=4096, ff=14336, heads=32, kv=8, layers=32)
KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _shape(kind: str, s: dict) -> tuple[int, int]:
    """(rows, row length) of a block tensor kind in a Llama shape."""
    h, kvw = s["hidden"], s["hidden"] // s["heads"] * s["kv"]
    return {"attn_q": (h, h), "attn_k": (kvw, h), "attn_v": (kvw, h), "attn_output": (h, h),
            "ffn_gate": (s["ff"], h), "ffn_up": (s["ff"], h), "ffn_down": (h, s["ff"])}[kind]


def build(work: Path, layers: int) -> Path:
    """The 1.1B shape with ``layers`` blocks, random init (transformers), saved with the demo teacher's
    tokenizer (its vocabulary padded to 32000 rows, as many checkpoints pad theirs)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slimedge.demo.pipeline import shipped_teacher

    out = work / f"tinyllama-shape-{layers}l"
    if (out / "config.json").is_file():
        return out
    teacher = shipped_teacher()
    s = TINYLLAMA
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ff"],
                      num_hidden_layers=layers, num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                      max_position_embeddings=2048, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    for f in teacher.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


def cost(args) -> None:
    import numpy as np

    from slimedge.calib import refine as R
    from slimedge.calib import sensitivity as S
    from slimedge.calib import sensitivity_fast as F
    from slimedge.demo import corpus

    work = Path(args.work)
    t = time.monotonic()
    src = build(work, args.layers)
    print(f"model: {src} ({time.monotonic() - t:.0f} s to build)", flush=True)
    rec: dict = {"kl": [], "proxy": {}, "quant": {}}
    real_kl, real_px, real_exact, real_init = F.Runner.kl, F.proxy_errors, F._Weight.exact, F.Runner.__init__

    def kl(self, start=0, batches=None):
        t0 = time.monotonic()
        r = real_kl(self, start, batches)
        n_b = len(self.batches[:batches])
        sec = time.monotonic() - t0
        rec["kl"].append((start, sec * len(self.batches) / n_b, sec))  # (start, seconds for all batches, as run)
        return r

    def px(w, mod, runner, cands, quant, rows=F.PROXY_ROWS):
        t0 = time.monotonic()
        r = real_px(w, mod, runner, cands, quant, rows)
        rec["proxy"][mod] = time.monotonic() - t0
        return r

    def exact(self, q, batches=None):
        t0, n0 = time.monotonic(), len(rec["kl"])
        r = real_exact(self, q, batches)
        rec["quant"][self.name] = time.monotonic() - t0 - sum(r for _, _, r in rec["kl"][n0:])
        return r

    def init(self, *a, **kw):
        t0 = time.monotonic()
        real_init(self, *a, **kw)
        rec["ref"] = time.monotonic() - t0

    F.Runner.kl, F.proxy_errors, F._Weight.exact, F.Runner.__init__ = kl, px, exact, init
    text = corpus.train_text()[:400_000]
    t, cpu = time.monotonic(), time.process_time()
    s = S.measure(src, text=text, ctx=256, chunks=8, threads=args.threads, method="proxy")
    total = time.monotonic() - t
    share = (time.process_time() - cpu) / total  # cores this process actually got, on average
    n = args.layers
    starts = np.array([n - st for st, _, _ in rec["kl"]], float)
    secs = np.array([x for _, x, _ in rec["kl"]])
    raw = sum(r for _, _, r in rec["kl"])
    t_block, t_head = np.polyfit(starts, secs, 1) if len(set(starts)) > 1 else (secs.mean() / max(n, 1), 0.0)
    px_kind = {k: np.mean([v for m, v in rec["proxy"].items() if m.endswith(_hf(k))]) for k in KINDS}
    q_kind = {k: np.mean([v for m, v in rec["quant"].items() if m.endswith(f"{k}.weight")] or [0.0]) for k in KINDS}
    other = sum(v for m, v in rec["proxy"].items() if "layers." not in m)
    other_q = sum(v for m, v in rec["quant"].items() if not m.startswith("blk."))
    print(f"measured ({n} of 22 blocks, {s.n_tokens} tokens, load {os.getloadavg()[0]:.1f}): stage {total:.0f} s "
          f"(model load + reference forward {rec['ref']:.1f} s); partial forward = {t_block:.2f} s x blocks + "
          f"{t_head:.2f} s; proxy pass per block {sum(px_kind.values()):.1f} s, exact-run quantization per "
          f"calibrated block {sum(q_kind.values()):.1f} s; embedding + head: proxy {other:.1f} s, quantization "
          f"{other_q:.1f} s", flush=True)
    rest = total - rec["ref"] - sum(rec["proxy"].values()) - sum(rec["quant"].values()) - raw
    n_meas = n * sum(np.prod(_shape(k, TINYLLAMA)) for k in KINDS) + 2 * TINYLLAMA["vocab"] * TINYLLAMA["hidden"]
    base = TINYLLAMA
    print("projection: the stage's pieces summed over the target's tensors, per-block pieces scaled by matrix "
          "size (rows x row length) against the 1.1B shape's, the head and embedding by vocab x width")
    for label, tgt in (("TinyLlama-1.1B (22 x 2048)", TINYLLAMA), ("Llama-3-8B shape (32 x 4096)", LLAMA8B)):
        L = tgt["layers"]
        blk = sum(np.prod(_shape(k, tgt)) for k in KINDS) / sum(np.prod(_shape(k, base)) for k in KINDS)
        head = tgt["vocab"] * tgt["hidden"] / (base["vocab"] * base["hidden"])
        tb, th = t_block * blk, t_head * head
        calib = sorted(F.calibrated_depths(list(range(L)), F.CALIB_DEPTHS))
        ref = L * tb + th
        proxy = L * sum(px_kind[k] * np.prod(_shape(k, tgt)) / np.prod(_shape(k, base)) for k in KINDS)
        frac = min(1.0, F.CALIB_BATCHES / -(-s.n_tokens // (S.BATCH * 256)))  # calibration runs score these
        exact = frac * len(KINDS) * sum((L - d) * tb + th for d in calib)
        exact += sum(q_kind[k] * np.prod(_shape(k, tgt)) / np.prod(_shape(k, base)) for k in KINDS) * len(calib)
        edges = frac * ((L * tb + th) + th) + (other + other_q) * head  # embedding (a whole forward), head
        n_tgt = L * sum(np.prod(_shape(k, tgt)) for k in KINDS) + 2 * tgt["vocab"] * tgt["hidden"]
        load = rest * n_tgt / n_meas  # loading the model, the plan, the tokenizer: with the parameters
        names = [f"blk.{i}.{k}.weight" for i in range(L) for k in KINDS] + ["token_embd.weight", "output.weight"]
        runs = R.default_runs(names)  # refining: that many exact partial forwards (from a mean depth, all
        # batches) and their quantization, plus per round a model load and reference forward (at most ROUNDS)
        frac_r = min(1.0, F.REFINE_BATCHES / -(-s.n_tokens // (S.BATCH * 256)))  # the batches refining scores
        per_run = frac_r * ((L + 1) / 2 * tb + th) + np.mean([q_kind[k] * np.prod(_shape(k, tgt)) / np.prod(_shape(k, base))
                                                  for k in KINDS])
        refine = runs * per_run + R.ROUNDS * (ref + load)
        sec = ref + proxy + exact + edges + load + refine
        print(f"  {label}: {sec / 60:.1f} min (reference forward {ref:.0f} s, proxy passes {proxy:.0f} s, "
              f"exact calibration at blocks {calib} of each kind {exact:.0f} s, embedding + head {edges:.0f} s, "
              f"loading {load:.0f} s, refining with {runs} exact prices in <= {R.ROUNDS} rounds {refine:.0f} s)"
              + ("  goal <= 30 min: " + ("met" if sec <= 1800 else "NOT met") if L == 22 else ""), flush=True)
        print(f"    the same on 2 free cores (this run got {share:.2f} cores on average; its CPU seconds over 2): "
              f"{sec * share / 2 / 60:.1f} min", flush=True)


def _hf(kind: str) -> str:
    return {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj",
            "ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}[kind]


def quality(args) -> None:
    from slimedge.bench import run_bench
    from slimedge.calib import compute_imatrix
    from slimedge.calib.sensitivity import auto_allocation
    from slimedge.convert import convert
    from slimedge.demo import corpus
    from slimedge.demo.pipeline import shipped_teacher
    from slimedge.quant.imatrix_file import write_imatrix
    from slimedge.quant.mixes import QuantSpec

    work = Path(args.work)
    teacher = shipped_teacher()
    calib = corpus.train_text()[:400_000]
    held = work / "heldout.txt"
    held.write_text(corpus.heldout_text()[:60_000], encoding="utf-8")
    imx = work / "imatrix-teacher.gguf"
    if not imx.is_file():
        write_imatrix(imx, compute_imatrix(teacher, calib, ctx=256, chunks=32, threads=args.threads,
                                           dataset="stdlib-train"))
    f16 = work / "f16.gguf"
    if not f16.is_file():
        convert(teacher, f16, QuantSpec("F16"), overwrite=True)
    rows = []
    for mix in args.mixes.split(","):
        kl = {}
        for method in ("exhaustive", "proxy"):
            cache = work / f"sens-{method}-{args.chunks}x{args.ctx}.json"
            t = time.monotonic()
            a = auto_allocation(teacher, calib, target_size=mix, imatrix=imx, ctx=args.ctx, chunks=args.chunks,
                                cache=cache, threads=args.threads, method=method)
            sec = time.monotonic() - t
            out = work / f"auto-{mix.lower()}-{method}.gguf"
            convert(teacher, out, a.spec(), imatrix=imx, threads=args.threads, overwrite=True)
            b = run_bench(out, ref=f16, text=held, n_ctx=args.ctx, n_threads=args.threads or 1, speed=False)
            kl[method] = b["kld_mean"]
            from slimedge.quant.allocate import Sensitivity

            rows.append((mix, method, Sensitivity.load(cache).seconds, sec, b, a.metadata()["slimedge.mix.types"]))
            print(f"{mix} {method}: KL {b['kld_mean']:.5f}, sensitivities {Sensitivity.load(cache).seconds:.0f} s"
                  + (f" (refined: {a.extra['refined']} exact prices)" if "refined" in a.extra else ""), flush=True)
        rows.append((mix, "ratio", kl["proxy"] / kl["exhaustive"], None, None, None))
    print("\n| budget | sensitivities | measured in | KL vs F16 (llama.cpp) | top-1 | tensor bytes | types |")
    print("|---|---|---:|---:|---:|---:|---|")
    for mix, method, sec, _, b, types in rows:
        if method == "ratio":
            met = "met" if sec <= 1.1 else "NOT met"
            print(f"| {mix} | proxy / exhaustive | | **{sec:.3f}×** (goal ≤ 1.10×: {met}) | | | |")
        else:
            print(f"| {mix} | {method} | {sec:.0f} s | {b['kld_mean']:.5f} | {100 * b['top1_agreement']:.2f}% | "
                  f"{b['model_size']} | {types} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path("~/.cache/slimedge-bench/auto-mix-cost").expanduser()))
    ap.add_argument("--layers", type=int, default=2, help="blocks of the 1.1B shape actually measured")
    ap.add_argument("--only", default="cost,quality")
    ap.add_argument("--mixes", default="Q4_K_M,Q3_K_M")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (a shared machine)", flush=True)
    if "cost" in args.only:
        cost(args)
    if "quality" in args.only:
        quality(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
