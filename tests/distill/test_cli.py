"""`slimedge distill` end to end on a tiny trained teacher, resume, and every bad input as a clean error."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tests.factory import cached_hf_model

from slimedge.cli import main

pytestmark = pytest.mark.slow  # trains students

BASE = ["--seq-len", "64", "--batch-size", "8", "--chunk-size", "32", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, ["distill"] + [str(a) for a in args] + BASE)


def leftovers(parent):
    return [n for n in os.listdir(parent) if ".tmp-" in n or ".old-" in n or n.endswith(".checkpoints")]


@pytest.fixture(scope="module")
def distilled(teacher_dir, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "student"
    res = run("--teacher", teacher_dir, "--data", corpus_file, "-o", out, "--layers", 2, "--steps", 40,
              "--lr", 2e-3)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_distill_brings_student_closer_to_teacher(distilled, teacher_dir):
    out, printed = distilled
    r = json.loads((out / "distill_report.json").read_text())
    for key in ("teacher_params", "student_params", "teacher_perplexity", "student_perplexity_start",
                "student_perplexity", "kl_start", "kl", "top1_agreement_start", "top1_agreement",
                "tokens_seen", "wall_time_s", "settings"):
        assert key in r, key
    assert r["student_params"] < r["teacher_params"]
    assert r["kl"] < 0.7 * r["kl_start"]
    assert r["top1_agreement"] > r["top1_agreement_start"] + 0.03
    assert r["student_perplexity"] < r["student_perplexity_start"]
    assert r["tokens_seen"] == 40 * 8 * 64 and r["settings"]["layers"] == 2
    assert "init from teacher" in printed and "KL" in printed
    assert not leftovers(out.parent)
    assert {p.name for p in out.iterdir()} >= {"config.json", "distill_report.json", "generation_config.json",
                                               "model.safetensors", "tokenizer_config.json"}
    from slimedge.distill.api import TOKENIZER_FILES

    tok_files = [n for n in TOKENIZER_FILES if (teacher_dir / n).exists()]
    assert "tokenizer.model" in tok_files
    for n in tok_files:  # the teacher's tokenizer, byte for byte
        assert (out / n).read_bytes() == (teacher_dir / n).read_bytes(), n
    umask = os.umask(0)
    os.umask(umask)  # the folder gets plain mkdir/open permissions, not mkdtemp's 0700/0600
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_output_loads_in_transformers_and_report_matches(distilled, teacher_dir, corpus_file):
    """The saved student loads with transformers; its KL/agreement recomputed from plain forwards match."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimedge.distill.tokens import prepare

    out, _ = distilled
    r = json.loads((out / "distill_report.json").read_text())
    student = AutoModelForCausalLM.from_pretrained(out).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert student.config.num_hidden_layers == 2 and len(tok) == len(AutoTokenizer.from_pretrained(teacher_dir))
    blocks = prepare(str(corpus_file), tok, 64).eval[:64]
    x = torch.from_numpy(blocks)
    with torch.no_grad():
        ls = student(input_ids=x).logits[:, :-1].double().log_softmax(-1)
        lt = teacher(input_ids=x).logits[:, :-1].double().log_softmax(-1)
    kl = float((lt.exp() * (lt - ls)).sum(-1).mean())
    agree = float((lt.argmax(-1) == ls.argmax(-1)).double().mean())
    assert kl == pytest.approx(r["kl"], rel=1e-3)
    assert agree == pytest.approx(r["top1_agreement"], abs=2e-3)
    ppl = float(torch.exp(-ls.gather(-1, x[:, 1:, None]).mean()))
    assert ppl == pytest.approx(r["student_perplexity"], rel=1e-3)
    gen = student.generate(input_ids=x[:1, :8], max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 12)


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def test_resume_equals_uninterrupted_run(teacher_dir, corpus_file, tmp_path):
    common = ["--teacher", teacher_dir, "--data", corpus_file, "--layers", 1, "--steps", 4, "--seed", 3]
    assert run(*common, "-o", tmp_path / "a").exit_code == 0
    ck = tmp_path / "ck"
    res = run(*common, "-o", tmp_path / "b", "--checkpoint-every", 2, "--checkpoint-dir", ck)
    assert res.exit_code == 0, res.output
    assert (ck / "checkpoint.pt").exists()  # the step-2 state, kept because --checkpoint-dir was given
    res = run(*common, "-o", tmp_path / "c", "--checkpoint-dir", ck, "--resume")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c" / "distill_report.json").read_text())["resumed_from_step"] == 2
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_allclose(a[k], c[k], rtol=0, atol=1e-6)
    res = run(*common, "-o", tmp_path / "d", "--checkpoint-dir", ck, "--resume", "--layers", 2)
    assert res.exit_code == 1 and "was made with other student" in res.output


def _corrupt_copy(src, dst, how):
    shutil.copytree(src, dst)
    if how == "nan":
        from safetensors.torch import load_file, save_file

        sd = load_file(dst / "model.safetensors")
        sd["model.norm.weight"][:] = float("nan")
        save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    elif how == "config":
        (dst / "config.json").write_text("{ not json")
    elif how == "weights":
        p = dst / "model.safetensors"
        p.write_bytes(p.read_bytes()[:1000])
    return dst


def test_nan_loss_stops_keeps_last_good_checkpoint(teacher_dir, corpus_file, tmp_path):
    bad = _corrupt_copy(teacher_dir, tmp_path / "nan_teacher", "nan")
    out = tmp_path / "out"
    res = run("--teacher", bad, "--data", corpus_file, "-o", out, "--layers", 1, "--steps", 3, "--init", "random")
    assert res.exit_code == 1
    assert "became nan at step 1" in res.output and "Traceback" not in res.output
    assert not out.exists()
    assert (tmp_path / "out.checkpoints" / "checkpoint.pt").exists()
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n] == []


@pytest.mark.parametrize("case", ["no-teacher", "teacher-config", "teacher-weights", "vocab", "empty-data",
                                  "short-data", "seq-len", "output-exists", "batch", "multimodal"])
def test_bad_input_clean_error(case, teacher_dir, corpus_file, tmp_path):
    teacher, data, out, extra = teacher_dir, corpus_file, tmp_path / "out", []
    expect = {"no-teacher": "teacher not found", "teacher-config": "cannot read teacher config",
              "teacher-weights": "cannot read teacher weights", "vocab": "vocab_size",
              "empty-data": "contains no text", "short-data": "too short",
              "seq-len": "exceeds the teacher's context", "output-exists": "already exists",
              "batch": "multiple of --grad-accum", "multimodal": "inside text_config"}[case]
    if case == "no-teacher":
        teacher = tmp_path / "nowhere"
    elif case in ("teacher-config", "teacher-weights"):
        teacher = _corrupt_copy(teacher_dir, tmp_path / "t", case.split("-")[1])
    elif case == "vocab":
        cfg = json.loads((teacher_dir / "config.json").read_text())
        cfg["vocab_size"] += 5
        cfg["num_hidden_layers"] = 1
        (tmp_path / "student.json").write_text(json.dumps(cfg))
        extra = ["--student-config", tmp_path / "student.json"]
    elif case == "empty-data":
        data = tmp_path / "empty.txt"
        data.write_text("\n \n")
    elif case == "short-data":
        data = tmp_path / "short.txt"
        data.write_text("a short text of a few tokens")
    elif case == "seq-len":
        extra = ["--seq-len", 512]  # the teacher's context is 256
    elif case == "output-exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "batch":
        extra = ["--grad-accum", 3]
    elif case == "multimodal":  # a vision-language wrapper: its language model is not the folder's model
        teacher = cached_hf_model(arch="gemma3_mm")
    shape = [] if case == "vocab" else ["--layers", 1]
    res = CliRunner().invoke(main, ["distill"] + [str(a) for a in ["--teacher", teacher, "--data", data, "-o", out,
                                                                   *shape, "--steps", 2, *BASE, *extra]])
    assert res.exit_code == 1, res.output
    assert expect in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    if case == "output-exists":
        assert os.listdir(out) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not leftovers(tmp_path)


def test_output_converts_with_slimedge_convert_and_runs_in_llama_cpp(distilled, tmp_path):
    """The distilled folder goes through `slimedge convert`; llama.cpp's logits match transformers'."""
    import llama_cpp
    from transformers import AutoModelForCausalLM

    from slimedge.cli.convert import cli as convert_cli

    out, _ = distilled
    gguf = tmp_path / "student.gguf"
    res = CliRunner().invoke(convert_cli, [str(out), "-o", str(gguf), "--type", "F32", "--quiet"])
    assert res.exit_code == 0, res.output
    tokens = [1] + list(range(40, 70))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(out).eval()(torch.tensor([tokens])).logits[0].numpy()
    llm = llama_cpp.Llama(model_path=str(gguf), logits_all=True, n_ctx=64, n_batch=64, n_threads=1,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    try:
        llm.eval(tokens)
        got = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()
    assert np.abs(got - want).max() / want.std() < 1e-3
