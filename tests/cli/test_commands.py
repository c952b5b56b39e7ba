"""The command group: every command has help, --version names the backend, imports stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from slimedge import __version__
from slimedge.cli import COMMANDS, main


def test_group_help_lists_every_command():
    res = CliRunner().invoke(main, ["-h"])
    assert res.exit_code == 0, res.output
    for name in COMMANDS:
        assert f"  {name} " in res.output, name


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
