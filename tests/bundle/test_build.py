"""`slimedge build`: bundles for every shipped target, their manifests, refusals, --type fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from slimedge.bundle import build_bundle
from slimedge.bundle.build import planned_shape, quant_spec
from slimedge.bundle.manifest import sha256_file
from slimedge.cli import main
from slimedge.convert import convert
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.memory import estimate
from slimedge.quant.mixes import QuantSpec
from slimedge.targets import load_target, shipped_names

REPO_TARGETS = Path(__file__).resolve().parents[2] / "targets"
EXPECTED_TYPES = {"cpu": {"Q4_K", "Q6_K"}, "laptop-gpu": {"Q4_K", "Q6_K"}, "arm64": {"Q4_K", "Q6_K"},
                  "arm64-small": {"Q4_0", "Q6_K"}}


@pytest.mark.parametrize("name", shipped_names())
def test_bundle_per_target(bundles, hf_model, name):
    b = bundles[name]
    t = load_target(name)
    assert sorted(p.name for p in b.iterdir()) == ["Modelfile", "README.md", "machine.py", "manifest.json",
                                                       "model.gguf", "run", "serve_guard.py", "server_runtime.py"]
    m = json.loads((b / "manifest.json").read_text())
    assert m["format"] == "slimedge-bundle" and m["format_version"] == 1 and m["slimedge_version"]
    assert m["target"] == t.to_dict() and m["runtime"] == t.to_dict()["runtime"]  # trained context 4096 >= n_ctx
    assert m["quantization"]["type"] == t.quantization.type and m["quantization"]["chosen_by"] == "target profile"
    # the tensor types in the file are what the manifest says, and the mix's 2-D types
    info = read_info(b / "model.gguf")
    assert sum(v["bytes"] for v in m["quantization"]["tensor_types"].values()) == info.total_tensor_bytes
    assert {k: v["count"] for k, v in m["quantization"]["tensor_types"].items()} == info.type_counts
    assert {ty for ty in info.type_counts if ty != "F32"} == EXPECTED_TYPES[name]
    assert m["quantization"]["bpw"] == pytest.approx(info.bpw)
    # every file listed with its true size and sha256; the manifest does not list itself
    assert sorted(f["path"] for f in m["files"]) == ["Modelfile", "README.md", "machine.py", "model.gguf", "run",
                                                     "serve_guard.py", "server_runtime.py"]
    for f in m["files"]:
        assert (b / f["path"]).stat().st_size == f["size"] and sha256_file(b / f["path"]) == f["sha256"]
    src = {f["path"]: f for f in m["source"]["files"]}
    assert src["model.safetensors"]["sha256"] == sha256_file(hf_model / "model.safetensors")
    est = m["memory_estimate"]
    assert est["total_ram"] == (est["weights_ram"] + est["repack_ram"] + est["kv_ram"] + est["compute_ram"]
                                + est["host_ram"])
    # Q4_K (x86 and ARM) and Q4_0 are repacked at load time, on the CPU only
    assert (est["repack_ram"] > 0) == (t.runtime.n_gpu_layers == 0)
    if t.runtime.n_gpu_layers == -1:
        assert est["weights_vram"] > 0 and est["kv_vram"] > 0 and est["kv_ram"] == 0
    else:
        assert est["total_vram"] == 0
    # launcher, Modelfile and card reflect the profile
    assert (b / "run").stat().st_mode & 0o111
    mf = (b / "Modelfile").read_text()
    assert f"PARAMETER num_ctx {t.runtime.n_ctx}" in mf and 'TEMPLATE """' in mf and m["chat_format"] == "phi3"
    card = (b / "README.md").read_text()
    assert f"-c {t.runtime.n_ctx}" in card and "ollama create" in card and "python run" in card


def test_context_capped_at_training_context(hf_model, tmp_path):
    from tests.factory import copy_model

    short = copy_model(hf_model, tmp_path / "short")
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps(dict(cfg, max_position_embeddings=256)))
    b = build_bundle(short, "cpu", tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    assert m["runtime"]["n_ctx"] == 256 and m["target"]["runtime"]["n_ctx"] == 4096
    assert m["memory_estimate"]["n_ctx"] == 256 and "-c 256" in (b / "README.md").read_text()


def test_archive_written(bundles):
    arc = bundles["cpu"].parent / "cpu.tar.gz"
    assert arc.is_file() and arc.stat().st_size > 0


def test_unknown_target(hf_model, tmp_path):
    with pytest.raises(SlimedgeError, match="unknown target 'toaster'"):
        build_bundle(hf_model, "toaster", tmp_path / "b")
    r = CliRunner().invoke(main, ["build", str(hf_model), "--target", "toaster", "-o", str(tmp_path / "b")])
    assert r.exit_code == 1 and "unknown target 'toaster'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "b").exists()


def test_bad_profile_field_named(hf_model, tmp_path):
    p = tmp_path / "board.toml"
    p.write_text((REPO_TARGETS / "cpu.toml").read_text().replace("n_threads = 0", "n_threads = -2"))
    r = CliRunner().invoke(main, ["build", str(hf_model), "--target", str(p), "-o", str(tmp_path / "b")])
    assert r.exit_code == 1 and "runtime.n_threads must be >= 0" in r.output and str(p) in r.output
    assert not (tmp_path / "b").exists()


def _profile(tmp_path, budget_gb: float, name="tight") -> Path:
    p = tmp_path / f"{name}.toml"
    text = (REPO_TARGETS / "cpu.toml").read_text().replace('name = "cpu"', f'name = "{name}"')
    p.write_text(text.replace("memory_budget_gb = 8", f"memory_budget_gb = {budget_gb!r}"))
    return p


def test_model_that_does_not_fit_is_refused_with_numbers(hf_model, tmp_path):
    p = _profile(tmp_path, 0.05)
    out = tmp_path / "b"
    with pytest.raises(SlimedgeError) as e:
        build_bundle(hf_model, p, out)
    msg = str(e.value)
    assert "does not fit target 'tight'" in msg and "as Q4_K_M" in msg
    assert "weights" in msg and "KV cache" in msg and "budget (hardware.memory_budget_gb) is 0.05 GiB" in msg
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tight.toml"]  # nothing half-written


def test_type_fit_picks_best_that_fits(hf_model, tmp_path, caplog):
    t = load_target("cpu")
    ests = {c: estimate(planned_shape(hf_model, quant_spec(t, c)), t.runtime, hardware=t.hardware).required_ram
            for c in ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")}
    assert ests["F16"] > ests["Q8_0"] > ests["Q6_K"] > ests["Q5_K_M"] > ests["Q4_K_M"]
    budget = (ests["Q5_K_M"] + ests["Q4_K_M"]) / 2 / 2**30  # Q4_K_M fits, Q5_K_M does not
    b = build_bundle(hf_model, _profile(tmp_path, budget), tmp_path / "fit", type="fit")
    m = json.loads((b / "manifest.json").read_text())
    assert m["quantization"]["type"] == "Q4_K_M" and m["quantization"]["chosen_by"] == "fit"
    assert m["memory_estimate"]["required_ram"] <= budget * 2**30
    with pytest.raises(SlimedgeError, match=r"no --type fit candidate fits target 'tiny'.*Q2_K needs"):
        build_bundle(hf_model, _profile(tmp_path, 0.01, "tiny"), tmp_path / "none", type="fit")
    # the old spelling (build's --type auto without --calib) still means fit for one release, with a warning
    with caplog.at_level("WARNING", logger="slimedge.bundle.build"):
        old = build_bundle(hf_model, _profile(tmp_path, budget), tmp_path / "old", type="auto")
    assert json.loads((old / "manifest.json").read_text())["quantization"]["chosen_by"] == "fit"
    assert any("--type auto without --calib is deprecated: it is spelled --type fit" in r.getMessage()
               for r in caplog.records)


def test_auto_and_calib_go_together(hf_model, tmp_path, text_file):
    """--type auto is the quality-driven mix: measured on an HF folder's model, and --calib only with it."""
    with pytest.raises(SlimedgeError, match="--calib is the text the quality-driven mix is measured on: it needs "
                                            "--type auto"):
        build_bundle(hf_model, "cpu", tmp_path / "a", type="Q4_K_M", calib=text_file)
    f16 = tmp_path / "f16.gguf"
    convert(hf_model, f16, QuantSpec("F16"))
    with pytest.raises(SlimedgeError, match="--type auto measures sensitivities with the Hugging Face model"):
        build_bundle(f16, "cpu", tmp_path / "b", type="auto", calib=text_file)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_type_auto_with_calib_is_the_quality_mix_filling_the_budget(hf_model, tmp_path, text_file):
    """build --type auto --calib: convert's quality-driven mix, its types drawn from the profile's candidates
    (two here, to keep the measurement short), as large as still fits the target (a budget between the two
    candidates' estimates), refined with exact prices at that budget."""
    t = load_target("cpu")
    ests = {c: estimate(planned_shape(hf_model, quant_spec(t, c)), t.runtime, hardware=t.hardware).required_ram
            for c in ("Q6_K", "Q4_K_M")}
    budget = (ests["Q6_K"] + ests["Q4_K_M"]) / 2 / 2**30
    p = _profile(tmp_path, budget)
    text = p.read_text()
    start = text.index("\ncandidates = [")
    p.write_text(text[:start] + '\ncandidates = ["Q6_K", "Q4_K_M"]' + text[text.index("\n", start + 1):])
    b = build_bundle(hf_model, p, tmp_path / "q", type="auto", calib=text_file)
    m = json.loads((b / "manifest.json").read_text())
    assert m["quantization"]["chosen_by"] == "auto (quality-driven mix, fills the budget)"
    assert m["quantization"]["type"].startswith("auto mix ") and m["quantization"]["type"].endswith(" bpw")
    assert ests["Q4_K_M"] <= m["memory_estimate"]["required_ram"] <= budget * 2**30
    info = read_info(b / "model.gguf")
    assert len({t.type for t in info.tensors if len(t.shape) == 2}) >= 2  # a mix, not one type
    assert info.metadata["slimedge.mix.target"] == "fills tight"
    assert info.metadata["slimedge.mix.refined"] > 0  # the chosen types priced exactly (slimedge.calib.refine)


def test_explicit_type_and_overwrite(hf_model, tmp_path):
    out = tmp_path / "q8"
    build_bundle(hf_model, "cpu", out, type="q8_0")
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantization"]["type"] == "Q8_0" and m["quantization"]["chosen_by"] == "--type"
    with pytest.raises(SlimedgeError, match="exists; pass --overwrite"):
        build_bundle(hf_model, "cpu", out)
    build_bundle(hf_model, "cpu", out, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["quantization"]["type"] == "Q4_K_M"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8"]  # no temp or backup folders left


def test_gguf_sources(bundles, tmp_path):
    q = bundles["cpu"] / "model.gguf"
    b = build_bundle(q, "arm64", tmp_path / "asis")  # already quantized: packed as it is
    m = json.loads((b / "manifest.json").read_text())
    assert m["quantization"]["chosen_by"].startswith("source file") and m["source"]["kind"] == "gguf"
    assert sha256_file(b / "model.gguf") == sha256_file(q)
    with pytest.raises(SlimedgeError, match="already quantized"):
        build_bundle(q, "arm64", tmp_path / "x", type="Q8_0")


def test_cli_build(hf_model, tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["build", str(hf_model), "--target", "arm64-small", "-o", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "Q4_0 (target profile)" in r.output and "estimated RAM" in r.output and (out / "model.gguf").is_file()
