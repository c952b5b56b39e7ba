"""`import slimedge`, the CLI group and the distill command module stay free of torch/transformers."""

from __future__ import annotations

import subprocess
import sys


def test_cli_and_distill_config_import_without_torch():
    code = ("import sys, slimedge, slimedge.cli, slimedge.cli.distill, slimedge.distill, slimedge.distill.config; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_distill_help_lists_options():
    from click.testing import CliRunner

    from slimedge.cli.distill import cli

    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for opt in ("--teacher", "--layers", "--kv-heads", "--loss", "--alpha", "--temperature", "--teacher-cache",
                "--response", "--feature-weight", "--resume", "--checkpoint-every", "--grad-accum", "--quiet"):
        assert opt in res.output, opt
