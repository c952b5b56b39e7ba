"""slimedge sweep: entries parsed, a tiny model swept (llama.cpp mixes + an auto mix) into a table, JSON,
CSV and a non-empty picture; files on disk reused; the Pareto front."""

import json

import pytest

from slimedge.bench.sweep import AUTO, LLAMA, pareto, parse_types
from slimedge.errors import SlimedgeError
from tests.conftest import TINY_LLAMA


def test_parse_types():
    es = parse_types("q8_0, Q4_K_M,auto:4.5,auto:q3_k_m")
    assert [(e.label, e.kind) for e in es] == [("Q8_0", LLAMA), ("Q4_K_M", LLAMA), ("auto:4.5", AUTO),
                                              ("auto:Q3_K_M", AUTO)]
    assert es[2].target_bpw == 4.5 and es[3].target_size == "Q3_K_M"
    for bad in ("Q9_K", "auto:lots", ""):
        with pytest.raises(SlimedgeError, match="--types"):
            parse_types(bad)


def test_pareto():
    pts = [(1.0, 0.5), (2.0, 0.6), (2.0, 0.2), (3.0, 0.1), (4.0, 0.3)]
    assert pareto(pts) == [0, 2, 3]


@pytest.mark.slow
def test_sweep_tiny_model_writes_table_and_picture(hf_model, text_file, tmp_path):
    from click.testing import CliRunner

    from slimedge.cli import main

    out = tmp_path / "sweep"
    args = ["sweep", str(hf_model), "--types", "Q8_0,Q4_K_M,auto:Q4_K_M", "--text", str(text_file),
            "--calib", str(text_file), "-o", str(out), "-c", "64", "-r", "1", "-p", "16", "-n", "8", "-t", "1",
            "--quiet"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "auto:Q4_K_M" in r.output and "Q8_0" in r.output
    recs = json.loads((out / "sweep.json").read_text())
    assert [x["sweep_label"] for x in recs] == ["Q8_0", "Q4_K_M", "auto:Q4_K_M"]
    for x in recs:
        assert x["kld_mean"] is not None and x["kld_mean"] >= 0 and x["avg_ts"] > 0 and x["perplexity"] > 0
    size = {x["sweep_label"]: x["model_size"] for x in recs}
    assert size["auto:Q4_K_M"] <= size["Q4_K_M"] < size["Q8_0"]
    assert len((out / "sweep.csv").read_text().splitlines()) == 4
    png, svg = out / "sweep.png", out / "sweep.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "<svg" in svg.read_text()[:2000] and "auto:Q4_K_M" in svg.read_text()
    # a second sweep reuses the files already converted
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")}
    r = CliRunner().invoke(main, args[:3] + ["Q8_0"] + args[4:], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")} == mtimes


@pytest.mark.slow
def test_sweep_with_a_draft_adds_the_draft_column(hf_model, text_file, tmp_path):
    """--draft: every type's generation is also measured with speculative decoding (the same greedy tokens),
    in sweep.json and the table; a draft of another vocabulary is refused before anything is measured."""
    from click.testing import CliRunner

    from slimedge.cli import main
    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec
    from tests.factory import cached_hf_model

    small = cached_hf_model(**dict(TINY_LLAMA, num_hidden_layers=1, seed=3))  # same tokenizer, another model
    draft = convert(small, tmp_path / "draft-q8_0.gguf", QuantSpec("Q8_0")).out
    out = tmp_path / "sweep"
    args = ["sweep", str(hf_model), "--types", "Q8_0", "--text", str(text_file), "-o", str(out), "-c", "64",
            "-r", "1", "-p", "16", "-n", "24", "-t", "1", "--quiet", "--draft", str(draft), "--draft-max", "4"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "draft speed-up" in r.output and "same tokens" in r.output
    (rec,) = json.loads((out / "sweep.json").read_text())
    assert rec["draft_same_output"] is True and rec["draft_model"] == str(draft)
    assert rec["draft_avg_ts"] > 0 and rec["nodraft_avg_ts"] > 0 and 0 <= rec["draft_acceptance"] <= 1
    other = convert(cached_hf_model(arch="qwen2"), tmp_path / "other.gguf", QuantSpec("Q8_0")).out
    r = CliRunner().invoke(main, args[:-4] + ["--draft", str(other)])
    assert r.exit_code == 1 and "vocabulary" in r.output and "Traceback" not in r.output, r.output
