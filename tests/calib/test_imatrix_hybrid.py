"""slimedge imatrix on a hybrid (Qwen3.5: gated delta-net + attention): every matrix llama.cpp applies as a matrix
product is measured under its GGUF name (the delta-net's attn_qkv, attn_gate, ssm_alpha, ssm_beta, ssm_out; not
the convolution, which llama.cpp runs as ggml_ssm_conv), and ssm_out's inputs come in the GGUF's tiled value-head
order — checked against squared inputs recorded here with plain torch hooks and tiled by an index built here."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from slimedge.calib import compute_imatrix
from slimedge.calib.imatrix import chunk_tokens, tokenize
from slimedge.gguf_info import read_info
from tests.factory import cached_hf_model
from tests.family_checks import convert

TEXT = open(textwrap.__file__, encoding="utf-8").read()
pytestmark = pytest.mark.slow  # builds the model, runs it twice and converts it (~15 s)


def _recorded(model_dir, chunks) -> dict[str, np.ndarray]:
    """HF module name -> float64 sum over positions of its squared input, from forward pre-hooks."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums: dict[str, np.ndarray] = {}

    def hook(name):
        def pre(_m, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0).numpy()
        return pre

    for name, m in model.named_modules():
        if name.startswith("model.layers.0.linear_attn.") or name.startswith("model.layers.3.self_attn."):
            if isinstance(m, torch.nn.Linear):
                m.register_forward_pre_hook(hook(name))
    with torch.no_grad():
        model.model(input_ids=torch.tensor(chunks), use_cache=False)
    return sums


def test_delta_net_inputs_measured_in_gguf_order(tmp_path):
    hf = cached_hf_model(arch="qwen35")  # 2 key heads, 4 value heads of 64: ssm_out's columns are tiled
    ctx, n = 32, 2
    imx = compute_imatrix(hf, TEXT, ctx=ctx, chunks=n)
    mats = {t.name: t.shape for t in read_info(convert(hf, tmp_path / "f32.gguf", "F32")).tensors
            if t.name.startswith("blk.") and len(t.shape) == 2}
    assert {name: (e.n_mat, e.n_cols) for name, e in imx.entries.items()} == {
        name: (1, s[-1]) for name, s in mats.items() if ".ssm_conv1d." not in name}
    assert "blk.0.ssm_out.weight" in imx.entries and "blk.0.ssm_alpha.weight" in imx.entries
    ids, bos = tokenize(hf, TEXT)
    rec = _recorded(hf, chunk_tokens(ids, bos, ctx, n))
    la = "model.layers.0.linear_attn."
    for gguf, module in (("attn_qkv", "in_proj_qkv"), ("attn_gate", "in_proj_z"), ("ssm_alpha", "in_proj_a"),
                         ("ssm_beta", "in_proj_b")):
        np.testing.assert_allclose(imx.entries[f"blk.0.{gguf}.weight"].sums, rec[la + module], rtol=2e-5)
    tiled = [(k * 2 + j) * 64 + x for j in range(2) for k in range(2) for x in range(64)]  # v head j of key head k
    np.testing.assert_allclose(imx.entries["blk.0.ssm_out.weight"].sums, rec[la + "out_proj"][tiled], rtol=2e-5)
    assert not np.allclose(rec[la + "out_proj"][tiled], rec[la + "out_proj"], rtol=1e-3)  # the order matters
    np.testing.assert_allclose(imx.entries["blk.3.attn_output.weight"].sums, rec["model.layers.3.self_attn.o_proj"],
                               rtol=2e-5)
    assert all(e.counts.tolist() == [n * ctx] for e in imx.entries.values())


def test_mamba2_mixer_inputs_measured(tmp_path):
    """Nemotron-H: ssm_in and ssm_out are products (measured); the convolution and the per-group norm are not."""
    hf = cached_hf_model(arch="nemotronh")
    imx = compute_imatrix(hf, TEXT, ctx=32, chunks=2)
    mats = {t.name: t.shape for t in read_info(convert(hf, tmp_path / "f32.gguf", "F32")).tensors
            if t.name.startswith("blk.") and len(t.shape) == 2 and t.name.endswith(".weight")}
    assert {name: e.n_cols for name, e in imx.entries.items()} == {
        name: s[-1] for name, s in mats.items() if ".ssm_conv1d." not in name and ".ssm_norm." not in name}
    want = {"blk.0.ssm_in.weight", "blk.0.ssm_out.weight", "blk.1.ffn_down.weight", "blk.2.attn_q.weight"}
    assert want <= set(imx.entries)
