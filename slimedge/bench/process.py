"""One benchmark job in a fresh ``python -m slimedge.bench.child`` process, and the mean ± sd of repeats.

Shared by the runner (speed, quality, embeddings) and the speculative-decoding measurement, so neither imports
the other: the job goes to the child as a JSON file, its result comes back as one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import SlimedgeError
from ..threads import native_env


def run_child(job: dict, timeout: float = 3600) -> dict:
    """Run one job in ``python -m slimedge.bench.child`` and return its result dict."""
    with tempfile.TemporaryDirectory(prefix="slimedge-bench-") as tmp:
        job = dict(job, result=str(Path(tmp) / "result.json"))
        jf = Path(tmp) / "job.json"
        jf.write_text(json.dumps(job))
        try:
            proc = subprocess.run([sys.executable, "-m", "slimedge.bench.child", str(jf)], capture_output=True,
                                  text=True, timeout=timeout, env=native_env())
        except subprocess.TimeoutExpired:
            raise SlimedgeError(f"{job['model']}: benchmark child timed out after {timeout:.0f}s") from None
        res_path = Path(job["result"])
        if not res_path.exists():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise SlimedgeError(f"{job['model']}: llama.cpp process died (exit {proc.returncode}): "
                                f"{' | '.join(tail) or 'no output'}; is the file a model llama.cpp can load?")
        res = json.loads(res_path.read_text())
    if not res.get("ok"):
        raise SlimedgeError(f"{job['model']}: llama.cpp could not run it: {res.get('error')}")
    return res


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return float(statistics.fmean(xs)), float(statistics.stdev(xs)) if len(xs) > 1 else 0.0
