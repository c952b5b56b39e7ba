"""Benchmark: `slimedge tune` on the demo teacher — KL/perplexity vs F16 of tuned vs imatrix-quantized mixes.

For each mix (default Q4_K_M, Q3_K_M, Q2_K): the shipped demo teacher quantized with an importance matrix of
the training text (``slimedge imatrix`` / ``convert --imatrix``), then that file tuned against the teacher on
the same training text (``slimedge tune``); both measured through llama.cpp (``slimedge.bench.run_bench``) on the
held-out modules (``slimedge.demo.corpus.heldout_text``) against the F16 teacher. Prints bytes (identical by
construction, checked), mean KL, its ratio tuned/untuned, perplexities and the tuning time (wall and CPU).

    python tests/benchmarks/bench_tune.py [--out DIR] [--steps N] [--mixes Q4_K_M,Q3_K_M,Q2_K] [--threads 2]

Goal (issue 13): tuned Q4_K_M's KL <= 0.7x the imatrix Q4_K_M's at identical bytes; tuning under 5 minutes on
2 CPU cores. Intermediate files are kept in --out and reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-tune")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--mixes", default="Q4_K_M,Q3_K_M,Q2_K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--calib-chars", type=int, default=1_000_000)
    ap.add_argument("--max-chunks", type=int, default=60, help="held-out chunks of 256 tokens scored")
    ap.add_argument("--learn-codes", action="store_true", help="also tune with --learn-codes (extra rows)")
    ap.add_argument("--codes-lr", type=float, default=5e-3)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from slimedge.bench import run_bench
    from slimedge.calib import compute_imatrix
    from slimedge.convert import convert
    from slimedge.demo import corpus
    from slimedge.demo.pipeline import shipped_teacher
    from slimedge.tune import TuneConfig, tune
    from slimedge.quant.imatrix_file import write_imatrix
    from slimedge.quant.mixes import QuantSpec

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = shipped_teacher()
    calib, held = out / "train.txt", out / "heldout.txt"
    if not calib.is_file():
        calib.write_text(corpus.train_text()[: a.calib_chars])
        held.write_text(corpus.heldout_text())
    f16 = out / "teacher-F16.gguf"
    if not f16.is_file():
        convert(teacher, f16, QuantSpec("F16"), overwrite=True)
    imx = out / "imatrix.gguf"
    if not imx.is_file():
        write_imatrix(imx, compute_imatrix(teacher, calib.read_text(), ctx=256, chunks=64, threads=a.threads),
                      overwrite=True)

    def bench(path: Path) -> dict:
        return run_bench(str(path), ref=str(f16), text=str(held), n_ctx=256, n_threads=a.threads, speed=False,
                         max_chunks=a.max_chunks)

    rows = [("F16", bench(f16), f16.stat().st_size, None)]
    for mix in a.mixes.split(","):
        base = out / f"teacher-{mix}-imatrix.gguf"
        if not base.is_file():
            convert(teacher, base, QuantSpec(mix), imatrix=imx, overwrite=True)
        tuned = out / f"teacher-{mix}-imatrix-tuned.gguf"
        w0, c0 = time.monotonic(), time.process_time()
        r = tune(TuneConfig(gguf=str(base), teacher=str(teacher), data=str(calib), output=str(tuned), steps=a.steps,
                            lr=a.lr, threads=a.threads, precision=a.precision, overwrite=True))
        cost = (time.monotonic() - w0, time.process_time() - c0)
        assert tuned.stat().st_size == base.stat().st_size
        rows.append((f"{mix} imatrix", bench(base), base.stat().st_size, None))
        rows.append((f"{mix} imatrix + tune", bench(tuned), tuned.stat().st_size, (cost, r)))
        if a.learn_codes:
            coded = out / f"teacher-{mix}-imatrix-tuned-codes.gguf"
            w0, c0 = time.monotonic(), time.process_time()
            rc = tune(TuneConfig(gguf=str(base), teacher=str(teacher), data=str(calib), output=str(coded),
                                 steps=a.steps, lr=a.lr, threads=a.threads, precision=a.precision, overwrite=True, learn_codes=True,
                                 codes_lr=a.codes_lr))
            cost_c = (time.monotonic() - w0, time.process_time() - c0)
            assert coded.stat().st_size == base.stat().st_size
            rows.append((f"{mix} imatrix + tune codes", bench(coded), coded.stat().st_size, (cost_c, rc)))
        b0, b1 = rows[-2 - a.learn_codes][1], rows[-1 - a.learn_codes][1]
        print(f"# {mix}: KL {b0.get('kld_mean')} -> {b1.get('kld_mean')}, PPL "
              f"{b0.get('perplexity')} -> {b1.get('perplexity')} (F16 {rows[0][1].get('perplexity')}), "
              f"tune {cost[0]:.0f} s wall / {cost[1]:.0f} s CPU", flush=True)

    print(f"\n{'model':<24} {'bytes':>10} {'KL vs F16':>10} {'ratio':>6} {'PPL':>9} {'tune wall/CPU s':>16}  torch KL")
    base_kl = None
    report = []
    for name, b, size, extra in rows:
        kl = b.get("kld_mean")
        ratio = ""
        if extra is None:
            base_kl = kl
        elif base_kl:
            ratio = f"{kl / base_kl:.2f}x"
        cost = f"{extra[0][0]:.0f} / {extra[0][1]:.0f}" if extra else ""
        tk = f"{extra[1].kl_before:.4f} -> {extra[1].kl_after:.4f}" if extra else ""
        print(f"{name:<24} {size:>10} {kl if kl is not None else float('nan'):>10.5f} {ratio:>6} "
              f"{b.get('perplexity') or float('nan'):>9.3f} {cost:>16}  {tk}")
        report.append({"model": name, "bytes": size, "kld_mean": kl, "perplexity": b.get("perplexity"),
                       "tune_wall_s": extra[0][0] if extra else None, "tune_cpu_s": extra[0][1] if extra else None})
    (out / "bench_tune.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
