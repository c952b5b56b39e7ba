"""The command group: every command has help, --version names the backend, imports stay light."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from slimedge import __version__
from slimedge.cli import COMMANDS, main


def test_group_help_lists_every_command_with_its_own_first_sentence():
    """`slimedge -h`'s one-line help is each command's docstring, not a second copy that can drift."""
    res = CliRunner().invoke(main, ["-h"], terminal_width=100)
    assert res.exit_code == 0, res.output
    ctx = main.make_context("slimedge", [], resilient_parsing=True)
    for name in COMMANDS:
        first = main.get_command(ctx, name).help.split("\n\n")[0].strip()
        assert re.search(rf"^  {name} +{re.escape(first)}$", res.output, re.M), (name, first, res.output)
        assert len(first) <= 87 and first.endswith("."), f"{name}: a one-line first sentence ({first!r})"


def test_help_options_are_set_once_on_the_group():
    """-h works for every command through the group's context settings (no command repeats them)."""
    import inspect as pyinspect

    import slimedge.cli as cli_pkg

    for name in COMMANDS:
        source = pyinspect.getsource(__import__(f"slimedge.cli.{name}", fromlist=["cli"]))
        assert "help_option_names" not in source, name
    assert "help_option_names" in pyinspect.getsource(cli_pkg)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    res = CliRunner().invoke(main, [name, "-h"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Usage: ") and f" {name} " in res.output.splitlines()[0]
    assert len(res.output.splitlines()) > 4  # a description and options, not just a usage line


def test_version_names_the_quant_backend():
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0
    assert res.output.startswith(f"slimedge {__version__}\nquant backend: ")
    assert "unavailable" not in res.output


def test_unknown_command_is_a_usage_error():
    res = CliRunner().invoke(main, ["frobnicate"])
    assert res.exit_code == 2 and "No such command" in res.output


def _loaded(code: str) -> list[str]:
    probe = (f"import sys; {code}; "
             "print(','.join(m for m in ('torch', 'transformers', 'llama_cpp', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_slimedge_is_light():
    assert _loaded("import slimedge, slimedge.cli") == []
    # the distill command and its config parse options without torch; torch loads when training starts
    loaded = _loaded("import slimedge.cli.distill, slimedge.distill, slimedge.distill.config")
    assert "torch" not in loaded and "transformers" not in loaded


def test_converter_path_needs_no_torch():
    loaded = _loaded("import slimedge.convert, slimedge.quant, slimedge.gguf_info, slimedge.vocab, slimedge.cli.convert")
    assert "torch" not in loaded and "transformers" not in loaded and "llama_cpp" not in loaded
