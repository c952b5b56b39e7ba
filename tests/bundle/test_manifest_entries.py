"""A damaged or hostile manifest cannot make ``verify`` read outside its bundle or crash on a bad entry."""

from __future__ import annotations

import json

import pytest

from slimedge.bundle.manifest import FORMAT, FORMAT_VERSION, list_files
from slimedge.bundle.verify import verify_bundle
from slimedge.errors import SlimedgeError


@pytest.fixture
def bundle(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    (b / "model.gguf").write_bytes(b"GGUF" + bytes(20))
    (b / "run").write_text("#!/usr/bin/env python3\n")
    return b


def write(b, **changes):
    m = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": "model.gguf", "files": list_files(b)}
    m.update(changes)
    (b / "manifest.json").write_text(json.dumps(m))


def test_intact_manifest_checks_its_files(bundle):
    write(bundle)
    assert sorted(verify_bundle(bundle, load=False).files_checked) == ["model.gguf", "run"]


@pytest.mark.parametrize("changes,what", [
    ({"files": [{"path": "/etc/hostname", "size": 1, "sha256": "0" * 64}]}, "files[0]"),
    ({"files": [{"path": "../outside", "size": 1, "sha256": "0" * 64}]}, "files[0]"),
    ({"files": [{"path": "x" * 300, "size": 1, "sha256": "0" * 64}]}, "files[0]"),
    ({"files": [{"path": "run", "size": "big", "sha256": "0" * 64}]}, "files[0]"),
    ({"files": [{"path": "run"}]}, "files[0]"), ({"files": ["run"]}, "files[0]"), ({"files": {}}, "'files'"),
    ({"model": "../../model.gguf"}, "model"), ({"model": 5}, "model"), ({"format_version": [1]}, "format_version"),
    ({"models": [{"file": "/etc/passwd"}]}, "'models'"),
])
def test_bad_entries_are_one_line_errors(bundle, changes, what):
    write(bundle, **changes)
    with pytest.raises(SlimedgeError) as exc:
        verify_bundle(bundle, load=False)
    msg = str(exc.value)
    assert str(bundle / "manifest.json") in msg and what in msg and "\n" not in msg, msg
