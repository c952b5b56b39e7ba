"""Quality-driven auto mixes vs llama.cpp's mixes at the same size, on the trained demo teacher.

    python tests/benchmarks/bench_auto_mix.py [--work DIR] [--chunks 8] [--ctx 256] [--held-chars 60000]

Anchor (same run): slimedge's Q4_K_M and Q3_K_M with an importance matrix computed from the teacher's
training text (byte-identical to ``llama-quantize --imatrix`` with the same file). The auto mix gets the
same imatrix and a budget of exactly the anchor's tensor bytes (``--target-size``), its sensitivities
measured on the training text (calibration); every number below is measured through llama.cpp
(``slimedge.bench.run_bench``) on held-out text (``slimedge.demo.corpus.heldout_text``) against the F16
teacher. Goals: KL ≤ 0.8× the Q4_K_M anchor at its size, ≤ 0.75× the Q3_K_M anchor at its size, top-1
agreement not lower, size within 1%.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

GOALS = {"Q4_K_M": 0.8, "Q3_K_M": 0.75}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path("~/.cache/slimedge-bench/auto-mix").expanduser()))
    ap.add_argument("--calib-chars", type=int, default=400_000, help="training-text characters for calibration")
    ap.add_argument("--chunks", type=int, default=8, help="calibration sequences for the sensitivities")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--imatrix-chunks", type=int, default=64)
    ap.add_argument("--held-chars", type=int, default=60_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mixes", default="Q4_K_M,Q3_K_M")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from slimedge.bench import run_bench
    from slimedge.calib import compute_imatrix
    from slimedge.calib.sensitivity import auto_allocation
    from slimedge.convert import convert
    from slimedge.demo import corpus
    from slimedge.demo.pipeline import shipped_teacher
    from slimedge.quant.imatrix_file import write_imatrix
    from slimedge.quant.mixes import QuantSpec

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = shipped_teacher()
    calib = corpus.train_text()[: args.calib_chars]
    held = work / "heldout.txt"
    held.write_text(corpus.heldout_text()[: args.held_chars], encoding="utf-8")
    t0 = time.monotonic()
    imx_path = work / f"imatrix-{args.imatrix_chunks}x{args.ctx}.gguf"
    if not imx_path.is_file():
        write_imatrix(imx_path, compute_imatrix(teacher, calib, ctx=args.ctx, chunks=args.imatrix_chunks,
                                                threads=args.threads, dataset="stdlib-train"))
    print(f"imatrix: {imx_path} ({time.monotonic() - t0:.0f} s)", flush=True)

    def conv(name: str, spec, imatrix=None) -> Path:
        out = work / name
        if not out.is_file():
            convert(teacher, out, spec, imatrix=imatrix, threads=args.threads, overwrite=True)
        return out

    f16 = conv("f16.gguf", QuantSpec("F16"))

    def bench(path: Path) -> dict:
        return run_bench(path, ref=f16, text=held, n_ctx=args.ctx, n_threads=args.threads or 1, speed=False)

    rows, ok = [], True
    for mix in args.mixes.split(","):
        anchor = conv(f"{mix.lower()}-imatrix.gguf", QuantSpec(mix), imx_path)
        t = time.monotonic()
        alloc = auto_allocation(teacher, calib, target_size=mix, imatrix=imx_path, ctx=args.ctx,
                                chunks=args.chunks, cache=work / f"sensitivity-{args.chunks}x{args.ctx}.json",
                                threads=args.threads)
        t_alloc = time.monotonic() - t
        auto = work / f"auto-{mix.lower()}-size.gguf"
        convert(teacher, auto, alloc.spec(), imatrix=imx_path, threads=args.threads, overwrite=True)
        a, b = bench(anchor), bench(auto)
        ratio = b["kld_mean"] / a["kld_mean"]
        size_rel = b["model_size"] / a["model_size"] - 1
        met = ratio <= GOALS.get(mix, 1.0) and b["top1_agreement"] >= a["top1_agreement"] and abs(size_rel) <= 0.01
        ok &= met
        rows.append((mix, a, b, ratio, size_rel, met, t_alloc, alloc))
        print(alloc.table().splitlines()[-1], flush=True)

    print()
    print("| size of | file | tensor bytes | bpw | KL vs F16 | top-1 | PPL | KL ratio | goal | met |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for mix, a, b, ratio, size_rel, met, _, _ in rows:
        for label, r in ((f"{mix} + imatrix (anchor)", a), ("auto + imatrix", b)):
            last = label.startswith("auto")
            print(f"| {mix} | {label} | {r['model_size']} | {r['bpw']:.3f} | {r['kld_mean']:.5f} | "
                  f"{100 * r['top1_agreement']:.2f}% | {r['perplexity']:.3f} | "
                  + (f"{ratio:.3f}× | ≤ {GOALS.get(mix, 1.0)}× | {'yes' if met else 'NO'} |" if last else "1.000× | | |"))
    for mix, _, _, _, size_rel, _, t_alloc, alloc in rows:
        types = alloc.metadata()["slimedge.mix.types"]
        print(f"{mix}: auto size {100 * size_rel:+.3f}% vs anchor; types {types}; allocation {t_alloc:.0f} s")
    print(f"total {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
