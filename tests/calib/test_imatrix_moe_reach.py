"""slimedge imatrix on the MoE reach families: every ``blk.*`` matrix of the converted file (routers, stacked
experts, shared experts and their gate, ERNIE's dense lead layer) is measured under its GGUF name with the right
input width, dense ones once per position of every chunk, experts once per routed token (top-k per position)."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.gguf_info import read_info
from slimedge.quant.imatrix_file import read_imatrix
from tests.factory import cached_hf_model

pytestmark = pytest.mark.slow  # builds a model per family and runs transformers over two chunks

ARCHS = ["qwen2moe", "olmoe", "granitemoe", "ernie45moe", "phimoe", "gptoss"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_matrix_and_expert_measured_under_its_gguf_name(tmp_path, arch):
    model = cached_hf_model(arch=arch)
    out = tmp_path / "imatrix.gguf"
    r = CliRunner().invoke(main, ["imatrix", str(model), "--data", textwrap.__file__, "-o", str(out),
                                  "--ctx", "32", "--chunks", "2", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "f32.gguf"), "--type", "F32", "-q"])
    assert r.exit_code == 0, r.output
    mats = {t.name: tuple(t.shape) for t in read_info(tmp_path / "f32.gguf").tensors
            if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) >= 2}
    imx = read_imatrix(out)
    want = {n: (s[0] if len(s) == 3 else 1, s[-1]) for n, s in mats.items()}
    assert {n: (e.n_mat, e.n_cols) for n, e in imx.entries.items()} == want
    assert any("_exps." in n for n in want) and any("ffn_gate_inp." in n for n in want)
    for name, e in imx.entries.items():
        if "_exps." in name:
            assert e.counts.sum() == 64 * 2, name  # 2 chunks of 32 positions, top-2 routing
        else:
            assert e.counts.tolist() == [64] and (e.sums > 0).all(), name
