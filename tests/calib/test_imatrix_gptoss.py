"""slimedge imatrix on gpt-oss: its experts are stored [n_embd, 2·n_ff] with biases, gate/up interleaved and a
clamped GLU, so the down projections' inputs are recomputed the gpt-oss way. Checked against a NumPy float64
recomputation from the inputs the experts modules received during the run (hidden states, chosen experts)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from slimedge.calib import compute_imatrix
from tests.factory import cached_hf_model

TEXT = open(textwrap.__file__, encoding="utf-8").read()


@pytest.mark.slow  # builds gpt-oss and runs transformers over the calibration chunks
def test_gptoss_expert_statistics_equal_a_recomputation():
    import torch
    from safetensors.numpy import load_file

    model = cached_hf_model(arch="gptoss")
    seen: list[tuple[object, np.ndarray, np.ndarray]] = []

    def capture(mod, args):
        if type(mod).__name__ == "GptOssExperts":
            seen.append((mod, args[0].detach().reshape(-1, args[0].shape[-1]).double().numpy(),
                         args[1].reshape(args[0].reshape(-1, args[0].shape[-1]).shape[0], -1).numpy()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(capture)
    try:
        imx = compute_imatrix(model, TEXT, ctx=32, chunks=2)
    finally:
        handle.remove()
    w = {k: v.astype(np.float64) for k, v in load_file(str(model / "model.safetensors")).items()}
    layer_of = {id(m): i for i, m in enumerate(dict.fromkeys(m for m, _, _ in seen))}
    assert len(layer_of) == 2  # one experts module per layer, in layer order
    for i in range(2):
        x = np.concatenate([a for m, a, _ in seen if layer_of[id(m)] == i])
        chosen = np.concatenate([c for m, _, c in seen if layer_of[id(m)] == i])
        p = f"model.layers.{i}.mlp.experts."
        gate_e, down_e = imx.entries[f"blk.{i}.ffn_gate_exps.weight"], imx.entries[f"blk.{i}.ffn_down_exps.weight"]
        assert gate_e.counts.sum() == len(x) * 2 and (gate_e.counts > 0).sum() >= 2  # top-2 of 4 per token
        for e in range(4):
            xe = x[(chosen == e).any(-1)]
            gu = xe @ w[p + "gate_up_proj"][e] + w[p + "gate_up_proj_bias"][e]
            gate, up = np.minimum(gu[:, ::2], 7.0), np.clip(gu[:, 1::2], -7.0, 7.0)
            h = (up + 1) * gate / (1 + np.exp(-1.702 * gate))
            assert gate_e.counts[e] == down_e.counts[e] == len(xe)
            np.testing.assert_allclose(gate_e.sums.reshape(4, -1)[e], (xe * xe).sum(0), rtol=2e-5)
            np.testing.assert_allclose(down_e.sums.reshape(4, -1)[e], (h * h).sum(0), rtol=2e-4)
