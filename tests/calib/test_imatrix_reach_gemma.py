"""slimedge imatrix on Gemma 3n and Gemma 4: it collects what llama-imatrix collects — every matrix product of a
``blk.*`` weight in llama.cpp's graph (src/models/gemma3n.cpp, gemma4.cpp), under its GGUF name: the per-layer
embedding gate and projection (``inp_gate``, ``proj``), Gemma 3n's AltUp router and predict/correct coefficients and
its LAuReL pair, attention and MLP; not the K/V projections of Gemma 3n's KV-shared layers (the converter writes
zeros there and llama.cpp never multiplies by them), nor the global ``per_layer_model_proj``/AltUp projections
(llama-imatrix only measures ``blk.*``).

Counts: one per position of every chunk, except Gemma 3n's ``altup_router``, which both graphs apply twice per layer
(AltUp's predict and correct each compute the router modalities), so llama-imatrix counts it twice too. Gemma 3n's
first layers keep only the top 5% of the MLP's gate activations (activation sparsity 0.95), so some ``ffn_down``
input columns are never active in 64 tokens: their sums are 0, as llama.cpp's would be."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.gguf_info import read_info
from slimedge.quant.imatrix_file import read_imatrix
from tests.factory import cached_hf_model

pytestmark = pytest.mark.slow  # Gemma 3n's tiny model has 22 layers (its layout needs them); ~10-20 s each

KINDS = {"gemma4": {"inp_gate", "proj", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                    "ffn_down"}}
KINDS["gemma3n"] = KINDS["gemma4"] | {"altup_router", "altup_predict_coef", "altup_correct_coef", "laurel_l",
                                      "laurel_r"}


@pytest.mark.parametrize("arch", ["gemma3n", "gemma4"])
def test_gemma_matrices_measured_as_llama_imatrix(tmp_path, arch):
    from gguf import GGUFReader

    model = cached_hf_model(arch=arch)
    out = tmp_path / "imatrix.gguf"
    r = CliRunner().invoke(main, ["imatrix", str(model), "--data", textwrap.__file__, "-o", str(out),
                                  "--ctx", "32", "--chunks", "2", "-q"])
    assert r.exit_code == 0, r.output
    f32 = tmp_path / "f32.gguf"
    r = CliRunner().invoke(main, ["convert", str(model), "-o", str(f32), "--type", "F32", "-q"])
    assert r.exit_code == 0, r.output
    mats = {t.name: t.shape for t in read_info(f32).tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    data = {t.name: np.asarray(t.data) for t in GGUFReader(str(f32)).tensors}
    unread = {n for n in mats if not data[n].any()}
    if arch == "gemma3n":  # 22 layers, the last 2 reuse layer 18/19's KV
        assert unread == {f"blk.{i}.attn_{x}.weight" for i in (20, 21) for x in "kv"}
    else:  # Gemma 4's converter writes no K/V for its KV-shared layers
        assert not unread and "blk.5.attn_k.weight" not in mats
    imx = read_imatrix(out)
    assert {n: (e.n_mat, e.n_cols) for n, e in imx.entries.items()} == {
        n: (1, s[-1]) for n, s in mats.items() if n not in unread}
    assert {n.split(".")[2] for n in imx.entries} == KINDS[arch]
    sparse = 0
    for name, e in imx.entries.items():
        assert e.counts.tolist() == [128 if name.endswith("altup_router.weight") else 64], name
        assert (e.sums >= 0).all() and (e.sums > 0).any(), name
        if not (e.sums > 0).all():
            assert arch == "gemma3n" and name.endswith("ffn_down.weight") and int(name.split(".")[1]) < 10, name
            sparse += 1
    assert sparse <= 10
