"""End-to-end: the demo pipeline with tiny settings on the shipped teacher, through llama.cpp."""

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.demo.pipeline import DemoConfig, run_demo, shipped_teacher

pytestmark = pytest.mark.slow  # runs the whole demo: converts, distills, benchmarks


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig.fast(out=str(root / "out"), cache=str(root / "cache"), threads=2)
    return cfg, run_demo(cfg)


def test_shipped_teacher_files():
    t = shipped_teacher()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "teacher_report.json"):
        assert (t / name).is_file(), name
    report = json.loads((t / "teacher_report.json").read_text())
    # trained: far below random init (~4400) and the held-out unigram model (~870)
    assert report["heldout_perplexity"] < 400


def test_rows_with_sane_numbers(demo):
    cfg, res = demo
    rows = res.rows
    assert [(r.model, r.technique) for r in rows] == [
        ("teacher", "baseline (F16)"), ("teacher", "quantized Q4_K_M"), ("teacher", "Q4_K_M + imatrix"),
        ("teacher", "auto mix (Q4_K_M size) + imatrix"), ("teacher", "Q4_K_M + imatrix, tuned"),
        ("student", "distilled (F16)"), ("student", "distilled + Q4_K_M"), ("student", "distilled + Q4_K_M, tuned"),
        ("teacher", "F16 + distilled draft (Q8_0)")]
    base, quant, quant_imx, auto, tuned, student, squant, stuned, spec = rows
    # the teacher against itself: no divergence, full agreement
    assert base.kld_mean == pytest.approx(0.0, abs=1e-4) and base.top1_agreement == pytest.approx(1.0)
    for r in rows:
        assert 1.0 < r.perplexity < 1000 and math.isfinite(r.gen_tps) and r.gen_tps > 0
        assert 0.0 <= r.top1_agreement <= 1.0 and r.kld_mean >= 0.0
    # quantization: small divergence; the student (2 layers, 6 steps) diverges more
    assert 0.0 < quant.kld_mean < student.kld_mean
    assert quant.top1_agreement > 0.8
    # sizes: Q4_K_M about 3x smaller than F16, the student smaller than the teacher
    assert 2.5 < base.size_bytes / quant.size_bytes < 4.0
    assert student.size_bytes < base.size_bytes and squant.size_bytes < quant.size_bytes
    assert all(Path(r.path).is_file() for r in rows)
    # the imatrix changes the values, not the layout; the auto mix fits Q4_K_M's tensor bytes and beats it
    assert quant_imx.extra["model_size"] == quant.extra["model_size"]
    assert auto.extra["model_size"] <= quant.extra["model_size"]
    assert auto.kld_mean < quant.kld_mean
    # tuning learns block scales only: the same file size as the file it started from
    assert tuned.size_bytes == quant_imx.size_bytes and stuned.size_bytes == squant.size_bytes
    assert tuned.path != quant_imx.path and stuned.path != squant.path
    # the teacher with a distilled draft: its tokens (so its quality), both files' bytes, a measured ratio
    assert spec.extra["draft_same_output"] and spec.perplexity == base.perplexity and spec.kld_mean == base.kld_mean
    assert spec.size_bytes > base.size_bytes and spec.extra["draft_proposed"] > 0
    assert spec.gen_tps == pytest.approx(base.gen_tps * spec.extra["draft_speedup"])


def test_outputs_written(demo):
    cfg, res = demo
    doc = json.loads(Path(res.json_path).read_text())
    assert [r["technique"] for r in doc["rows"]][1] == "quantized Q4_K_M"
    assert doc["rows"][0]["speedup"] == 1.0 and doc["rows"][1]["smaller"] > 2.5
    assert doc["distill"]["steps"] == cfg.distill_steps and doc["wall_s"] > 0
    md = Path(res.markdown_path).read_text().splitlines()
    assert len(md) == 11 and md[2].startswith("| teacher | baseline (F16) |")
    assert (Path(cfg.out) / "demo_table.txt").read_text() == res.text


def test_cli_reuses_cache(demo):
    cfg, first = demo
    out = Path(cfg.out).parent / "out2"
    r = CliRunner().invoke(main, ["demo", "--fast", "--quiet", "--cache", cfg.cache, "--out", str(out),
                                  "-t", "2"])
    assert r.exit_code == 0, r.output
    assert "distilled + Q4_K_M" in r.output and r.output.splitlines()[0].startswith("Model")
    doc = json.loads((out / "demo_table.json").read_text())
    # cached artifacts: nothing converted or distilled again, the same GGUFs measured
    assert doc["timings_s"]["distill"] < 5 and doc["timings_s"]["convert_teacher"] < 5
    assert [r["path"] for r in doc["rows"]] == [r.path for r in first.rows]
    assert [r["perplexity"] for r in doc["rows"]] == pytest.approx([r.perplexity for r in first.rows], rel=1e-6)


def test_missing_teacher_is_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--fast", "--quiet", "--cache", str(tmp_path / "c"),
                                  "--out", str(tmp_path / "o"), "--teacher", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "demo teacher not found" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()
