"""``convert --tune`` / ``build --tune``: the quantized file tuned against its teacher before it is written.

Checked on a tiny model: the output has the untuned file's size and tensor types but other scale bytes, no
temporary is left; a student converted with ``--tune-teacher`` is tuned against that teacher; the bundle's
manifest and README record the run; the bad uses are one line each and write nothing.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tests.distill.distill_kit import corpus_text
from tests.factory import cached_hf_model

from slimedge.cli import main
from slimedge.gguf_info import read_info


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune-convert")
    (d / "train.txt").write_text(corpus_text(40_000))
    return cached_hf_model(arch="llama", kquant=True), d


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


TUNE = ("--tune-steps", 2, "-t", 1)


@pytest.mark.slow
def test_convert_tune_writes_a_tuned_file_of_the_same_size(setup, tmp_path):
    hf, d = setup
    plain, tuned = tmp_path / "plain.gguf", tmp_path / "tuned.gguf"
    assert _run("convert", hf, "-o", plain, "--type", "Q4_K_M", "-q").exit_code == 0
    r = _run("convert", hf, "-o", tuned, "--type", "Q4_K_M", "--tune", d / "train.txt", *TUNE)
    assert r.exit_code == 0, r.output
    assert "tuned against" in r.output and f"wrote {tuned}:" in r.output
    a, b = read_info(plain), read_info(tuned)
    assert a.file_size == b.file_size and [(t.name, t.type) for t in a.tensors] == [(t.name, t.type) for t in b.tensors]
    assert plain.read_bytes()[:a.data_offset] == tuned.read_bytes()[:b.data_offset]
    assert plain.read_bytes() != tuned.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.gguf", "tuned.gguf"]  # no temporary left

    # a student (another depth and width, the teacher's tokenizer) converted and tuned against the teacher
    student = cached_hf_model(arch="llama", kquant=True, num_hidden_layers=1, intermediate_size=768, seed=5)
    st = tmp_path / "student.gguf"
    r = _run("convert", student, "-o", st, "--type", "Q4_K_M", "--tune", d / "train.txt", "--tune-teacher", hf, *TUNE)
    assert r.exit_code == 0, r.output
    assert f"tuned against {hf}" in r.output


@pytest.mark.slow
def test_build_tune_records_the_run(setup, tmp_path):
    hf, d = setup
    out = tmp_path / "bundle"
    r = _run("build", hf, "--target", "cpu", "--type", "Q4_K_M", "-o", out, "--tune", d / "train.txt", *TUNE, "-q")
    assert r.exit_code == 0, r.output
    t = json.loads((out / "manifest.json").read_text())["quantization"]["tuned"]
    assert t["steps"] == 2 and t["teacher"] == str(hf.resolve()) and t["kl_before"] > 0 and t["kl_after"] > 0
    assert "block scales tuned against" in (out / "README.md").read_text()
    assert _run("verify", out).exit_code == 0
    # an already quantized GGUF packed as it is: tuned into the bundle against --tune-teacher
    q = tmp_path / "q.gguf"
    assert _run("convert", hf, "-o", q, "--type", "Q4_K_M", "-q").exit_code == 0
    r = _run("build", q, "--target", "cpu", "-o", tmp_path / "b2", "--tune", d / "train.txt", "--tune-teacher", hf,
             *TUNE, "-q")
    assert r.exit_code == 0, r.output
    assert read_info(tmp_path / "b2" / "model.gguf").file_size == q.stat().st_size


def test_bad_uses_are_one_line_and_write_nothing(setup, tmp_path):
    hf, d = setup
    r = _run("convert", hf, "-o", tmp_path / "x.gguf", "--type", "Q4_K_M", "--tune-steps", 3)
    assert r.exit_code != 0 and "need --tune DATA" in r.output
    f16 = tmp_path / "f16.gguf"
    assert _run("convert", hf, "-o", f16, "--type", "F16", "-q").exit_code == 0
    r = _run("convert", f16, "-o", tmp_path / "x.gguf", "--type", "Q4_K_M", "--tune", d / "train.txt")
    assert r.exit_code == 1 and "cannot be its own teacher" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    r = _run("build", hf, "--target", "cpu", "--types", "Q8_0,Q4_K_M", "-o", tmp_path / "rel", "--tune",
             d / "train.txt")
    assert r.exit_code != 0 and "not to a --types release" in r.output
    r = _run("convert", hf, "-o", tmp_path / "x.gguf", "--type", "F16", "--tune", d / "train.txt", "-t", 1)
    assert r.exit_code == 1 and "no quantized tensor to tune" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f16.gguf"]
