"""Benchmark: tokens/s of `slimedge imatrix` vs llama.cpp's `llama-imatrix`, and how close the two matrices are.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_imatrix.py [--ctx 512] [--chunks 40] [--threads N] [--model DIR]
        [--text FILE] [--llama-bin DIR] [--repeat 2] [--keep]

Model: the demo teacher (``slimedge/data/demo-teacher``); text: the demo's held-out modules
(``slimedge.demo.corpus.heldout_text``) unless ``--text``. Each command runs in its own child process on
the same text, context, chunk count and threads (``--repeat`` times, the fastest counts), timed from spawn to
exit (interpreter, torch import and model load included: "wall tok/s"); "compute tok/s" is the forward passes
alone — slimedge's from its ``compute_imatrix`` log line, llama.cpp's from the time stamp of its "computing
over" line to its exit. llama-imatrix runs on the teacher's F32 GGUF (same numbers as the torch float32 model) and F16 GGUF (the usual input), with
``--no-ppl``. The ratio is slimedge / the faster llama.cpp run (goal >= 1x). Then the matrices: per tensor,
the relative difference of the importance (sums / counts) ||a - b|| / ||b|| and the largest element-wise
relative difference, slimedge vs llama-imatrix on the F32 GGUF.

``--llama-bin`` (default ``~/.cache/slimedge-dev/llama-tools-0.3.36/bin``): where llama-imatrix is; without
it only slimedge is measured.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = Path.home() / ".cache/slimedge-dev/llama-tools-0.3.36/bin"


REPEAT = 1


def run(argv: list[str], env=None, repeat: int | None = None) -> tuple[float, str]:
    """(wall seconds, output) of the fastest of ``repeat`` runs (the machine is shared: best of N)."""
    best = None
    for _ in range(repeat or REPEAT):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True, env=env)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(argv)}\n{p.stderr[-3000:]}")
        if best is None or dt < best[0]:
            best = (dt, p.stdout + p.stderr)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--model", type=Path, default=ROOT / "slimedge/data/demo-teacher")
    ap.add_argument("--text", type=Path, default=None)
    ap.add_argument("--llama-bin", type=Path, default=DEFAULT_BIN)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each command; the fastest counts")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    global REPEAT
    REPEAT = args.repeat
    work = Path(tempfile.mkdtemp(prefix="slimedge-bench-imatrix-"))
    try:
        text = args.text
        if text is None:
            from slimedge.demo.corpus import heldout_text

            text = work / "heldout.txt"
            text.write_text(heldout_text(), encoding="utf-8")
        common = ["--ctx", str(args.ctx), "--chunks", str(args.chunks)]
        env = dict(os.environ, SLIMEDGE_LOG="info")
        ours = work / "slimedge.imatrix.gguf"
        argv = [sys.executable, "-c", "import logging, sys; logging.basicConfig(level=logging.INFO, "
                "format='%(message)s'); from slimedge.cli import main; sys.argv[0] = 'slimedge'; main()",
                "imatrix", str(args.model), "--data", str(text), "-o", str(ours), "-t", str(args.threads), "-q",
                "--overwrite", *common]
        wall, out = run(argv, env)
        m = re.search(r"imatrix of .*: (\d+) tensors, (\d+) chunks of (\d+) tokens, ([\d.]+) s", out)
        n_tok = int(m.group(2)) * int(m.group(3))
        rows = [("slimedge imatrix (torch, float32)", wall, n_tok / wall, n_tok / float(m.group(4)))]

        exe = args.llama_bin / "llama-imatrix"
        theirs = {}
        if exe.exists():
            for ftype in ("F32", "F16"):
                g = work / f"teacher-{ftype}.gguf"
                run([sys.executable, "-m", "slimedge", "convert", str(args.model), "-o", str(g), "--type", ftype, "-q"],
                    repeat=1)
                theirs[ftype] = work / f"llama-{ftype}.imatrix.gguf"
                wall, out = run([str(exe), "-m", str(g), "-f", str(text), "-o", str(theirs[ftype]), "-c", str(args.ctx),
                                 "--chunks", str(args.chunks), "-t", str(args.threads), "--no-ppl"])
                # its log lines carry a time stamp (minutes.seconds.ms.us since start): compute starts at
                # "computing over"; it ends when the process does (the imatrix save is tiny)
                pm = re.search(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I compute_imatrix: computing over", out, re.M)
                start = (int(pm.group(1)) * 60 + int(pm.group(2)) + int(pm.group(3)) / 1e3) if pm else float("nan")
                compute = n_tok / (wall - start)
                rows.append((f"llama-imatrix ({ftype} GGUF)", wall, n_tok / wall, compute))
        else:
            print(f"(no {exe}: llama-imatrix not measured)")

        print(f"\n{args.model.name}, {n_tok} tokens ({args.chunks} chunks x {args.ctx}), {args.threads} threads\n")
        print("| run | wall s | wall tok/s | compute tok/s |\n|---|---:|---:|---:|")
        for name, w, wt, ct in rows:
            print(f"| {name} | {w:.2f} | {wt:.0f} | {ct:.0f} |")
        if len(rows) > 1:
            best_wall = max(r[2] for r in rows[1:])
            best_compute = max(r[3] for r in rows[1:])
            print(f"\nslimedge / fastest llama-imatrix: wall {rows[0][2] / best_wall:.2f}x, "
                  f"compute {rows[0][3] / best_compute:.2f}x (goal >= 1x)")
            compare(ours, theirs["F32"])
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def compare(ours: Path, theirs: Path) -> None:
    import numpy as np

    from slimedge.quant.imatrix_file import read_imatrix

    a, b = read_imatrix(ours), read_imatrix(theirs)
    print(f"\nimportance, slimedge vs llama-imatrix (F32 GGUF): {len(a.entries)} vs {len(b.entries)} tensors, "
          f"chunks {a.chunk_count} vs {b.chunk_count}\n")
    print("| tensor | counts (ours / llama) | rel. diff (L2) | max elementwise rel. diff |\n|---|---|---:|---:|")
    worst = 0.0
    for name in sorted(set(a.entries) | set(b.entries)):
        if name not in a.entries or name not in b.entries:
            print(f"| {name} | only in {'ours' if name in a.entries else 'llama'} | | |")
            continue
        x, y = a.importance(name).astype(np.float64), b.importance(name).astype(np.float64)
        l2 = float(np.linalg.norm(x - y) / np.linalg.norm(y))
        mx = float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-30)))
        worst = max(worst, l2)
        ca, cb = a.entries[name].counts.tolist(), b.entries[name].counts.tolist()
        print(f"| {name} | {ca} / {cb} | {l2:.2e} | {mx:.2e} |")
    print(f"\nlargest per-tensor relative difference (L2): {worst:.2e}")


if __name__ == "__main__":
    main()
