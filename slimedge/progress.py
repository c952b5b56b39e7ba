"""Progress reporting for long work.

Library code never prints: it logs, and it reports progress to a :class:`Progress` sink it is given.
The default sink does nothing; the CLI passes one that draws a bar on stderr (``--quiet`` passes the
default). Units are free-form: bytes for conversion, steps for training, runs for benchmarks.
"""

from __future__ import annotations


class Progress:
    """A sink for progress events. Subclass and override; this base ignores everything."""

    def start(self, total: float, unit: str = "", desc: str = "") -> None:
        """A new task of ``total`` ``unit``s begins."""

    def update(self, n: float, label: str = "", **info: object) -> None:
        """``n`` more units are done; ``label`` names what is being worked on now."""

    def close(self) -> None:
        """The task ended (successfully or not)."""


NULL_PROGRESS = Progress()
