"""Response (sequence-level) distillation masks and runs; feature distillation with a projection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.distill.response import masks_for


def test_response_masks_exclude_prompt_and_after_eos():
    eos = 2
    ids = np.array([[5, 6, 7, 8, eos, 0, 0],    # prompt 5 6 7 | 8 EOS then padding
                    [5, 6, 7, 9, 9, 9, 9]])     # no EOS: all generated tokens count
    attn, mask = masks_for(ids, 3, eos)
    np.testing.assert_array_equal(attn, [[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    # position t predicts token t+1: targets 8 and EOS count, prompt targets and padding do not
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])


def _run(*args):
    return CliRunner().invoke(main, ["distill"] + [str(a) for a in args])


@pytest.mark.slow  # trains a student
def test_response_distillation_end_to_end(teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "resp"
    res = _run("--teacher", teacher_dir, "--data", corpus_file, "-o", out, "--layers", 1, "--steps", 3,
               "--seq-len", 32, "--batch-size", 4, "--response", "--prompt-len", 8, "--gen-len", 16,
               "--response-samples", 8, "--top-k", 20, "--gen-temperature", 0.8, "--alpha", 0.5, "--quiet")
    assert res.exit_code == 0, res.output
    r = json.loads((out / "distill_report.json").read_text())
    assert r["data"]["train_sequences"] == 8 and r["data"]["sequence_length"] == 24
    assert r["settings"]["response"] and r["settings"]["top_k"] == 20
    assert r["tokens_seen"] == 3 * 4 * 24 and np.isfinite(r["final_loss"])


@pytest.mark.slow  # trains a student
def test_feature_distillation_with_projection(teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "feat"
    res = _run("--teacher", teacher_dir, "--data", corpus_file, "-o", out, "--layers", 2, "--hidden", 32,
               "--heads", 2, "--kv-heads", 1, "--intermediate", 64, "--steps", 4, "--seq-len", 32,
               "--batch-size", 4, "--feature-weight", 0.5, "--feature-loss", "cosine", "--quiet")
    assert res.exit_code == 0, res.output
    assert "random init (no teacher tensor has a matching shape)" in res.output
    r = json.loads((out / "distill_report.json").read_text())
    assert r["student_params"] < r["teacher_params"] / 2
    from safetensors.numpy import load_file

    names = load_file(str(out / "model.safetensors")).keys()
    assert not any("proj." in n and n.startswith("proj") for n in names)  # projections are not saved
    assert all(n.startswith(("model.", "lm_head")) for n in names)
