"""The command line's error handling: a user error is one line, a bug is its traceback plus a line asking
to report it, SIGTERM is handled like Ctrl-C and exits 143."""

from __future__ import annotations

import os
import signal
import time

import pytest
from click.testing import CliRunner

import slimedge.convert
from slimedge import __version__
from slimedge.cli import SIGTERM_EXIT, main
from slimedge.errors import SlimedgeError


def _convert(monkeypatch, tmp_path, behaviour):
    monkeypatch.setattr(slimedge.convert, "convert", lambda *a, **k: behaviour())
    return CliRunner().invoke(main, ["convert", str(tmp_path), "-o", str(tmp_path / "o.gguf"), "--quiet"])


def test_user_error_is_one_line(monkeypatch, tmp_path):
    def fail():
        raise SlimedgeError(f"{tmp_path}/config.json: missing; give a model folder")

    res = _convert(monkeypatch, tmp_path, fail)
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == [f"Error: {tmp_path}/config.json: missing; give a model folder"], res.output


def test_out_of_memory_is_one_line(monkeypatch, tmp_path):
    def fail():
        raise MemoryError()

    res = _convert(monkeypatch, tmp_path, fail)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [
        "Error: out of memory; try fewer --threads or a smaller model"], res.output


def test_a_bug_prints_its_traceback_and_asks_for_a_report(monkeypatch, tmp_path):
    def fail():
        raise RuntimeError("internal error: tensor a.weight was never written")

    res = _convert(monkeypatch, tmp_path, fail)
    assert res.exit_code == 1
    assert "Traceback (most recent call last)" in res.output
    assert "RuntimeError: internal error: tensor a.weight was never written" in res.output
    last = res.output.strip().splitlines()[-1]
    assert last == f"slimedge {__version__}: this is a bug; please report it with the traceback above"


def test_sigterm_unwinds_like_ctrl_c_and_exits_143(monkeypatch, tmp_path):
    """In-process: the handler is installed for the run (our fallback is never reached) and restored after."""
    reached = []

    def fallback(signum, frame):  # if the command line did not install its own handler
        reached.append(signum)

    previous = signal.signal(signal.SIGTERM, fallback)
    cleaned = []
    try:
        def work():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # interrupted by the handler's exception
            finally:
                cleaned.append(True)  # the cleanup paths run, as for Ctrl-C

        t0 = time.monotonic()
        res = _convert(monkeypatch, tmp_path, work)
        assert time.monotonic() - t0 < 20
        assert res.exit_code == SIGTERM_EXIT == 143, res.output
        assert "Traceback" not in res.output and cleaned == [True] and reached == []
        assert signal.getsignal(signal.SIGTERM) is fallback  # restored after the run
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("args,code,first", [(["--version"], 0, "slimedge "), (["frobnicate"], 2, "Usage: "),
                                             (["inspect", "/nonexistent.gguf"], 1, "Error: /nonexistent.gguf: ")])
def test_ordinary_exits_are_unchanged(args, code, first):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == code and res.output.startswith(first), res.output
    assert "this is a bug" not in res.output and "Traceback" not in res.output
