"""``convert --imatrix`` with the importance matrix of another model whose widths happen to match.

A 6-layer Llama's imatrix (computed by ``slimedge imatrix``) has entries for ``blk.4.*`` and ``blk.5.*``,
which a 4-layer Qwen2 of the same widths does not have: refused in one line naming those tensors and the
file's datasets/chunks, with nothing written. The same file on its own model converts.
"""

from __future__ import annotations

import textwrap

from click.testing import CliRunner
from tests.factory import cached_hf_model

from slimedge.cli import main

WIDTHS = dict(kquant=True)  # hidden 256, ff 512: one width for both families


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_deeper_llamas_imatrix_on_a_qwen2_is_refused(tmp_path):
    llama = cached_hf_model(arch="llama", num_hidden_layers=6, **WIDTHS)
    qwen2 = cached_hf_model(arch="qwen2", num_hidden_layers=4, **WIDTHS)
    imx = tmp_path / "llama6.imatrix.gguf"
    r = _run("imatrix", llama, "--data", textwrap.__file__, "-o", imx, "--ctx", "32", "--chunks", "2", "-q")
    assert r.exit_code == 0, r.output
    out = tmp_path / "qwen2.gguf"
    r = _run("convert", qwen2, "-o", out, "--type", "Q4_K_M", "--imatrix", imx, "-q")
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert str(imx) in lines[0] and "another model" in lines[0] and "Traceback" not in r.output
    assert "blk.4." in lines[0] and "2 chunks" in lines[0] and "textwrap.py" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("qwen2*"))
    r = _run("convert", llama, "-o", tmp_path / "llama.gguf", "--type", "Q4_K_M", "--imatrix", imx, "-q")
    assert r.exit_code == 0, r.output
