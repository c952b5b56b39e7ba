"""Benchmark: bf16 safetensors -> Q4_K_M GGUF, slimedge in one pass vs the two-step llama.cpp route.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_e2e_q4km.py [--threads N] [--layers 22] [--hidden 2048] [--workdir DIR] [--keep]

A TinyLlama-1.1B-shaped random model (22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads,
vocabulary 32000, bf16, 2.2 GB; SentencePiece tokenizer trained locally) is written tensor by tensor
(``_models.py``). Then, each step in its own child process, timed from spawn to exit (interpreter
start-up included) and followed by ``sync`` so written data reaches the disk:

* one pass:  ``slimedge convert MODEL --type Q4_K_M --threads N``
* two steps: ``slimedge convert MODEL --type F16 --threads N``, then
  ``llama_cpp.llama_model_quantize(F16, OUT, ftype=LLAMA_FTYPE_MOSTLY_Q4_K_M, nthread=N)``

Peak RSS of each child comes from ``os.wait4`` (its ``ru_maxrss``). A spawned child starts with its
parent's high-water mark, so the model is made in a child too and this process never imports NumPy
before the measurements: its own peak, printed as the "floor", is the lowest any child can show.
The two-step route reports the sum of its wall times and the larger of its peaks; the ratios are
slimedge / two-step (goal: <= 0.3x wall, <= 0.5x peak RSS). Finally both Q4_K_M files are compared
tensor by tensor (name, shape, type, and the bytes at each tensor's offset): "identical" or the first
difference (exit status 1).
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import drop_caches  # tests/benchmarks/_common.py (standard library only)

HERE = Path(__file__).resolve().parent

MAKE_MODEL = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import _models;"
              "h = int(sys.argv[4]); _models.make_model(Path(sys.argv[2]), int(sys.argv[3]), h or None)")
LLAMA_QUANTIZE = ("import ctypes, sys, llama_cpp;"
                  "p = llama_cpp.llama_model_quantize_default_params();"
                  "p.nthread = int(sys.argv[3]); p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M;"
                  "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),"
                  " ctypes.byref(p)))")


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_child(argv: list[str], log: Path) -> tuple[float, int, float]:
    """Run ``argv`` to completion: (seconds from spawn to exit + sync, its peak RSS in bytes, its CPU seconds)."""
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(argv) + "\n").encode())
        f.flush()
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        os.sync()
        seconds = time.perf_counter() - t
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"step failed (exit status {rc}): {' '.join(argv)}\n" + "\n".join(tail))
    return seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime  # Linux: ru_maxrss in KiB


def slimedge_convert(model: Path, out: Path, ftype: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "slimedge", "convert", str(model), "-o", str(out), "--type", ftype,
            "--threads", str(threads), "--quiet"]


def first_difference(a: Path, b: Path) -> str | None:
    """None when both GGUF files hold the same tensors (names, shapes, types, data bytes), else what differs."""
    from slimedge.gguf_info import read_info

    ia, ib = read_info(str(a)), read_info(str(b))
    if len(ia.tensors) != len(ib.tensors):
        return f"{len(ia.tensors)} tensors in {a.name}, {len(ib.tensors)} in {b.name}"
    tb = {t.name: t for t in ib.tensors}
    chunk = 1 << 24
    with open(a, "rb") as fa, open(b, "rb") as fb, \
            mmap.mmap(fa.fileno(), 0, access=mmap.ACCESS_READ) as ma, \
            mmap.mmap(fb.fileno(), 0, access=mmap.ACCESS_READ) as mb:
        for x in ia.tensors:
            y = tb.get(x.name)
            if y is None:
                return f"{x.name}: in {a.name} only"
            if (x.shape, x.type, x.n_bytes) != (y.shape, y.type, y.n_bytes):
                return f"{x.name}: {x.type} {list(x.shape)} in {a.name}, {y.type} {list(y.shape)} in {b.name}"
            for s in range(0, x.n_bytes, chunk):
                n = min(chunk, x.n_bytes - s)
                da, db = ma[x.offset + s:x.offset + s + n], mb[y.offset + s:y.offset + s + n]
                if da != db:
                    i = next(k for k in range(n) if da[k] != db[k]) + s
                    block = i // _type_size(x.type)
                    return f"{x.name} ({x.type}): first differing byte {i} of {x.n_bytes} (block {block})"
    return None


def _type_size(type_name: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=default_threads(), help="threads for both routes (all cores)")
    ap.add_argument("--layers", type=int, default=22, help="transformer blocks (22; fewer for a quick run)")
    ap.add_argument("--hidden", type=int, default=0,
                    help="model width, a multiple of 256 (TinyLlama's 2048; smaller for a quick run)")
    ap.add_argument("--workdir", type=Path, default=None, help="where model and outputs go (a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the model and the GGUF files")
    args = ap.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="slimedge-bench-e2e-", dir=args.workdir))
    log = work / "steps.log"
    model, f16 = work / "tinyllama-random", work / "two-step-f16.gguf"
    one, two = work / "slimedge-q4km.gguf", work / "two-step-q4km.gguf"
    try:
        t = time.perf_counter()
        run_child([sys.executable, "-c", MAKE_MODEL, str(HERE), str(model), str(args.layers), str(args.hidden)], log)
        src_bytes = (model / "model.safetensors").stat().st_size
        print(f"made model: {src_bytes / 1e9:.2f} GB bf16 ({args.layers} layers) in {time.perf_counter() - t:.1f} s; "
              f"{args.threads} threads; log: {log}", flush=True)

        floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # children start at this mark
        drop_caches()
        rows = [("slimedge one pass", "convert --type Q4_K_M", *run_child(
            slimedge_convert(model, one, "Q4_K_M", args.threads), log))]
        drop_caches()
        rows.append(("two-step", "1. slimedge convert --type F16",
                     *run_child(slimedge_convert(model, f16, "F16", args.threads), log)))
        rows.append(("two-step", "2. llama_model_quantize Q4_K_M",
                     *run_child([sys.executable, "-c", LLAMA_QUANTIZE, str(f16), str(two), str(args.threads)], log)))

        two_wall, two_rss, two_cpu = rows[1][2] + rows[2][2], max(rows[1][3], rows[2][3]), rows[1][4] + rows[2][4]
        print(f"\n{'route':<20}{'step':<34}{'seconds':>9}{'peak RSS MB':>13}{'CPU s':>8}")
        for route, step, sec, rss, cpu in rows:
            print(f"{route:<20}{step:<34}{sec:9.2f}{rss / 1e6:13.0f}{cpu:8.1f}")
        print(f"{'two-step':<20}{'total (sum of wall, max of RSS)':<34}{two_wall:9.2f}{two_rss / 1e6:13.0f}"
              f"{two_cpu:8.1f}")
        wall_ratio, rss_ratio = rows[0][2] / two_wall, rows[0][3] / two_rss
        print(f"{'slimedge / two-step':<54}{wall_ratio:8.2f}x{rss_ratio:12.2f}x{rows[0][4] / two_cpu:7.2f}x")
        print(f"{'slimedge / llama_model_quantize alone':<54}{rows[0][2] / rows[2][2]:8.2f}x"
              f"{rows[0][3] / rows[2][3]:12.2f}x{rows[0][4] / rows[2][4]:7.2f}x")
        print(f"goal: wall <= 0.30x ({'met' if wall_ratio <= 0.3 else 'not met'}), "
              f"peak RSS <= 0.50x ({'met' if rss_ratio <= 0.5 else 'not met'}); "
              f"RSS floor (this process at spawn) {floor / 1e6:.0f} MB")
        print(f"files: slimedge {one.stat().st_size / 1e6:.1f} MB, two-step {two.stat().st_size / 1e6:.1f} MB "
              f"(F16 intermediate {f16.stat().st_size / 1e6:.1f} MB)")

        diff = first_difference(one, two)
        print("tensors: identical (names, shapes, types, bytes)" if diff is None else f"tensors differ: {diff}")
        if diff is not None:
            sys.exit(1)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
