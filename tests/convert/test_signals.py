"""A real `slimedge convert` process stopped mid-write: SIGTERM cleans up like Ctrl-C (exit 143, no .part
left); after SIGKILL (nothing can clean up) the next run removes the dead run's .part and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# `python -m slimedge ...`, with the writer paused after its first tensor part (the only change), so the
# signal lands mid-write deterministically; marker receives the temporary file's path
CHILD = """
import pathlib, runpy, sys, time
import slimedge.writer as w
marker = pathlib.Path(sys.argv.pop(1))
real = w.GGUFStreamWriter.write_tensor_part
def paused(self, name, data):
    real(self, name, data)
    if not marker.exists():
        marker.write_text(str(self.tmp))
        time.sleep(300)
w.GGUFStreamWriter.write_tensor_part = paused
runpy.run_module("slimedge", run_name="__main__", alter_sys=True)
"""


def _start_paused(model: Path, out: Path, marker: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), "convert", str(model), "-o", str(out),
                             "--type", "Q8_0", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (marker.exists() and marker.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"convert never reached its first tensor: {proc.communicate()}")
        time.sleep(0.05)
    part = Path(marker.read_text())
    assert part.parent == out.parent and part.name.endswith(".part") and part.exists()
    return proc, part


def test_sigterm_mid_write_removes_the_part_file_and_exits_143(hf_model, tmp_path):
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    proc, part = _start_paused(hf_model, out, tmp_path / "marker")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "this is a bug" not in err
    assert os.listdir(out.parent) == []  # no .part, no output


def test_next_run_removes_a_killed_runs_part_file_with_a_warning(hf_model, tmp_path):
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    proc, part = _start_paused(hf_model, out, tmp_path / "marker")
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate(timeout=120)
    assert part.exists()
    res = subprocess.run([sys.executable, "-m", "slimedge", "convert", str(hf_model), "-o", str(out),
                          "--type", "Q8_0", "--quiet"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "leftover" in ln]
    assert warnings == [f"slimedge: removed 1 leftover(s) of interrupted runs: {part}"], res.stderr
    assert os.listdir(out.parent) == ["model.gguf"]
