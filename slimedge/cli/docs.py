"""The command-line reference, generated from the commands' own ``--help``: ``docs/cli.md``.

``python -m slimedge.cli.docs > docs/cli.md`` writes one section per command (the group first, then
the commands in ``slimedge -h`` order), each holding exactly what ``slimedge COMMAND -h`` prints at a
fixed width of :data:`WIDTH` columns, so option lists are written once — in the click options — and the
page cannot go stale unnoticed (``tests/cli/test_docs.py`` compares it with a fresh rendering).
"""

from __future__ import annotations

import click

from . import COMMANDS, main

WIDTH = 100  # columns the help is wrapped to, whatever the terminal that runs the generator

HEADER = """# Command-line reference

Generated from each command's `--help` by `python -m slimedge.cli.docs > docs/cli.md`; do not edit by hand
(`tests/cli/test_docs.py` fails when this page and the commands disagree). The guides in this folder
explain what the options are for; this page lists them all.
"""


def help_text(name: str | None = None) -> str:
    """What ``slimedge -h`` (``name`` None) or ``slimedge NAME -h`` prints, wrapped at :data:`WIDTH`."""
    group_ctx = main.make_context("slimedge", [], resilient_parsing=True, terminal_width=WIDTH)
    if name is None:
        return main.get_help(group_ctx)
    cmd = main.get_command(group_ctx, name)
    if cmd is None:
        raise KeyError(name)
    ctx = cmd.make_context(name, [], parent=group_ctx, resilient_parsing=True)
    return cmd.get_help(ctx)


def render() -> str:
    """The whole Markdown page."""
    parts = [HEADER]
    toc = ", ".join(f"[`{name}`](#slimedge-{name})" for name in COMMANDS)
    parts.append(f"Commands: {toc}.\n")
    for name in (None, *COMMANDS):
        title = "slimedge" if name is None else f"slimedge {name}"
        parts.append(f"## {title}\n\n```text\n{help_text(name).rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    click.echo(render(), nl=False)
