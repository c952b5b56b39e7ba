"""``slimedge sweep`` on the issue-18 families: a hybrid (Qwen3.5: gated delta-net + attention), an MoE (Qwen2-MoE:
stacked experts and a shared expert) and Gemma 4 (per-layer embeddings, KV-shared layers), each swept through
llama.cpp with two llama.cpp mixes and one auto mix of Q4_K_M's size. Every row must be a real measurement: the
file's tensor types are the mix's (the auto row: the types its sensitivities chose, more than one), sizes follow
the types (auto within Q4_K_M's budget, Q4_K_M below Q8_0), perplexity and KL finite and positive."""

import json

import pytest
from click.testing import CliRunner

from slimedge.cli import main
from tests.factory import cached_hf_model

TYPES = "Q8_0,Q4_K_M,auto:Q4_K_M"


def _types(path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen35", "qwen2moe", "gemma4"])
def test_sweep_new_family(arch, text_file, tmp_path):
    from slimedge.calib.sensitivity import auto_allocation
    from slimedge.convert import plan
    from slimedge.quant.mixes import QuantSpec

    src = cached_hf_model(arch=arch, kquant=True) if arch != "gemma4" else cached_hf_model(arch=arch)
    calib = tmp_path / "calib.txt"  # short: one calibration sequence (the sensitivities' cost is per token)
    calib.write_text(" ".join(f"The {w} number {i} walks past {i * 7 % 13} red houses." for i, w in
                              enumerate(["first", "second", "third", "fourth", "fifth"] * 8)))
    held = tmp_path / "held.txt"  # ~1500 tokens: 20-odd chunks of 64, each scored on its second half
    held.write_text(text_file.read_text()[:6000])
    out = tmp_path / "sweep"
    args = ["sweep", str(src), "--types", TYPES, "--text", str(held), "--calib", str(calib), "-o", str(out),
            "-c", "64", "-r", "1", "-p", "16", "-n", "8", "-t", "2", "--quiet"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    recs = {x["sweep_label"]: x for x in json.loads((out / "sweep.json").read_text())}
    assert list(recs) == TYPES.split(",")
    files = {label: out / f"{src.name}-{label.lower().replace(':', '-')}.gguf" for label in recs}
    for label, x in recs.items():
        assert x["perplexity"] > 1 and x["kld_mean"] > 0 and 0 < x["top1_agreement"] <= 1, (label, x)
        assert x["avg_ts"] > 0 and x["model_size"] > 0, (label, x)
        assert x["model_filename"] == str(files[label]), (label, x["model_filename"])  # measured on its own file
        assert f"| {label} |" in r.output
    for mix in ("Q8_0", "Q4_K_M"):  # the file holds what llama-quantize's rules give this family
        want = {t.name: t.qtype.name for t in plan(src, QuantSpec(mix)).tensors}
        assert _types(files[mix]) == want, mix
    # the auto row: the allocation of the sensitivities the sweep saved (recomputed from them, nothing measured)
    alloc = auto_allocation(src, calib.read_text(), target_size="Q4_K_M", cache=out / "sensitivity.json")
    auto = _types(files["auto:Q4_K_M"])
    assert auto == {t.name: t.qtype.name for t in plan(src, alloc.spec()).tensors}
    assert len(set(alloc.types.values())) > 1, alloc.types  # a mix of types
    assert recs["auto:Q4_K_M"]["model_size"] == alloc.total_bytes <= alloc.budget
    size = {label: x["model_size"] for label, x in recs.items()}
    assert size["auto:Q4_K_M"] <= size["Q4_K_M"] < size["Q8_0"], size
