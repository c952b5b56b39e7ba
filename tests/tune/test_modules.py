"""The torch modules of slimedge tune (slimedge.tune.modules) against slimedge.quant's bytes.

Checked for every supported type: the torch weight equals slimedge.quant.dequantize for the initial fields (with a row
permutation) and writes back bit for bit, a changed field shows in the written bytes, learned codes write back what
torch multiplies, and the low-memory layers (matrix rebuilt in backward) give the same outputs and gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimedge.quant import dequantize, quantize
from slimedge.quant.blockfields import SUPPORTED, pack, unpack
from slimedge.tune.modules import QuantEmbedding, QuantLinear, QuantWeight


@pytest.mark.parametrize("qtype", sorted(SUPPORTED))
def test_torch_weight_equals_dequantize_and_writes_back(qtype):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 512)) * 0.05 + rng.uniform(-0.02, 0.02, (6, 1))).astype(np.float32)
    q = quantize(w, qtype)
    perm = np.array([3, 0, 5, 1, 4, 2])                      # HF row r = GGUF row perm[r]
    qw = QuantWeight(unpack(q, qtype), 6, 512, perm)
    with torch.no_grad():
        got = qw().numpy()
    want = dequantize(q, qtype, 512)[perm]
    assert np.array_equal(got, want)
    back = pack(qw.fields(unpack(q, qtype)), q)
    assert np.array_equal(back, q.reshape(back.shape))
    with torch.no_grad():                                     # a changed field shows in the written bytes
        qw.log_d.add_(0.1)
    q2 = pack(qw.fields(unpack(q, qtype)), q).reshape(q.shape)
    with torch.no_grad():
        assert np.array_equal(qw().numpy(), dequantize(q2, qtype, 512)[perm])


@pytest.mark.parametrize("qtype", sorted(SUPPORTED))
def test_learned_codes_write_back_what_torch_multiplies(qtype):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((6, 512)) * 0.05).astype(np.float32)
    q = quantize(w, qtype)
    perm = np.array([2, 0, 5, 1, 4, 3])
    qw = QuantWeight(unpack(q, qtype), 6, 512, perm, learn_codes=True)
    with torch.no_grad():
        assert np.array_equal(qw().numpy(), dequantize(q, qtype, 512)[perm])       # the file's codes to start
        qw.lat.add_(torch.from_numpy(rng.uniform(-1.5, 1.5, qw.lat.shape).astype(np.float32)))
        qw.clamp_()
        q2 = pack(qw.fields(unpack(q, qtype)), q, codes=True).reshape(q.shape)
        assert np.array_equal(qw().numpy(), dequantize(q2, qtype, 512)[perm])
    assert (unpack(q2, qtype).codes != unpack(q, qtype).codes).mean() > 0.3


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q5_0"])
def test_low_memory_layers_give_the_same_outputs_and_gradients(qtype):
    # low_memory (the model's float weights over float_mb): the matrix is rebuilt in backward, not kept
    rng = np.random.default_rng(2)
    q = quantize((rng.standard_normal((64, 512)) * 0.05).astype(np.float32), qtype)
    x0, b0, ids = torch.randn(3, 5, 512), torch.randn(64), torch.tensor([[1, 7, 63, 7]])
    got = []
    for low in (False, True):
        qw = QuantWeight(unpack(q, qtype), 64, 512, None)
        qw.low_memory = low
        lin, emb = QuantLinear(qw, torch.nn.Parameter(b0.clone())), QuantEmbedding(qw)
        x = x0.clone().requires_grad_(True)
        y = lin(x)
        (y.square().sum() + emb(ids).sum()).backward()
        got.append([y.detach(), x.grad, lin.bias.grad] + [p.grad for p in qw.parameters() if p.requires_grad])
    for a, b in zip(*got):
        assert torch.equal(a, b)
