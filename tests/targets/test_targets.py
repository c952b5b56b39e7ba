"""Target profiles: every shipped one loads; bad fields are named; the CLI lists them."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.errors import SlimedgeError
from slimedge.targets import list_targets, load_target, shipped_names

SHIPPED = ["arm64", "arm64-small", "cpu", "laptop-gpu"]
REPO_TARGETS = Path(__file__).resolve().parents[2] / "targets"


def test_shipped_profiles_load_and_match_the_repo_folder():
    assert shipped_names() == SHIPPED
    for t in list_targets():
        assert t.hardware.memory_budget_bytes > 0
        assert t.runtime.n_ctx >= 512 and t.bench.n_prompt == 512 and t.bench.n_gen == 128
        assert t.quantization.type in t.quantization.candidates
        # the repository's targets/ is the same data as the package's copy
        packaged = resources.files("slimedge").joinpath("data", "targets", f"{t.name}.toml").read_bytes()
        assert (REPO_TARGETS / f"{t.name}.toml").read_bytes() == packaged
        assert tomllib.loads(packaged.decode())["name"] == t.name


def test_profile_specifics():
    gpu = load_target("laptop-gpu")
    assert gpu.hardware.accelerator == "gpu" and gpu.hardware.vram_gb == 6 and gpu.runtime.n_gpu_layers == -1
    assert load_target("cpu").runtime.n_gpu_layers == 0
    arm = load_target("arm64")
    assert arm.hardware.arch == "arm64" and arm.hardware.memory_gb == 8
    small = load_target("arm64-small")
    assert small.hardware.memory_gb == 4 and small.runtime.cache_type_v == "q8_0" and small.runtime.flash_attn
    # ARM profiles only offer types llama.cpp repacks at load time for NEON (no Q2_K/Q3_K)
    for t in (arm, small):
        assert not any(x.startswith(("Q2", "Q3")) for x in t.quantization.candidates)


def test_the_old_candidates_key_is_read_with_a_warning(tmp_path, caplog):
    """quantization.auto was the candidates' name before `build --type fit`: read for one more release."""
    text = (REPO_TARGETS / "cpu.toml").read_text()
    p = tmp_path / "old.toml"
    p.write_text(text.replace("\ncandidates = [", "\nauto = ["))
    with caplog.at_level("WARNING", logger="slimedge.targets"):
        t = load_target(p)
    assert t.quantization.candidates == load_target("cpu").quantization.candidates
    assert [r.getMessage() for r in caplog.records] == [
        f"{p}: quantization.auto is deprecated, rename it quantization.candidates"]
    both = tmp_path / "both.toml"
    both.write_text(text.replace("\ncandidates = [", "\nauto = []\ncandidates = ["))
    with pytest.raises(SlimedgeError, match=r"quantization\.auto is the old name of quantization\.candidates"):
        load_target(both)


def test_load_by_path(tmp_path):
    p = tmp_path / "board.toml"
    p.write_text((REPO_TARGETS / "cpu.toml").read_text().replace('name = "cpu"', 'name = "board"'))
    t = load_target(p)
    assert t.name == "board" and t.path == str(p)


def test_unknown_target():
    with pytest.raises(SlimedgeError, match=r"unknown target 'pi9'.*arm64, arm64-small, cpu, laptop-gpu"):
        load_target("pi9")
    with pytest.raises(SlimedgeError, match="not found"):
        load_target("missing/board.toml")


BASE = (REPO_TARGETS / "cpu.toml").read_text()


@pytest.mark.parametrize("old,new,field", [
    ("n_ctx = 4096", 'n_ctx = "big"', "runtime.n_ctx must be an integer"),
    ("n_ctx = 4096", "n_ctx = 0", "runtime.n_ctx must be >= 1"),
    ('arch = "x86_64"', 'arch = "sparc"', "hardware.arch must be one of"),
    ('cache_type_k = "f16"', 'cache_type_k = "q9"', "runtime.cache_type_k must be one of"),
    ('cache_type_v = "f16"', 'cache_type_v = "q8_0"', "runtime.cache_type_v is quantized"),
    ('type = "Q4_K_M"', 'type = "Q4_K_XL"', "quantization.type must be one of"),
    ("use_mmap = true", "use_mmap = 1", "runtime.use_mmap must be true or false"),
    ("n_gpu_layers = 0", "n_gpu_layers = 10", "runtime.n_gpu_layers must be 0"),
    ("memory_budget_gb = 8", "memory_budget_gb = 32", "hardware.memory_budget_gb must not exceed"),
    ("repeats = 3", "repeats = 3\nwarmup = 1", "bench.warmup is not a known field"),
    ("overrides = []", 'overrides = [{pattern = "(", type = "Q8_0"}]', r"quantization.overrides\[0\].pattern"),
    ("overrides = []", 'overrides = [{pattern = "attn_v", type = "Q9"}]', r"quantization.overrides\[0\].type"),
])
def test_bad_field_is_named(tmp_path, old, new, field):
    assert old in BASE
    p = tmp_path / "bad.toml"
    p.write_text(BASE.replace(old, new, 1))
    with pytest.raises(SlimedgeError, match=field) as e:
        load_target(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_table_and_bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n[runtime]\nn_ctx = 512\n')
    with pytest.raises(SlimedgeError, match="hardware is missing"):
        load_target(p)
    p.write_text("name = \n")
    with pytest.raises(SlimedgeError, match="not valid TOML"):
        load_target(p)


def test_cli_lists_and_shows(tmp_path):
    r = CliRunner().invoke(main, ["targets"])
    assert r.exit_code == 0, r.output
    for name in SHIPPED:
        assert name in r.output
    r = CliRunner().invoke(main, ["targets", "arm64-small", "--json"])
    assert r.exit_code == 0 and '"cache_type_k": "q8_0"' in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace("n_batch = 512", "n_batch = -4"))
    r = CliRunner().invoke(main, ["targets", str(bad)])
    assert r.exit_code == 1 and "runtime.n_batch must be >= 1" in r.output and "Traceback" not in r.output
