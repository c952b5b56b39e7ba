"""slimedge imatrix on the reach dense families and the classics: every 2-D ``blk.*`` matrix of the converted file
is measured under its GGUF name with the right input width (GPT-2's Conv1D layers, stored [in, out], included;
GPT-NeoX's regrouped qkv rows do not change its inputs), once per position of every chunk."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.gguf_info import read_info
from slimedge.quant.imatrix_file import read_imatrix
from tests.factory import cached_hf_model

pytestmark = pytest.mark.slow  # builds a model per family and runs transformers over two chunks (3-15 s each)

ARCHS = ["gpt2", "olmo3", "ministral3", "exaone4", "ernie4_5", "stablelm", "starcoder2", "phi", "gptneox"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_matrix_measured_under_its_gguf_name(tmp_path, arch):
    model = cached_hf_model(arch=arch)
    out = tmp_path / "imatrix.gguf"
    r = CliRunner().invoke(main, ["imatrix", str(model), "--data", textwrap.__file__, "-o", str(out),
                                  "--ctx", "32", "--chunks", "2", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "f32.gguf"), "--type", "F32", "-q"])
    assert r.exit_code == 0, r.output
    mats = {t.name: t.shape for t in read_info(tmp_path / "f32.gguf").tensors
            if t.name.startswith("blk.") and len(t.shape) == 2}
    imx = read_imatrix(out)
    assert {n: (e.n_mat, e.n_cols) for n, e in imx.entries.items()} == {n: (1, s[-1]) for n, s in mats.items()}
    assert all(e.counts.tolist() == [64] for e in imx.entries.values())
    assert all((e.sums > 0).all() for e in imx.entries.values())
