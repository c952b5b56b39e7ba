"""Options and helpers shared by the commands.

Every command that does long work takes ``--quiet``; every command that computes takes
``--threads``. (Errors, help options and logging are set once, on the group: ``slimedge/cli/__init__.py``.)
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable

import click

from ..progress import NULL_PROGRESS, Progress

quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress output.")


def _thread_policy(ctx: click.Context, _param: click.Parameter, value: int | None) -> int | None:
    """``--threads`` is the thread policy's override, exported before the command loads torch, for this command."""
    from ..threads import clear_override, configure

    configure(value)
    if value:
        ctx.call_on_close(clear_override)
    return value


threads_option = click.option("-t", "--threads", type=click.IntRange(min=1), default=None, callback=_thread_policy,
                              help="Worker threads (default: the CPUs this process may use; docs/threads.md).")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")


class BarProgress(Progress):
    """A one-line progress bar on stderr: description, percent, rate, current label, ETA.

    On a terminal the line is redrawn in place (``\\r``) at most every 0.1 s. Anywhere else (a CI log,
    ``> log.txt``, ``nohup``) it writes plain lines instead: one when a stage starts, at most one
    every :attr:`PLAIN_INTERVAL` seconds while it runs, and one when it ends.
    """

    TTY_INTERVAL = 0.1  # seconds between redraws on a terminal
    PLAIN_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal

    def __init__(self, stream=None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.total = 0.0
        self.done = 0.0
        self.t0 = 0.0
        self.unit = ""
        self.desc = ""
        self._last = 0.0
        self._open = False  # a stage is running (start seen, close not yet)
        self._drawn = False  # a \r line is on screen and needs its newline

    def start(self, total: float, unit: str = "", desc: str = "") -> None:
        if self._open:
            self.close()
        self.total, self.done, self.unit, self.desc = float(total), 0.0, unit, desc
        self.t0 = self._last = time.monotonic()
        self._open = True
        if not self.tty:
            size = f" ({self._fmt(self.total)})" if self.total else ""
            self._write_line(f"{desc}: started{size}")

    def _fmt(self, x: float) -> str:
        if self.unit == "B":
            return f"{x / 1e6:.1f} MB"
        return f"{x:.0f} {self.unit}".strip()

    def _status(self, now: float, label: str, info: dict) -> str:
        dt = max(now - self.t0, 1e-9)
        rate = self.done / dt
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        extra = " ".join(f"{k}={v}" for k, v in info.items())
        rate_s = f"{rate / 1e6:.1f} MB/s" if self.unit == "B" else f"{rate:.2f} {self.unit}/s"
        return f"{self.desc} {pct:5.1f}% {self._fmt(self.done)} {rate_s} ETA {eta:4.0f}s {label} {extra}".rstrip()

    def _write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, n: float, label: str = "", **info: object) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty:
            if now - self._last < self.TTY_INTERVAL and self.done < self.total:
                return
            self._last = now
            self.stream.write("\r" + self._status(now, label, info)[:160].ljust(100))
            self.stream.flush()
            self._drawn = True
        elif now - self._last >= self.PLAIN_INTERVAL:
            self._last = now
            self._write_line(self._status(now, label, info)[:200])

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self.tty:
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()
            self._drawn = False
        else:
            dt = time.monotonic() - self.t0
            done = f" {self._fmt(self.done)}" if self.done else ""
            rate = ""
            if self.done and dt > 0:
                r = self.done / dt
                rate = f" ({r / 1e6:.1f} MB/s)" if self.unit == "B" else f" ({r:.2f} {self.unit}/s)"
            self._write_line(f"{self.desc}: done{done} in {dt:.1f}s{rate}")


def make_progress(quiet: bool) -> Progress:
    """The CLI's progress sink: nothing with ``--quiet``, else a bar on stderr.

    ``SLIMEDGE_PROGRESS=bar`` or ``=plain`` overrides the terminal check (e.g. ``bar`` under a pseudo-terminal
    that does not report itself, ``plain`` on a terminal whose scrollback should keep every line).
    """
    if quiet:
        return NULL_PROGRESS
    mode = os.environ.get("SLIMEDGE_PROGRESS", "").strip().lower()
    return BarProgress(tty={"bar": True, "plain": False}.get(mode))


def tune_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--tune DATA`` (+ ``--tune-teacher``, ``--tune-steps``): tune the quantized file against its teacher
    (``slimedge tune``) right after converting; the command receives ``tune`` (a TuneOptions or None)."""

    @click.option("--tune", "tune_data", type=click.Path(path_type=str), default=None, metavar="FILE|DIR",
                  help="Tune the quantized file's block scales against the teacher on this calibration data "
                       "(as `slimedge tune`: same size and types, lower KL divergence).")
    @click.option("--tune-teacher", default=None, metavar="HF_DIR",
                  help="With --tune: the teacher (default: SRC itself, when it is a Hugging Face folder).")
    @click.option("--tune-steps", type=click.IntRange(min=0), default=None, help="With --tune: optimizer steps "
                  "(default 300).")
    @functools.wraps(func)
    def wrapper(*args: Any, tune_data: str | None, tune_teacher: str | None, tune_steps: int | None,
                **kwargs: Any) -> Any:
        if tune_data is None:
            if tune_teacher is not None or tune_steps is not None:
                raise click.UsageError("--tune-teacher / --tune-steps need --tune DATA")
            return func(*args, tune=None, **kwargs)
        from ..tune.convert import TuneOptions

        opts = TuneOptions(data=tune_data, teacher=tune_teacher)
        if tune_steps is not None:
            opts.steps = tune_steps
        return func(*args, tune=opts, **kwargs)

    return wrapper
