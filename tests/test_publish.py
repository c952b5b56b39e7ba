"""slimedge.publish: files and folders appear whole, with umask permissions; failures leave the target as it was;
an overwritten folder comes back when the swap fails; leftovers of dead processes are cleaned."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from slimedge import publish
from slimedge.errors import SlimedgeError
from slimedge.publish import Publication, clean_stale, publish_dir, publish_file, write_atomic


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def umask027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_file_appears_only_when_complete_with_umask_permissions(tmp_path, umask027):
    target = tmp_path / "out.bin"
    with publish_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.tmp-") and tmp.name.endswith(".part")
        assert f"-{os.getpid()}-" in tmp.name  # a later run can tell whether its process is alive
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert target.stat().st_mode & 0o777 == 0o640  # 0666 less the umask, not mkstemp's 0600
    assert os.listdir(tmp_path) == ["out.bin"]


def test_folder_appears_only_when_complete_with_umask_permissions(tmp_path, umask027):
    target = tmp_path / "bundle"
    with publish_dir(target) as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "a.txt").write_text("a")
        (tmp / "private").write_text("p")
        (tmp / "private").chmod(0o600)  # what a library writing through mkstemp leaves
        (tmp / "run").write_text("#!/bin/sh\n")
        (tmp / "run").chmod(0o700)
        assert not target.exists()
    assert (target / "sub" / "a.txt").read_text() == "a"
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(target) == 0o750  # 0777 less the umask, not mkdtemp's 0700
    assert (mode(target / "sub"), mode(target / "sub" / "a.txt")) == (0o750, 0o640)
    assert (mode(target / "private"), mode(target / "run")) == (0o640, 0o750)  # executables stay executable
    assert os.listdir(tmp_path) == ["bundle"]


@pytest.mark.parametrize("folder", [False, True])
def test_failure_inside_the_block_leaves_the_target_untouched(tmp_path, folder):
    target = tmp_path / "t"
    if folder:
        target.mkdir()
        (target / "old.txt").write_text("old")
    else:
        target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with Publication(target, folder=folder) as pub:
            (pub.path / "new.txt").write_text("new") if folder else pub.path.write_text("new")
            raise RuntimeError("boom")
    assert ((target / "old.txt") if folder else target).read_text() == "old"
    assert os.listdir(tmp_path) == ["t"] and (not folder or os.listdir(target) == ["old.txt"])


def test_file_overwrite_replaces_and_no_overwrite_refuses(tmp_path):
    target = tmp_path / "t.json"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    with pytest.raises(SlimedgeError, match="t.json: appeared while it was being written; pass --overwrite"):
        with publish_file(target, overwrite=False) as tmp:
            tmp.write_text("three")
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["t.json"]


def test_folder_overwrite_swaps_and_drops_the_old(tmp_path):
    target = tmp_path / "b"
    with publish_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with publish_dir(target) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2" and os.listdir(tmp_path) == ["b"]


def test_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "b"
    target.mkdir()
    (target / "v").write_text("old")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((os.path.basename(src), os.path.basename(dst)))
        if len(calls) == 2:  # the new folder into place
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SlimedgeError, match="b: cannot write: No space left on device"):
        with publish_dir(target) as tmp:
            (tmp / "v").write_text("new")
    assert calls[0][0] == "b" and ".b.old-" in calls[0][1] and calls[2] == (calls[0][1], "b")  # swapped back
    assert (target / "v").read_text() == "old"
    assert os.listdir(tmp_path) == ["b"]  # neither the new temporary nor the .old- backup is left


def test_cannot_create_is_a_one_line_error(tmp_path):
    with pytest.raises(SlimedgeError, match="cannot create a file in"):
        Publication(tmp_path / "missing" / "x")


def test_stale_leftovers_of_dead_processes_are_removed_with_one_warning(tmp_path, caplog):
    dead, host = _dead_pid(), publish._HOST
    stale_file = tmp_path / f".model.gguf.tmp-{host}-{dead}-0123abcd.part"
    stale_file.write_bytes(b"half")
    stale_dir = tmp_path / f".bundle.tmp-{host}-{dead}-89abcdef.part"
    (stale_dir / "sub").mkdir(parents=True)
    backup_missing = tmp_path / f".student.old-{host}-{dead}-00000000"  # died mid-swap: the only copy
    backup_missing.mkdir()
    (backup_missing / "w").write_text("keep")
    (tmp_path / "other").mkdir()
    backup_present = tmp_path / f".other.old-{host}-{dead}-11111111"
    backup_present.mkdir()
    alive = tmp_path / f".x.tmp-{host}-{os.getpid()}-22222222.part"  # our own: alive
    alive.write_bytes(b"")
    foreign = tmp_path / f".y.tmp-otherhost-{dead}-33333333.part"  # another machine's: cannot tell
    foreign.write_bytes(b"")
    unrelated = tmp_path / ".hidden.part"
    unrelated.write_bytes(b"")

    with caplog.at_level(logging.WARNING, logger="slimedge.publish"):
        write_atomic(tmp_path / "new.txt", "x")  # creating a publication cleans the folder first
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, foreign.name, unrelated.name, "new.txt",
                                                   "other", "student"])
    assert (tmp_path / "student" / "w").read_text() == "keep"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "removed 4 leftover(s) of interrupted runs" in warnings[0]
    for p in (stale_file, stale_dir, backup_present):
        assert str(p) in warnings[0]
    assert "put back as student" in warnings[0]
    assert clean_stale(tmp_path) == []
