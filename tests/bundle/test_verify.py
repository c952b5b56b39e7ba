"""`slimedge verify`: checksums and a llama.cpp load; tampered/missing files named; the launcher runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from slimedge.bundle import verify_bundle
from slimedge.cli import main
from slimedge.errors import SlimedgeError
from slimedge.targets import shipped_names


@pytest.mark.parametrize("name", shipped_names())
def test_every_bundle_verifies_and_loads(bundles, name):
    rep = verify_bundle(bundles[name])
    assert rep.ok and rep.loaded and rep.n_vocab > 1000
    assert sorted(rep.files_checked) == ["Modelfile", "README.md", "machine.py", "model.gguf", "run",
                                             "serve_guard.py", "server_runtime.py"] and not rep.extra_files


def test_cli_verify_folder_and_archive(bundles):
    r = CliRunner().invoke(main, ["verify", str(bundles["cpu"])])
    assert r.exit_code == 0, r.output
    assert "OK — 7 files match their sha256; llama.cpp loads the model" in r.output
    r = CliRunner().invoke(main, ["verify", str(bundles["cpu"].parent / "cpu.tar.gz")])
    assert r.exit_code == 0 and "OK" in r.output, r.output


@pytest.mark.parametrize("victim", ["model.gguf", "README.md", "run"])
def test_tampered_file_is_named(bundle_copy, victim):
    b = bundle_copy()
    p = b / victim
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
    p.write_bytes(bytes(data))
    with pytest.raises(SlimedgeError, match=rf"{victim}: sha256 does not match the manifest"):
        verify_bundle(b)
    r = CliRunner().invoke(main, ["verify", str(b)])
    assert r.exit_code == 1 and victim in r.output and "Traceback" not in r.output


def test_missing_and_resized_and_extra_files(bundle_copy):
    b = bundle_copy()
    (b / "Modelfile").unlink()
    with pytest.raises(SlimedgeError, match=r"Modelfile: missing"):
        verify_bundle(b)
    b = bundle_copy("arm64")
    with open(b / "model.gguf", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SlimedgeError, match=r"model.gguf: size \d+ bytes, manifest says \d+"):
        verify_bundle(b, load=False)
    b = bundle_copy("arm64-small")
    (b / "notes.txt").write_text("mine")
    rep = verify_bundle(b, load=False)
    assert rep.ok and rep.extra_files == ["notes.txt"]


def test_not_a_bundle(tmp_path):
    with pytest.raises(SlimedgeError, match="no manifest.json; not a slimedge bundle"):
        verify_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(SlimedgeError, match="not valid JSON"):
        verify_bundle(tmp_path)


def test_corrupt_model_with_matching_manifest_fails_load(bundle_copy):
    """A manifest that agrees with a broken GGUF: checksums pass, the load check catches it."""
    from slimedge.bundle.manifest import list_files, write_json_atomic

    b = bundle_copy()
    p = b / "model.gguf"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # truncated tensor data
    m = json.loads((b / "manifest.json").read_text())
    m["files"] = list_files(b)
    write_json_atomic(b / "manifest.json", m)
    with pytest.raises(SlimedgeError, match="model.gguf"):
        verify_bundle(b)


def test_launcher_one_shot(bundles):
    b = bundles["cpu"]
    r = subprocess.run([sys.executable, str(b / "run"), "Once upon a time", "--max-tokens", "4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    n = re.search(r"\[(\d+) tokens\]", r.stderr)
    assert n and 1 <= int(n.group(1)) <= 4, r.stderr[-500:]
    r = subprocess.run([sys.executable, str(b / "run")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "give a prompt, --chat or --bench" in r.stderr
    r = subprocess.run([sys.executable, str(b / "run"), "--bench", "--repeats", "1", "--threads", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["n_prompt"] == 512 and res["n_gen"] == 128 and res["avg_ts"] > 0 and res["pp_avg_ts"] > 0
