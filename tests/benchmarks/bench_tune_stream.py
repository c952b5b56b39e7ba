"""Benchmark: memory of ``tune --mode blockwise`` with the float teacher streamed one layer at a time, against the
same run with the teacher loaded whole (issue 23: "memory of one block ... so a 1-8B model fits a laptop").

Model: the TinyLlama-1.1B shape (22 blocks x 2048, FFN 5632, 32000-token vocabulary, untied head) with random bf16
weights (``_models.make_model``), converted to Q4_K_M; ``--layers`` shrinks the depth for a quick run. Both runs
are ``--mode blockwise --steps 0`` with a small budget (``--block-iters`` iterations per layer on
``--block-samples`` cached blocks of ``--seq-len`` tokens): the figures are memory and the fixed costs, not
quality. Each run is a fresh process (``bench_tune_100m.py --child``), so its peak RSS is its own.

Printed per run: peak RSS, wall time, the block-wise stage's time, the held-out KL; then the ratio streamed /
whole of the peak RSS (the anchor: the whole teacher in the same run), what the whole teacher's fp32 weights are,
and whether the two tuned files are byte-identical with the same KL (they must be: streaming changes only where
the weights come from).

    python tests/benchmarks/bench_tune_stream.py [--out DIR] [--layers 22] [--block-iters 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tune_100m as B  # noqa: E402  (its prepare / run_job / --child run each tune)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-tune-stream")
    ap.add_argument("--layers", type=int, default=B.BIG_LAYERS, help="blocks of the 1.1B shape (22: all of them)")
    ap.add_argument("--hidden", type=int, default=B.BIG_HIDDEN)
    ap.add_argument("--block-iters", type=int, default=2)
    ap.add_argument("--block-samples", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-blocks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    a = ap.parse_args()
    from slimedge.demo import corpus

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = out / "train.txt"
    if not calib.is_file():
        calib.write_text(corpus.train_text()[:1_000_000])
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; {a.threads} threads "
          f"({time.strftime('%Y-%m-%d %H:%M')})", flush=True)
    hf, q, n = B.prepare(out, a.layers, a.hidden, calib)
    base = {"kind": "tune", "mode": "blockwise", "precision": "fp32", "steps": 0, "calib": str(calib),
            "threads": a.threads, "batch": a.batch_size, "seq": a.seq_len, "samples": a.block_samples,
            "iters": a.block_iters, "eval_blocks": a.eval_blocks, "hf": str(hf), "gguf": str(q), "size": "big",
            "layers": a.layers, "hidden": a.hidden, "params": n}
    rs = {}
    for stream in (True, False):
        name = f"blockwise {a.layers}x{a.hidden} teacher {'streamed' if stream else 'whole'}"
        job = dict(base, stream=stream, name=name, out=str(out / f"tuned-{'streamed' if stream else 'whole'}.gguf"))
        r = B.run_job(job, out / "bench_tune_stream.jsonl", a.timeout)
        if r is None:
            return 1
        rs[stream] = r
    print(f"load average {os.getloadavg()[0]:.1f} at the end\n", flush=True)
    print(f"{n / 1e9:.2f} B parameters; the teacher's fp32 weights: {n * 4 / 2**30:.2f} GiB; the Q4_K_M file: "
          f"{q.stat().st_size / 2**30:.2f} GiB\n")
    print("| teacher | peak RSS | wall | block-wise stage | held-out KL before -> after |")
    print("|---|---:|---:|---:|---|")
    for stream, r in rs.items():
        stage = sum(x["wall"] for x in r.get("layers", []))
        print(f"| {'streamed' if r.get('streamed') else 'whole'} | {r['rss_mib'] / 1024:.2f} GiB | {r['wall']:.0f} s | "
              f"{stage:.0f} s | {r['kl'][0]:.5f} -> {r['kl'][1]:.5f} |")
    s, w = rs[True], rs[False]
    print(f"\npeak RSS streamed / whole: {s['rss_mib'] / w['rss_mib']:.2f}x "
          f"({(w['rss_mib'] - s['rss_mib']) / 1024:.2f} GiB less); wall streamed / whole: {s['wall'] / w['wall']:.2f}x")
    same = s["sha256"] == w["sha256"] and s["kl"] == w["kl"]
    print(f"tuned files byte-identical, same held-out KL: {'yes' if same else 'NO'}")
    return 0 if same and s.get("streamed") and not w.get("streamed") else 1


if __name__ == "__main__":
    sys.exit(main())
