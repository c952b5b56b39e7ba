"""The ``slimedge`` command line: a click group whose commands load lazily.

Each command lives in its own module in this package (``slimedge/cli/<name>.py``) and exposes a
click command named ``cli``. Commands hold no logic a library user would need; they parse options,
call the library, and print. What every command shares is set once, on the group:

- the help options (``-h``/``--help``) and the help width (:data:`CONTEXT_SETTINGS`, inherited by
  every command's context);
- the one-line help of ``slimedge -h``: the first sentence of each command's own docstring (click's
  short help), so it cannot drift from ``slimedge COMMAND -h``;
- logging (``slimedge: message`` lines on stderr) and third-party progress bars off (the commands draw
  their own; ``HF_HUB_DISABLE_PROGRESS_BARS=0`` brings transformers' back);
- errors and signals (:meth:`LazyGroup.main`): a :class:`~slimedge.errors.SlimedgeError` (or a
  ``MemoryError``) is one ``Error: ...`` line, exit 1; any other exception is a bug: its traceback, then
  one line asking to report it, exit 1. SIGTERM (what ``timeout``, systemd, Docker and CI send) is
  handled like Ctrl-C — it raises :class:`Terminated`, a ``KeyboardInterrupt``, in the main thread, so
  every cleanup path runs (temporary files removed, existing outputs untouched) — and the exit status
  is 143 (128 + 15).

``python -m slimedge.cli.docs > docs/cli.md`` writes every command's ``--help`` as the CLI reference.

Examples::

    slimedge convert ./TinyLlama -o tinyllama-q4_k_m.gguf --type Q4_K_M
    slimedge inspect tinyllama-q4_k_m.gguf
    slimedge demo
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import traceback

import click

from .. import __version__
from ..errors import SlimedgeError

# the commands, in the order `slimedge -h` lists them; each is the module slimedge/cli/<name>.py
COMMANDS: tuple[str, ...] = ("convert", "imatrix", "inspect", "distill", "draft", "tune", "targets", "build", "verify",
                             "bench", "serve", "report", "sweep", "demo")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _backend_line() -> str:
    try:
        from ..quant.backend import backend_info

        return f"quant backend: {backend_info()}"
    except Exception as exc:  # the version line must never fail
        return f"quant backend: unavailable ({exc})"


SIGTERM_EXIT = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C so the same cleanup runs."""


class _Signals:
    """Installs the SIGTERM handler for one run of the command line (main thread only)."""

    def __init__(self) -> None:
        self.terminated = False
        self.previous = None
        self.installed = False

    def _handler(self, signum, frame) -> None:
        self.terminated = True
        signal.signal(signal.SIGTERM, lambda *_: None)  # a second SIGTERM must not interrupt the cleanup
        raise Terminated()

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handler)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)


def user_message(exc: BaseException) -> str:
    """The one line a user error prints (after ``Error: ``)."""
    if isinstance(exc, MemoryError):
        return "out of memory; try fewer --threads or a smaller model"
    return str(exc)


def bug_line() -> str:
    return f"slimedge {__version__}: this is a bug; please report it with the traceback above"


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs or shows help.

    Its :meth:`main` adds the error and signal handling described in the module docstring.
    """

    def main(self, *args, **kwargs):
        if not kwargs.get("standalone_mode", True):  # embedded: the caller handles everything
            return super().main(*args, **kwargs)
        logging.basicConfig(level=logging.WARNING, format="slimedge: %(message)s")
        # the commands draw their own progress (--quiet, SLIMEDGE_PROGRESS); transformers' and the Hub's tqdm bars
        # ("Loading weights" on every model load) would interleave with it: off unless the user turns them on
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        with _Signals() as sig:
            try:
                from ..threads import configure

                configure()  # the thread policy's OpenMP environment, before any command loads torch
                return super().main(*args, **kwargs)
            except SystemExit:
                if sig.terminated:
                    raise SystemExit(SIGTERM_EXIT) from None
                raise
            except (SlimedgeError, MemoryError) as exc:  # a user error: one line, no traceback
                click.echo(f"Error: {user_message(exc)}", err=True)
                raise SystemExit(1) from None
            except Exception:
                traceback.print_exc()
                click.echo(bug_line(), err=True)
                sys.stderr.flush()
                raise SystemExit(1) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"{__name__}.{name}").cli


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"slimedge {__version__}\n{_backend_line()}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the active quantization backend, then exit.")
def main() -> None:
    """slimedge: turn a language model into a file that runs well on a laptop, desktop or ARM board.

    \b
    Pipeline: load → distill → quantize/convert → target/bundle → bench.
    Start with `slimedge demo`, or `slimedge convert MODEL_DIR -o model.gguf --type Q4_K_M`.
    """
