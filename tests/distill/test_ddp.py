"""Two processes under torchrun (DDP, gloo on CPU) train the same student as one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from slimedge.cli.distill import cli


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(teacher_dir, corpus_file, tmp_path):
    args = ["--teacher", teacher_dir, "--data", corpus_file, "--layers", 1, "--steps", 3, "--seq-len", 32,
            "--batch-size", 4, "--lr", 2e-3, "--alpha", 0.3, "--chunk-size", 16, "--quiet"]
    args = [str(a) for a in args]
    one = CliRunner().invoke(cli, args + ["-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "slimedge", "distill", *args, "-o", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "wrote" in proc.stdout and proc.stdout.count("wrote") == 1  # only process 0 writes
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)
    import json

    r1 = json.loads((tmp_path / "one" / "distill_report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "distill_report.json").read_text())
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r2["kl"] == pytest.approx(r1["kl"], rel=1e-4)
    assert r2["kl"] < r2["kl_start"]


def test_grad_accumulation_equals_one_big_batch(teacher_dir, corpus_file, tmp_path):
    args = [str(a) for a in ["--teacher", teacher_dir, "--data", corpus_file, "--layers", 1, "--steps", 2,
                             "--seq-len", 32, "--batch-size", 4, "--chunk-size", 16, "--quiet"]]
    assert CliRunner().invoke(cli, args + ["-o", str(tmp_path / "a")]).exit_code == 0
    assert CliRunner().invoke(cli, args + ["-o", str(tmp_path / "b"), "--grad-accum", "4"]).exit_code == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)
