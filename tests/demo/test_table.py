"""The demo table from given records: ratios, text, Markdown and JSON."""

import json
import math

from slimedge.demo.table import Row, format_markdown, format_text, ratios, to_json

ROWS = [
    Row("teacher", "baseline (F16)", 9.5, 0.0, 1.0, 400.0, 10_500_000, gen_tps_std=10.0, bpw=16.0),
    Row("teacher", "quantized Q4_K_M", 9.9, 0.021, 0.95, 800.0, 3_500_000, bpw=5.3),
    Row("student", "distilled (F16)", 14.2, 0.35, 0.70, 1000.0, 7_000_000, bpw=16.0),
    Row("student", "distilled + Q4_K_M", 14.9, 0.38, 0.68, 1600.0, 2_500_000, bpw=5.3),
]


def test_ratios():
    r = ratios(ROWS)
    assert [d["speedup"] for d in r] == [1.0, 2.0, 2.5, 4.0]
    assert [round(d["smaller"], 3) for d in r] == [1.0, 3.0, 1.5, 4.2]
    assert r[1]["size_mb"] == 3.5


def test_text_and_markdown():
    text = format_text(ROWS)
    lines = text.splitlines()
    assert len(lines) == 6 and lines[0].split()[:2] == ["Model", "Technique"]
    assert len({len(l) for l in lines}) == 1  # fixed width
    assert "quantized Q4_K_M" in lines[3] and "2.00×" in lines[3] and "3.00×" in lines[3]
    assert "95.0%" in lines[3] and "0.0210" in lines[3] and "400 ± 10" in lines[2]
    md = format_markdown(ROWS).splitlines()
    assert md[0].startswith("| Model | Technique | Perplexity |") and md[1].startswith("|:---|:---|---:")
    assert md[5] == ("| student | distilled + Q4_K_M | 14.900 | 0.3800 | 68.0% | 1600 | 4.00× | 2.50 MB | 4.20× |")
    assert all(l.count("|") == 10 for l in md)


def test_json_with_missing_values():
    rows = ROWS[:1] + [Row("teacher", "quantized Q4_K_M", float("nan"), float("nan"), float("nan"), 0.0, 1)]
    doc = json.loads(to_json(rows, {"wall_s": 12.5}))
    assert doc["wall_s"] == 12.5 and doc["rows"][1]["perplexity"] is None and doc["rows"][1]["speedup"] == 0.0
    assert "n/a" in format_text(rows) and math.isnan(ratios(rows)[1]["kld_mean"])
