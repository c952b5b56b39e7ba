"""tests/arch/coverage.py: llama.cpp's text architectures beside slimedge's, on the frozen list (and a tree)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slimedge.arch import supported_architectures
from tests.arch import coverage

SCRIPT = Path(coverage.__file__)


def sections(text: str) -> dict[str, list[str]]:
    """Section title -> HF names listed under it."""
    out, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith("):"):
            current = line.rsplit(" (", 1)[0]
            out[current] = []
        elif line.startswith("  ") and current:
            out[current].append(line.split()[0])
    return out


def test_every_registered_family_is_shown_as_converted_on_the_frozen_list():
    r = subprocess.run([sys.executable, str(SCRIPT), "--frozen"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names, header = coverage.read_frozen()
    assert "frozen 20" in header and len(names) > 250 and names["Olmo3ForCausalLM"] == "olmo"
    assert r.stdout.startswith(f"llama.cpp text architectures: {len(names)} (frozen list")
    got = sections(r.stdout)
    shown = got["converted"] + got["converted, not in llama.cpp's list"]
    assert sorted(shown) == supported_architectures()
    assert "BertModel" in shown and "BertForMaskedLM" in got["refused on purpose"] and "T5ForConditionalGeneration" in got["refused on purpose"]
    assert set(got["missing"]).isdisjoint(shown) and len(got["missing"]) + len(got["refused on purpose"]) + len(
        got["converted"]) == len(names)


def test_reads_text_model_map_from_a_tree_without_importing_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "conversion").mkdir()
    (tmp_path / "conversion" / "__init__.py").write_text(
        "import torch  # never imported by the script\n"
        "TEXT_MODEL_MAP: dict[str, str] = {\n    'LlamaForCausalLM': 'llama',\n    'BertForMaskedLM': 'bert',\n"
        "    'NewThingForCausalLM': 'newthing',\n}\n")
    monkeypatch.setenv("SLIMEDGE_LLAMA_SRC", str(tmp_path))
    assert coverage.main([]) == 0
    got = sections(capsys.readouterr().out)
    assert got["converted"] == ["LlamaForCausalLM"] and got["missing"] == ["NewThingForCausalLM"]
    assert got["refused on purpose"] == ["BertForMaskedLM"] and "Olmo3ForCausalLM" in got["converted, not in llama.cpp's list"]
