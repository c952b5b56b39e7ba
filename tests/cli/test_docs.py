"""The documentation tells the truth about the command line: docs/cli.md is what the commands' --help prints
today, every command's help has an example, and every `slimedge COMMAND --option` written in README.md or
docs/*.md names a real command and a real option of it; relative links resolve; README's Set-up block holds the
two commands .ci/run runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from slimedge.cli import COMMANDS, main
from slimedge.cli.docs import help_text, render

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REGENERATE = "regenerate it: python -m slimedge.cli.docs > docs/cli.md"


def test_cli_md_is_current():
    page = ROOT / "docs" / "cli.md"
    assert page.is_file(), REGENERATE
    assert page.read_text(encoding="utf-8") == render(), f"docs/cli.md is stale; {REGENERATE}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name):
    text = help_text(name)
    assert "Example" in text and f"slimedge {name}" in text.split("Example", 1)[1], text


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def _code_lines(text: str):
    """Lines of fenced code blocks and of 4-space indented blocks (continuation lines joined), and inline
    `slimedge ...` code spans."""
    lines, fenced, indented, prev_blank = [], False, False, True
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        indented = line.startswith("    ") and (prev_blank or indented)
        if fenced or indented:
            lines.append(line.strip())
        else:  # inline code in prose and tables: `slimedge convert ... --type Q4_K_M`
            lines += re.findall(r"`((?:\S+=\S+ )*slimedge [^`]+)`", line)
        prev_blank = not line.strip()
    joined, buf = [], ""
    for line in lines:
        buf += line
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        joined.append(buf)
        buf = ""
    return joined


def _invocations(text: str):
    """(command, [option, ...]) for every `slimedge COMMAND ...` (or `-m slimedge COMMAND`) in the code."""
    for line in _code_lines(text):
        line = line.split(" #")[0]
        for segment in re.split(r"\s(?:\|\||&&|\||;)\s", line):
            try:
                tokens = shlex.split(segment)
            except ValueError:
                tokens = segment.split()
            if "slimedge" not in tokens:
                continue
            at = tokens.index("slimedge")  # a command: `slimedge`, `VAR=x slimedge` or `... -m slimedge`
            if not (all("=" in t for t in tokens[:at]) or tokens[at - 1] == "-m"):
                continue
            rest = tokens[at + 1:]
            if not rest:
                continue
            name, args = (rest[0], rest[1:]) if not rest[0].startswith("-") else (None, rest)
            if name is not None and not name.islower():  # a placeholder: `slimedge COMMAND --option`
                continue
            opts = [a.strip("[]").split("=")[0] for a in args if a.strip("[").startswith("-")]
            yield name, [o for o in opts if re.fullmatch(r"--?[a-z][a-z0-9-]*", o)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documented_invocations_are_real(page):
    ctx = main.make_context("slimedge", [], resilient_parsing=True)
    bad, seen = [], 0
    for name, opts in _invocations(page.read_text(encoding="utf-8")):
        seen += 1
        cmd = main if name is None else main.get_command(ctx, name)
        if cmd is None:
            bad.append(f"no command {name!r}")
            continue
        known = _options(cmd) | {"-h", "--help"}
        bad += [f"slimedge {name or ''} {o}: no such option" for o in opts if o not in known]
    assert not bad, f"{page.name}: " + "; ".join(bad)
    if page.name not in ("architecture.md", "benchmarks.md", "sweep-demo-teacher.md"):
        assert seen, f"{page.name} shows no slimedge command"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = (page.parent / target) if target else page
        if not path.exists():
            missing.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            missing.append(f"{target}#{anchor}")
    assert not missing, f"{page.name} links to missing files or headings: {missing}"


def test_docs_pages_open_with_a_runnable_example():
    for page in PAGES[1:]:
        if page.name in ("cli.md", "sweep-demo-teacher.md"):
            continue
        head = page.read_text(encoding="utf-8").split("\n## ")[0]
        assert "```" in head, f"{page.name}: its first section has no example (a fenced code block)"


def test_readme_is_a_front_door_with_the_ci_set_up_block():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    section = text[text.index("## Set-up"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)  # as .ci/run reads it
    cmds = [c for c in (ln.split("  #")[0].strip() for ln in block.splitlines()) if c and not c.startswith("#")]
    assert len(cmds) == 2 and "pip install" in cmds[0] and "pytest" in cmds[1], cmds
    shlex.split(cmds[0])  # quotes balanced: bash runs it verbatim
    for page in ("convert", "quality", "bundles", "bench", "distill", "tune", "benchmarks", "architecture", "cli"):
        assert f"docs/{page}.md" in text, f"README does not link docs/{page}.md"
