"""`build --overwrite` swaps bundles through slimedge.publish: a failed swap puts the old bundle back."""

from __future__ import annotations

import os

import pytest

from slimedge.bundle import build_bundle
from slimedge.bundle.manifest import read_manifest
from slimedge.errors import SlimedgeError


def test_overwrite_whose_second_rename_fails_restores_the_old_bundle(bundle_copy, tmp_path, monkeypatch):
    old = bundle_copy("cpu")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    src = tmp_path / "src.gguf"  # already quantized: packed as it is, no conversion
    src.write_bytes((old / "model.gguf").read_bytes())
    real, calls = os.replace, []

    def replace(a, b):
        if "cpu-copy" in (os.path.basename(a), os.path.basename(b)):  # renames of the bundle folder itself
            calls.append((os.path.basename(a), os.path.basename(b)))
            if len(calls) == 2:  # the first moved the old bundle aside; the new one fails to take its place
                raise OSError(5, "Input/output error")
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SlimedgeError, match="cpu-copy: cannot write: Input/output error"):
        build_bundle(src, "cpu", old, overwrite=True)
    monkeypatch.undo()
    assert calls[0][0] == "cpu-copy" and calls[1][1] == "cpu-copy" and calls[2] == (calls[0][1], "cpu-copy")
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # the old bundle, in place
    read_manifest(old)
    assert sorted(os.listdir(tmp_path)) == ["cpu-copy", "src.gguf"]  # no .old- backup, no temporary folder


def test_overwrite_replaces_the_bundle_and_leaves_nothing_else(bundle_copy, tmp_path):
    old = bundle_copy("cpu")
    src = tmp_path / "src.gguf"
    src.write_bytes((old / "model.gguf").read_bytes())
    build_bundle(src, "cpu", old, overwrite=True)
    assert read_manifest(old)["source"]["path"] == str(src.resolve())
    assert sorted(os.listdir(tmp_path)) == ["cpu-copy", "src.gguf"]
    umask = os.umask(0)
    os.umask(umask)
    assert old.stat().st_mode & 0o777 == 0o777 & ~umask
