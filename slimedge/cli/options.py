"""Options and helpers shared by the commands.

Every command that does long work takes ``--quiet``; every command that computes takes
``--threads``. Errors a user can fix become one-line :class:`click.ClickException`s via
:func:`user_errors`.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any, Callable

import click

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress

quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress output.")
threads_option = click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
                              help="Worker threads (default: all cores).")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line CLI errors (exit 1, no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.WARNING, format="slimedge: %(message)s")
        try:
            return func(*args, **kwargs)
        except SlimedgeError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except MemoryError:
            raise click.ClickException("out of memory; try fewer --threads or a smaller model") from None

    return wrapper


def default_threads(threads: int | None) -> int:
    return threads or os.cpu_count() or 1


class BarProgress(Progress):
    """A one-line progress bar on stderr: description, percent, rate, current label, ETA."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.total = 0.0
        self.done = 0.0
        self.t0 = 0.0
        self.unit = ""
        self.desc = ""
        self._last = 0.0

    def start(self, total: float, unit: str = "", desc: str = "") -> None:
        self.total, self.done, self.unit, self.desc = float(total), 0.0, unit, desc
        self.t0 = self._last = time.monotonic()

    def _fmt(self, x: float) -> str:
        if self.unit == "B":
            return f"{x / 1e6:.1f} MB"
        return f"{x:.0f} {self.unit}".strip()

    def update(self, n: float, label: str = "", **info: object) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        dt = max(now - self.t0, 1e-9)
        rate = self.done / dt
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        extra = " ".join(f"{k}={v}" for k, v in info.items())
        rate_s = f"{rate / 1e6:.1f} MB/s" if self.unit == "B" else f"{rate:.2f} {self.unit}/s"
        line = f"\r{self.desc} {pct:5.1f}% {self._fmt(self.done)} {rate_s} ETA {eta:4.0f}s {label} {extra}"
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def make_progress(quiet: bool) -> Progress:
    return NULL_PROGRESS if quiet else BarProgress()
