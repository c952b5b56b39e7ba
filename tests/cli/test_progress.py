"""Progress output: a redrawn bar on a terminal, plain lines (one per stage, a few per long stage) elsewhere."""

from __future__ import annotations

import io

from click.testing import CliRunner
from tests.factory import cached_hf_model

from slimedge.cli import main
from slimedge.cli import options
from slimedge.cli.options import BarProgress


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_plain_lines_when_not_a_terminal(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(options.time, "monotonic", clock)
    out = io.StringIO()
    bar = BarProgress(out)  # StringIO is not a TTY
    assert not bar.tty
    bar.start(1000, unit="steps", desc="distill")
    for i in range(1000):  # 1000 updates over 35 s: at most one line per 10 s
        clock.t += 0.035
        bar.update(1, label=f"step {i}", loss=1.0)
    bar.close()
    bar.start(5, unit="runs", desc="bench x")
    bar.update(5)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "distill: started (1000 steps)"
    assert len([ln for ln in lines if ln.startswith("distill ")]) == 3  # at 10 s, 20 s, 30 s
    assert lines[4].startswith("distill: done 1000 steps in 35.0s")
    assert lines[5:] == ["bench x: started (5 runs)", "bench x: done 5 runs in 0.0s"]


def test_terminal_redraws_in_place(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(options.time, "monotonic", clock)
    out = io.StringIO()
    bar = BarProgress(out, tty=True)
    bar.start(150, unit="B", desc="convert m")
    for _ in range(100):  # 0.25 s apart: every update redraws
        clock.t += 0.25
        bar.update(1)
    for _ in range(50):  # 1 ms apart: throttled, except the last one (done == total)
        clock.t += 0.001
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 101
    assert "100.0%" in text


def test_cli_log_is_plain_lines(tmp_path):
    """What a CI log or `> log.txt` captures of a command's progress: whole lines, no carriage returns."""
    model = cached_hf_model(arch="llama")
    r = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "m.gguf"), "--type", "q8_0"])
    assert r.exit_code == 0, r.output
    assert "\r" not in r.stderr
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("convert ")]
    assert progress[0].startswith("convert ") and progress[0].endswith(" MB)") and ": started (" in progress[0]
    assert ": done " in progress[-1]


def test_progress_mode_can_be_forced(monkeypatch):
    from slimedge.cli.options import make_progress
    from slimedge.progress import NULL_PROGRESS

    assert make_progress(quiet=True) is NULL_PROGRESS
    monkeypatch.setenv("SLIMEDGE_PROGRESS", "bar")
    assert make_progress(quiet=False).tty is True
    monkeypatch.setenv("SLIMEDGE_PROGRESS", "plain")
    assert make_progress(quiet=False).tty is False
