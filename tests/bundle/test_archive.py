"""Bundle archives: round trip, and unsafe entries refused before anything is written."""

from __future__ import annotations

import io
import tarfile

import pytest

from slimedge.bundle.archive import unpack_archive, write_archive
from slimedge.errors import SlimedgeError


def _bundle(tmp_path):
    b = tmp_path / "mybundle"
    (b / "sub").mkdir(parents=True)
    (b / "model.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 10)
    (b / "run").write_text("#!/usr/bin/env python3\nprint('hi')\n")
    (b / "run").chmod(0o755)
    (b / "sub" / "note.txt").write_text("x")
    return b


def test_round_trip(tmp_path):
    b = _bundle(tmp_path)
    arc = write_archive(b)
    assert arc == tmp_path / "mybundle.tar.gz" and arc.is_file()
    with tarfile.open(arc) as t:
        names = sorted(m.name for m in t.getmembers())
        assert names == ["mybundle/model.gguf", "mybundle/run", "mybundle/sub/note.txt"]
        assert all(m.uid == 0 and m.uname == "" for m in t.getmembers())
    with pytest.raises(SlimedgeError, match="exists; pass --overwrite"):
        write_archive(b)
    out = unpack_archive(arc, tmp_path / "unpacked")
    assert out == tmp_path / "unpacked" / "mybundle"
    for rel in ("model.gguf", "run", "sub/note.txt"):
        assert (out / rel).read_bytes() == (b / rel).read_bytes()
    assert (out / "run").stat().st_mode & 0o100


def _evil(tmp_path, **entry):
    p = tmp_path / "evil.tar.gz"
    with tarfile.open(p, "w:gz") as t:
        ok = tarfile.TarInfo("bundle/model.gguf")
        ok.size = 4
        t.addfile(ok, io.BytesIO(b"GGUF"))
        ti = tarfile.TarInfo(entry["name"])
        ti.type = entry.get("type", tarfile.REGTYPE)
        ti.linkname = entry.get("linkname", "")
        data = b"pwned"
        ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
        t.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    return p


@pytest.mark.parametrize("entry,why", [
    ({"name": "bundle/../../escape.txt"}, "escapes the folder with '..'"),
    ({"name": "../escape.txt"}, "escapes the folder with '..'"),
    ({"name": "/tmp/slimedge-abs-escape.txt"}, "absolute path"),
    ({"name": "bundle/link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "is a link"),
    ({"name": "bundle/rel-link", "type": tarfile.SYMTYPE, "linkname": "../../x"}, "is a link"),
    ({"name": "bundle/hard", "type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, "is a link"),
    ({"name": "bundle/dev", "type": tarfile.CHRTYPE}, "device or special file"),
])
def test_unsafe_entries_refused(tmp_path, entry, why):
    arc = _evil(tmp_path, **entry)
    dest = tmp_path / "out"
    with pytest.raises(SlimedgeError, match=why) as e:
        unpack_archive(arc, dest)
    assert entry["name"] in str(e.value)
    # nothing was written: no destination, no temp folder, no escaped file
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]
    assert not (tmp_path.parent / "escape.txt").exists()


def test_not_an_archive(tmp_path):
    p = tmp_path / "x.tar.gz"
    p.write_bytes(b"not a tar")
    with pytest.raises(SlimedgeError, match="not a readable .tar.gz"):
        unpack_archive(p, tmp_path / "out")
