"""Hub model ids (``org/name``) resolve offline to their snapshot in a local Hugging Face cache.

Each test builds a fake cache in tmp (``models--org--name/refs/main`` + ``snapshots/<commit>/``, files
symlinked to ``blobs/`` as huggingface_hub stores them) and points ``HF_HUB_CACHE`` at it, with
``HF_HUB_OFFLINE=1``: nothing is ever downloaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.factory import cached_hf_model

from slimedge.cli import main
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.source.hub import hub_repo_of, parse_hub_id, resolve_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(root: Path, repo: str, model: Path | None, commit: str = COMMIT, ref: str = "main") -> Path:
    """A Hub cache entry for ``repo`` holding ``model``'s files (as blobs + snapshot symlinks); its snapshot."""
    entry = root / ("models--" + repo.replace("/", "--"))
    snap = entry / "snapshots" / commit
    snap.mkdir(parents=True)
    (entry / "blobs").mkdir(exist_ok=True)
    for i, f in enumerate(sorted(model.iterdir()) if model else []):
        blob = entry / "blobs" / f"{i:040x}"
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # relative "org/name" paths must not exist by accident
    return cache


def test_hub_id_form():
    assert parse_hub_id("Qwen/Qwen3-1.7B") == ("Qwen/Qwen3-1.7B", None)
    assert parse_hub_id("meta-llama/Llama-3.2-1B@v1.0") == ("meta-llama/Llama-3.2-1B", "v1.0")
    for not_an_id in ("model", "a/b/c", "./x/y", "x--y/z", "/abs/path", ""):
        assert parse_hub_id(not_an_id) is None, not_an_id


def test_existing_path_wins_over_the_cache(hub, tmp_path):
    local = tmp_path / "Qwen" / "Qwen3-1.7B"
    local.mkdir(parents=True)
    fake_cache(hub, "Qwen/Qwen3-1.7B", None)
    assert resolve_source("Qwen/Qwen3-1.7B") == Path("Qwen/Qwen3-1.7B")


def test_cached_model_resolves_to_its_snapshot(hub):
    snap = fake_cache(hub, "TinyOrg/Tiny-Llama", cached_hf_model(arch="llama"))
    assert resolve_source("TinyOrg/Tiny-Llama") == snap
    assert hub_repo_of(snap) == "TinyOrg/Tiny-Llama" and hub_repo_of(snap / "config.json") == "TinyOrg/Tiny-Llama"
    assert hub_repo_of(hub.parent) is None


def test_revision_and_hf_home(tmp_path, monkeypatch):
    """HF_HOME/hub is the cache when HF_HUB_CACHE is unset; ``@rev`` follows refs/<rev>."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "home" / "hub"
    snap = fake_cache(cache, "o/m", cached_hf_model(arch="llama"), commit="f" * 40, ref="v2")
    assert resolve_source("o/m@v2") == snap
    with pytest.raises(SlimedgeError, match="revision main of o/m is not in the Hugging Face cache"):
        resolve_source("o/m@main")


def test_not_cached_says_how_to_download(hub):
    with pytest.raises(SlimedgeError) as e:
        resolve_source("Qwen/Qwen3-1.7B")
    msg = str(e.value)
    assert "\n" not in msg and str(hub) in msg and "hf download Qwen/Qwen3-1.7B" in msg
    assert "huggingface-cli download Qwen/Qwen3-1.7B" in msg and "never downloads" in msg


def test_partial_snapshot_without_config_says_how_to_download(hub, tmp_path):
    part = tmp_path / "part"
    part.mkdir()
    (part / "README.md").write_text("hi")
    fake_cache(hub, "o/partial", part)
    with pytest.raises(SlimedgeError, match="no config.json.*hf download o/partial"):
        resolve_source("o/partial")


def test_gguf_repo_gives_its_only_gguf(hub, tmp_path):
    d = tmp_path / "g"
    d.mkdir()
    (d / "model-q4.gguf").write_bytes(b"GGUF")
    snap = fake_cache(hub, "o/m-GGUF", d)
    assert resolve_source("o/m-GGUF") == snap / "model-q4.gguf"
    (d / "model-q8.gguf").write_bytes(b"GGUF")
    fake_cache(hub, "o/two-GGUF", d)
    with pytest.raises(SlimedgeError, match="2 GGUF files"):
        resolve_source("o/two-GGUF")


def test_convert_and_dry_run_take_a_hub_id(hub, tmp_path):
    fake_cache(hub, "TinyOrg/Tiny-Llama", cached_hf_model(arch="llama"))
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["convert", "TinyOrg/Tiny-Llama", "-o", str(out), "--type", "f16", "-q"])
    assert r.exit_code == 0, r.output
    meta = read_info(out).metadata
    assert meta["general.name"] == "Tiny-Llama"  # the repo's name, not the commit hash
    assert meta["general.source.repo_url"] == "https://huggingface.co/TinyOrg/Tiny-Llama"
    r = CliRunner().invoke(main, ["convert", "TinyOrg/Tiny-Llama", "--dry-run", "--type", "Q8_0"])
    assert r.exit_code == 0 and "token_embd.weight" in r.output


@pytest.mark.parametrize("argv", [
    ["convert", "Nobody/Missing-1B", "-o", "x.gguf"],
    ["build", "Nobody/Missing-1B", "--target", "cpu", "-o", "bundle"],
    ["distill", "--teacher", "Nobody/Missing-1B", "--data", "d.txt", "-o", "student"],
])
def test_commands_name_the_download_for_a_missing_hub_id(hub, tmp_path, argv):
    (tmp_path / "d.txt").write_text("some text " * 50)
    r = CliRunner().invoke(main, argv)
    assert r.exit_code != 0 and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "hf download Nobody/Missing-1B" in lines[0], r.output
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "bundle").exists()


def test_bench_ref_takes_a_hub_id(hub, tmp_path):
    from slimedge.bench.runner import run_bench

    from slimedge.convert import convert

    (tmp_path / "t.txt").write_text("x")
    convert(cached_hf_model(arch="llama"), tmp_path / "m.gguf")
    with pytest.raises(SlimedgeError, match="hf download Nobody/Ref-1B"):
        run_bench(tmp_path / "m.gguf", ref="Nobody/Ref-1B", text=tmp_path / "t.txt")


def test_build_takes_a_hub_id(hub, tmp_path):
    fake_cache(hub, "TinyOrg/Tiny-Llama", cached_hf_model(arch="llama"))
    r = CliRunner().invoke(main, ["build", "TinyOrg/Tiny-Llama", "--target", "cpu", "-o", str(tmp_path / "b"),
                                  "--type", "Q8_0", "-q"])
    assert r.exit_code == 0, r.output
    ggufs = list((tmp_path / "b").rglob("*.gguf"))
    assert len(ggufs) == 1 and read_info(ggufs[0]).metadata["general.name"] == "Tiny-Llama"
