"""Two processes under torchrun (DDP, gloo on CPU) train the same student as one process, also with
the teacher sharded across them (--fsdp-teacher)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from slimedge.cli import main


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(teacher_dir, corpus_file, tmp_path):
    args = ["--teacher", teacher_dir, "--data", corpus_file, "--layers", 1, "--steps", 3, "--seq-len", 32,
            "--batch-size", 4, "--lr", 2e-3, "--alpha", 0.3, "--chunk-size", 16, "--quiet"]
    args = [str(a) for a in args]
    one = CliRunner().invoke(main, ["distill"] + args + ["-o", str(tmp_path / "one")])
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


def _torchrun(args, out):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "slimedge", "distill", *args, "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_torchrun_fsdp_teacher_equals_one_process(teacher_dir, corpus_file, tmp_path):
    # live teacher logits and hidden states (feature KD) from a teacher sharded over 2 processes
    args = [str(a) for a in ["--teacher", teacher_dir, "--data", corpus_file, "--layers", 2, "--steps", 2,
                             "--seq-len", 32, "--batch-size", 4, "--lr", 2e-3, "--alpha", 0.3, "--chunk-size", 16,
                             "--feature-weight", 0.5, "--quiet"]]
    one = CliRunner().invoke(main, ["distill", *args, "--fsdp-teacher", "-o", str(tmp_path / "one")])  # 1 process
    assert one.exit_code == 0, one.output
    proc = _torchrun(args + ["--fsdp-teacher"], tmp_path / "two")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("wrote") == 1
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)
    import json

    r1 = json.loads((tmp_path / "one" / "distill_report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "distill_report.json").read_text())
    assert (r1["teacher_sharded"], r2["teacher_sharded"]) == (False, True)
    assert r2["world_size"] == 2
    assert r2["teacher_params"] == r1["teacher_params"]
    for key in ("teacher_perplexity", "student_perplexity_start", "student_perplexity", "kl_start", "kl",
                "top1_agreement_start", "top1_agreement", "final_loss"):
        assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_torchrun_fsdp_teacher_builds_the_same_cache(teacher_dir, corpus_file, tmp_path):
    # every process runs the sharded teacher over the blocks; process 0 writes the cache
    args = [str(a) for a in ["--teacher", teacher_dir, "--data", corpus_file, "--layers", 1, "--steps", 1,
                             "--seq-len", 32, "--batch-size", 4, "--chunk-size", 16, "--cache-k", 8, "--quiet"]]
    one = CliRunner().invoke(main, ["distill", *args, "--teacher-cache", str(tmp_path / "c1"), "-o",
                                    str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    proc = _torchrun(args + ["--fsdp-teacher", "--teacher-cache", str(tmp_path / "c2")], tmp_path / "two")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    names = sorted(p.name for p in (tmp_path / "c1").glob("*.npy"))
    assert names == sorted(p.name for p in (tmp_path / "c2").glob("*.npy")) and "train_logp.npy" in names
    for name in names:
        a, b = np.load(tmp_path / "c1" / name), np.load(tmp_path / "c2" / name)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=name)  # top-k ids: exactly equal
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)


def test_fsdp_teacher_refuses_response(teacher_dir, corpus_file, tmp_path):
    res = CliRunner().invoke(main, ["distill"] + [str(a) for a in ["--teacher", teacher_dir, "--data", corpus_file, "-o",
                                                                   tmp_path / "o", "--response", "--fsdp-teacher"]])
    assert res.exit_code != 0 and "--fsdp-teacher" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_grad_accumulation_equals_one_big_batch(teacher_dir, corpus_file, tmp_path):
    args = [str(a) for a in ["--teacher", teacher_dir, "--data", corpus_file, "--layers", 1, "--steps", 2,
                             "--seq-len", 32, "--batch-size", 4, "--chunk-size", 16, "--quiet"]]
    assert CliRunner().invoke(main, ["distill"] + args + ["-o", str(tmp_path / "a")]).exit_code == 0
    assert CliRunner().invoke(main, ["distill", *args, "-o", str(tmp_path / "b"), "--grad-accum", "4"]).exit_code == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)
