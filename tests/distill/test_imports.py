"""The distill command's help lists its options (import lightness: tests/cli/test_commands.py)."""

from __future__ import annotations



def test_distill_help_lists_options():
    from click.testing import CliRunner

    from slimedge.cli import main

    res = CliRunner().invoke(main, ["distill", "--help"])
    assert res.exit_code == 0
    for opt in ("--teacher", "--layers", "--kv-heads", "--loss", "--alpha", "--temperature", "--teacher-cache",
                "--response", "--feature-weight", "--resume", "--checkpoint-every", "--grad-accum", "--quiet"):
        assert opt in res.output, opt
