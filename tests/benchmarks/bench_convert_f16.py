"""Benchmark: convert a TinyLlama-1.1B-shaped random bf16 model to F16; wall time, MB/s, peak RSS.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_convert_f16.py [--workdir DIR] [--layers 22] [--keep]

The model (config.json + one bf16 model.safetensors of 2.2 GB + a locally trained SentencePiece
tokenizer with a token for each of the 32000 ids) is written tensor by tensor, so making it needs little RAM.
Each conversion runs in a child process (timed including interpreter start-up) that reports its own
peak RSS (VmHWM); once with the C kernels, once with the NumPy backend (``SLIMEDGE_PUREPYTHON=1``).
Anchor, measured in the same run: copying the same safetensors file (read + write of the same
bytes, page cache dropped where permitted), so "x copy" says how close conversion gets to plain I/O.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import drop_caches  # tests/benchmarks/_common.py
from _models import largest_tensor_values, make_model, tinyllama_config  # tests/benchmarks/_models.py


def run_convert(model: Path, out: Path, env: dict) -> tuple[float, int, int]:
    """Convert in a child process: (seconds incl. start-up, its peak RSS in bytes, output bytes)."""
    # the child reports its own VmHWM (ru_maxrss would carry the parent's mark across exec)
    code = ("import sys; from slimedge.convert import convert; from slimedge.quant.mixes import QuantSpec;"
            "convert(sys.argv[1], sys.argv[2], QuantSpec('F16'), overwrite=True);"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(model), str(out)], check=True, capture_output=True,
                          text=True, env={**os.environ, **env})
    os.sync()
    seconds = time.perf_counter() - t
    return seconds, int(proc.stdout.split()[-1]) * 1024, out.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="slimedge-bench-"))
    try:
        t = time.perf_counter()
        model = make_model(work / "tinyllama-random", args.layers)
        src_bytes = (model / "model.safetensors").stat().st_size
        print(f"made model: {src_bytes / 1e9:.2f} GB bf16 in {time.perf_counter() - t:.1f} s")

        drop_caches()
        t = time.perf_counter()
        shutil.copyfile(model / "model.safetensors", work / "copy.safetensors")
        os.sync()
        t_copy = time.perf_counter() - t
        (work / "copy.safetensors").unlink()

        rows = []
        for label, env in (("slimedge convert (C kernels)", {}),
                           ("slimedge convert (NumPy)", {"SLIMEDGE_PUREPYTHON": "1"})):
            (work / "tinyllama-f16.gguf").unlink(missing_ok=True)  # no 2 GB unlink inside the timing
            drop_caches()
            t_conv, rss, out_bytes = run_convert(model, work / "tinyllama-f16.gguf", env)
            rows.append((label, t_conv, rss, out_bytes))
        largest = largest_tensor_values(tinyllama_config(args.layers)) * 4

        print(f"{'step':<30}{'seconds':>9}{'MB/s':>8}{'x copy':>8}{'peak RSS MB':>13}")
        print(f"{'anchor: copy safetensors':<30}{t_copy:9.2f}{src_bytes / 1e6 / t_copy:8.0f}{1:8.2f}{'':>13}")
        for label, t_conv, rss, out_bytes in rows:
            print(f"{label:<30}{t_conv:9.2f}{out_bytes / 1e6 / t_conv:8.0f}{t_conv / t_copy:8.2f}{rss / 1e6:13.0f}")
        rss = rows[0][2]
        print(f"peak RSS of the conversion: {rss / 1e6:.0f} MB (model {src_bytes / 1e6:.0f} MB bf16; "
              f"largest tensor as float32 {largest / 1e6:.0f} MB; RSS / largest = {rss / largest:.1f}x)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
