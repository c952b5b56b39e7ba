"""``slimedge tune --mode blockwise``: block-wise reconstruction with learned rounding (slimedge.tune.blockwise).

Checked: a QuantWeight's learned rounding starts at the round-to-nearest codes of the float matrix and its codes are
written back through blockfields' code map (fast); on a tiny Llama quantized Q4_K_M, block-wise tuning lowers every
layer's output error and the KL divergence through llama.cpp against the F32 file, keeps the tensor types and the
byte size, and llama.cpp loads and runs it; an interrupted run resumes to the same bytes; the bad uses are one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.distill.distill_kit import corpus_text
from tests.factory import cached_hf_model

from slimedge.convert import convert
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.quant import dequantize, quantize
from slimedge.quant.blockfields import pack, unpack
from slimedge.quant.mixes import QuantSpec


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("blockwise")
    hf = cached_hf_model(arch="llama", kquant=True)
    text = corpus_text(60_000)
    (d / "train.txt").write_text(text[:40_000])
    (d / "held.txt").write_text(text[40_000:])
    convert(hf, d / "q4km.gguf", QuantSpec("Q4_K_M"), overwrite=True)
    return hf, d, d / "q4km.gguf"


def _tune(hf, d, q, out, **kw):
    from slimedge.tune import TuneConfig, tune

    cfg = TuneConfig(gguf=str(q), teacher=str(hf), data=str(d / "train.txt"), output=str(out), seq_len=64,
                     batch_size=4, threads=1, overwrite=True, eval_blocks=4,
                     **{"mode": "blockwise", "steps": 0, "block_iters": 40, "block_samples": 16, **kw})
    return tune(cfg)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_0", "Q6_K", "IQ4_NL", "IQ4_XS"])
def test_rounding_starts_at_nearest_codes_and_packs_back(qtype):
    from slimedge.tune.modules import QuantWeight

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    raw = quantize(w, qtype).reshape(4, -1)
    fields = unpack(raw, qtype)
    qw = QuantWeight(fields, 4, 256, None)
    file_w = qw().detach().numpy()
    qw.begin_rounding(torch.from_numpy(w))
    with torch.no_grad():
        qw.v.fill_(0.0)
        start = qw().numpy()
    # v = 0: round to nearest of w / scale, no farther from w than the file's own codes allow
    assert np.abs(start - w).max() <= np.abs(file_w - w).max() + 1e-6
    with torch.no_grad():
        qw.v.fill_(0.49)  # every code one step up where rounding allows
    qw.end_rounding()
    assert qw.v is None and qw.w_ref is None and qw.new_codes
    got = dequantize(pack(qw.fields(fields), raw.copy(), codes=True).reshape(4, -1), qtype, 256).reshape(4, 256)
    assert np.array_equal(got, qw().detach().numpy())
    assert not np.array_equal(got, file_w)


@pytest.mark.parametrize("with_min", [True, False])
def test_rounded_weight_is_autograd_of_the_straight_through_formula(with_min):
    """RoundedWeight's one-pass forward and backward equal autograd on the plain formula: straight-through
    rounding, the clamp's true gradient; a zero scale keeps the file's code."""
    from slimedge.tune.modules import RoundedWeight, _rounded

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 32, generator=g, dtype=torch.float64)
    scale = (torch.rand(6, 4, generator=g, dtype=torch.float64) * 0.3 + 0.05).requires_grad_()
    off = (-torch.rand(6, 4, generator=g, dtype=torch.float64)).requires_grad_() if with_min else None
    v = (torch.rand(6, 4, 32, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    codes, rng = torch.zeros(6, 4, 32, dtype=torch.int8), (0, 15) if with_min else (-8, 7)
    up = torch.randn(6, 4, 32, generator=g, dtype=torch.float64)

    got = RoundedWeight.apply(w, v, scale, off, codes, rng)
    grads = torch.autograd.grad((got * up).sum(), [t for t in (v, scale, off) if t is not None])
    o = off[:, :, None] if off is not None else 0.0
    t = (w - o) / scale[:, :, None] + v
    q = (t + (t.round() - t).detach()).clamp(*rng)
    ref = q * scale[:, :, None] + o
    want = torch.autograd.grad((ref * up).sum(), [t for t in (v, scale, off) if t is not None])
    assert torch.equal(got.detach(), ref.detach())
    assert 0 < int(((t.round() < rng[0]) | (t.round() > rng[1])).sum()) < t.numel()  # the clamp binds somewhere
    for a, b in zip(grads, want):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)

    with torch.no_grad():
        scale[1, 2] = 0.0
    codes[1, 2] = 5
    z = RoundedWeight.apply(w, v, scale, off, codes, rng)
    assert torch.equal(z[1, 2], (off[1, 2] if off is not None else torch.tensor(0.0, dtype=w.dtype)).expand(32))
    assert torch.all(_rounded(w, v, scale, off, codes, rng)[0][1, 2] == 5)  # the codes written back: the file's


def test_grid_rounding_is_the_nearest_level_and_its_gradient_the_tables_slope():
    """IQ4's learned rounding on its table: with v = 0 the level nearest to ``w / scale``; the offsets move the
    fractional index (a half step to the next level); the gradient is the interpolated table's slope times the
    scale inside the table, zero past its ends; a zero scale keeps the file's code."""
    from slimedge.quant.iq4 import KVALUES, best_index
    from slimedge.tune.modules import grid_rounded

    grid = torch.tensor(KVALUES.tolist(), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    scale = (torch.rand(5, 2, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    w = torch.randn(5, 2, 32, generator=g, dtype=torch.float64) * 80 * scale.detach()[:, :, None]
    w[0, 0, :4] = torch.tensor([-400.0, -127.0, 113.0, 400.0]) * scale.detach()[0, 0]   # at and past both ends
    codes = torch.zeros(5, 2, 32, dtype=torch.int8)
    v = torch.zeros(5, 2, 32, dtype=torch.float64, requires_grad=True)
    q, lv = grid_rounded(w, v, scale, codes, grid)
    y = (w / scale[:, :, None]).detach().numpy()
    assert np.array_equal(q.numpy(), best_index(y.astype(np.float32)))     # ggml's nearest level
    assert torch.equal(lv.detach(), grid[q])
    up = torch.randn(5, 2, 32, generator=g, dtype=torch.float64)
    gv, = torch.autograd.grad((lv * scale.detach()[:, :, None] * up).sum(), [v])
    t = torch.as_tensor(np.interp(y, KVALUES.astype(np.float64), np.arange(16.0)))     # inside: the index
    j = t.floor().clamp(0, 14).long()
    slope = grid[j + 1] - grid[j]
    inside = (y > KVALUES[0]) & (y < KVALUES[15])
    want = torch.where(torch.from_numpy(inside), slope * scale.detach()[:, :, None] * up, torch.zeros_like(up))
    assert bool(inside.any()) and not bool(inside.all())
    assert torch.allclose(gv, want, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        q2 = grid_rounded(w, torch.full_like(v, 0.49), scale, codes, grid)[0]
    frac, ins = t - t.round(), torch.from_numpy(inside)
    up1, same = ins & (frac > 0.05), ins & (frac < -0.05)              # +0.49 crosses the next midpoint or not
    assert bool(up1.any()) and bool(same.any())
    assert torch.equal(q2[up1], q[up1] + 1) and torch.equal(q2[same], q[same])
    with torch.no_grad():
        scale[1, 1] = 0.0
    codes[1, 1] = 9
    q3, lv3 = grid_rounded(w, v, scale, codes, grid)
    assert torch.all(q3[1, 1] == 9) and torch.all(lv3[1, 1] == grid[9])


def _kernel_and_torch(run):
    """``run()`` through the C kernels, then through the torch path; the backend is restored after. The kernels
    must be built (set_backend("c") fails otherwise), whatever SLIMEDGE_PUREPYTHON says."""
    from slimedge.quant import backend

    before = backend.backend_name()
    try:
        backend.set_backend("c")
        on_c = run()
        backend.set_backend("numpy")
        return on_c, run()
    finally:
        backend.set_backend(before)


@pytest.mark.parametrize("with_min", [True, False])
def test_rounded_weight_kernel_matches_the_torch_path(with_min):
    """The C kernels' learned rounding (kernels/rounding.c): the torch path's weight bit for bit, its gradients
    to float rounding (sums in another order), zero scales and binding clamps included."""
    from slimedge.tune.modules import RoundedWeight

    g = torch.Generator().manual_seed(1)
    nb, ns, k = 300, 8, 32  # more than one thread chunk
    w = torch.randn(nb, ns, k, generator=g)
    scale = torch.rand(nb, ns, generator=g) * 0.3 + 0.02
    scale[3, 1] = 0.0
    off = -torch.rand(nb, ns, generator=g) if with_min else None
    v = torch.rand(nb, ns, k, generator=g) - 0.5
    codes = torch.randint(0, 15, (nb, ns, k), generator=g, dtype=torch.int8)
    rng, up = ((0, 15) if with_min else (-8, 7)), torch.randn(nb, ns, k, generator=g)

    def run():
        leaves = [t.clone().requires_grad_() for t in (v, scale) + ((off,) if with_min else ())]
        out = RoundedWeight.apply(w, leaves[0], leaves[1], leaves[2] if with_min else None, codes, rng)
        return out.detach(), torch.autograd.grad((out * up).sum(), leaves)

    (c_w, c_g), (t_w, t_g) = _kernel_and_torch(run)
    assert torch.equal(c_w, t_w)
    for a, b in zip(c_g, t_g):  # the scale's gradient is a difference of two sums of ~k terms each
        assert float((a - b).abs().max()) <= 1e-5 * k * float(b.abs().max()), float((a - b).abs().max())
    assert bool((c_g[0] == 0).any()) and bool((c_g[0] != 0).any())  # clamped and free weights both present


def test_rounded_weight_kernel_under_bf16_autocast():
    """Under CPU bf16 autocast the kernels write the weight in bf16 (the torch path's fp32 weight rounded as torch
    casts it) and take its gradient in bf16; a product through it matches the torch path's."""
    from slimedge.tune.modules import RoundedWeight

    g = torch.Generator().manual_seed(2)
    w, v = torch.randn(64, 8, 32, generator=g), torch.rand(64, 8, 32, generator=g) - 0.5
    scale, off = torch.rand(64, 8, generator=g) * 0.3 + 0.02, -torch.rand(64, 8, generator=g)
    codes, x = torch.zeros(64, 8, 32, dtype=torch.int8), torch.randn(16, 256, generator=g)

    def run():
        leaves = [t.clone().requires_grad_() for t in (v, scale, off)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            wt = RoundedWeight.apply(w, leaves[0], leaves[1], leaves[2], codes, (0, 15))
            y = torch.nn.functional.linear(x, wt.reshape(64, 256))
        return wt.detach(), torch.autograd.grad(y.float().square().sum(), leaves)

    (c_w, c_g), (t_w, t_g) = _kernel_and_torch(run)
    assert c_w.dtype == torch.bfloat16 and t_w.dtype == torch.float32
    assert torch.equal(c_w, t_w.to(torch.bfloat16))
    for a, b in zip(c_g, t_g):
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-2 * float(b.abs().max()))


@pytest.mark.slow
def test_blockwise_lowers_layer_errors_and_llama_cpp_kl(model, tmp_path):
    from tests.convert.convert_util import llama_logits
    from transformers import AutoTokenizer

    hf, d, q = model
    out = tmp_path / "bw.gguf"
    r = _tune(hf, d, q, out, block_opt="adam")  # Adam: on this tiny random model sign lowers llama.cpp's KL ~4.5%
    assert len(r.block_errors) == 2 and all(e1 < 0.9 * e0 for e0, e1 in r.block_errors), r.block_errors
    assert r.kl_after < r.kl_before, r
    a, b = read_info(q), read_info(out)
    assert b.file_size == a.file_size and [(t.name, t.shape, t.type) for t in a.tensors] == \
        [(t.name, t.shape, t.type) for t in b.tensors]
    assert a.metadata == b.metadata and out.read_bytes() != q.read_bytes()
    f32 = tmp_path / "f32.gguf"
    convert(hf, f32, QuantSpec("F32"), overwrite=True)
    ids = AutoTokenizer.from_pretrained(hf)((d / "held.txt").read_text()[:3000])["input_ids"]
    chunks = [ids[i:i + 64] for i in range(0, 256, 64)]  # held-out text, llama_logits' 64-token context

    def kl(path):
        tot = 0.0
        for tokens in chunks:
            p, s = (torch.log_softmax(torch.from_numpy(llama_logits(x, tokens)).double(), -1) for x in (f32, path))
            tot += float((p.exp() * (p - s)).sum(-1).mean())
        return tot / len(chunks)

    k_plain, k_tuned = kl(q), kl(out)
    assert k_tuned < 0.95 * k_plain, (k_plain, k_tuned)


@pytest.mark.slow
def test_blockwise_resumes_to_the_same_bytes(model, tmp_path, monkeypatch):
    import slimedge.tune.blockwise as bw

    hf, d, q = model
    whole = tmp_path / "whole.gguf"
    _tune(hf, d, q, whole, block_iters=10)
    real = bw.tune_layer

    def dies_at_layer_1(i, *a):
        if i == 1:
            raise KeyboardInterrupt
        return real(i, *a)

    out = tmp_path / "resumed.gguf"
    monkeypatch.setattr(bw, "tune_layer", dies_at_layer_1)
    with pytest.raises(KeyboardInterrupt):
        _tune(hf, d, q, out, block_iters=10)
    ckpt = tmp_path / ".resumed.gguf.blockwise-checkpoint"
    assert not out.exists() and sorted(p.name for p in ckpt.iterdir()) == ["layer-0000.pt"]
    calls = []
    monkeypatch.setattr(bw, "tune_layer", lambda i, *a: calls.append(i) or real(i, *a))
    _tune(hf, d, q, out, block_iters=10, resume=True)
    assert calls == [1] and out.read_bytes() == whole.read_bytes()
    assert not ckpt.exists()


def test_blockwise_bad_uses_are_one_line(model, tmp_path):
    hf, d, q = model
    for kw, what in ((dict(mode="layers"), "--mode layers"), (dict(warm_steps=2), "--mode blockwise needs"),
                     (dict(fsdp_teacher=True), "--mode blockwise needs")):
        with pytest.raises(SlimedgeError, match=what):
            _tune(hf, d, q, tmp_path / "x.gguf", **kw)


def test_block_input_picks_what_the_layer_is_tuned_on():
    """--block-input: the error of the quantized layer on its own inputs, on the teacher's, or the mean of both."""
    import torch

    from slimedge.tune import TuneConfig
    from slimedge.tune.blockwise import _batch_loss

    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8)
    xt, xq = torch.randn(6, 5, 8), torch.randn(6, 5, 8)
    y = torch.randn(6, 5, 8)
    idx = torch.tensor([0, 2, 5])

    def err(x):
        return float(((lin(x[idx]) - y[idx]) ** 2).mean().detach())

    def loss(block_input):
        cfg = TuneConfig(gguf="", teacher="", data="", output="", block_input=block_input)
        return float(_batch_loss(lambda x, **kw: lin(x), xt, xq, y, idx, {}, cfg, 2.0).detach())

    got = {b: loss(b) for b in ("quant", "teacher", "mix")}
    assert got["quant"] == pytest.approx(2 * err(xq)) and got["teacher"] == pytest.approx(2 * err(xt))
    assert got["mix"] == pytest.approx(err(xq) + err(xt)) and got["quant"] != got["teacher"]


@pytest.mark.slow
def test_block_input_and_batch_reach_the_tuning(model, tmp_path):
    """The teacher's inputs and smaller step batches are other runs of the same contract: every layer's error falls,
    the types and bytes stay; the first layer (same inputs either way) starts from the same error."""
    hf, d, q = model
    base = _tune(hf, d, q, tmp_path / "quant.gguf", block_iters=20)
    for kw in (dict(block_input="teacher"), dict(block_input="mix"), dict(block_batch=2)):
        r = _tune(hf, d, q, tmp_path / "other.gguf", block_iters=20, **kw)
        assert r.block_errors[0][0] == base.block_errors[0][0], kw
        assert all(e1 < e0 for e0, e1 in r.block_errors), (kw, r.block_errors)
        assert (tmp_path / "other.gguf").read_bytes() != (tmp_path / "quant.gguf").read_bytes(), kw
        assert read_info(tmp_path / "other.gguf").file_size == read_info(q).file_size


@pytest.mark.slow
def test_signed_descent_lowers_every_layer_error(model, tmp_path):
    """--block-opt sign (AutoRound's signed gradient descent, the default): every layer's output error falls from
    the same start as Adam's, to other codes than Adam's, with the same tensor types and bytes."""
    hf, d, q = model
    sign = _tune(hf, d, q, tmp_path / "sign.gguf", block_iters=20)
    adam = _tune(hf, d, q, tmp_path / "adam.gguf", block_iters=20, block_opt="adam")
    assert sign.block_errors[0][0] == adam.block_errors[0][0]  # the same start (later layers: other inputs)
    assert all(e1 < e0 for e0, e1 in sign.block_errors), sign.block_errors
    assert (tmp_path / "sign.gguf").read_bytes() != (tmp_path / "adam.gguf").read_bytes()
    a, b = read_info(q), read_info(tmp_path / "sign.gguf")
    assert b.file_size == a.file_size and [(t.name, t.shape, t.type) for t in a.tensors] == \
        [(t.name, t.shape, t.type) for t in b.tensors]


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["IQ4_XS", "IQ4_NL"])
def test_blockwise_learns_rounding_on_the_iq4_table(model, tmp_path, qtype):
    """IQ4_XS / IQ4_NL files: block-wise tuning learns the table indices too (codes change in the IQ4 tensors),
    every layer's error falls, types and bytes stay, and llama.cpp runs the file."""
    import gguf
    from tests.convert.convert_util import llama_logits

    hf, d, _ = model
    q, out = tmp_path / f"{qtype}.gguf", tmp_path / "bw.gguf"
    convert(hf, q, QuantSpec(qtype), overwrite=True)
    r = _tune(hf, d, q, out, block_iters=20)
    assert all(e1 < e0 for e0, e1 in r.block_errors), r.block_errors
    a, b = read_info(q), read_info(out)
    assert b.file_size == a.file_size and [(t.name, t.type) for t in a.tensors] == [(t.name, t.type) for t in b.tensors]
    ra, rb = gguf.GGUFReader(q), gguf.GGUFReader(out)
    iq = [(x, y) for x, y in zip(ra.tensors, rb.tensors) if x.tensor_type.name == qtype and ".attn_q." in x.name]
    assert iq, [t.tensor_type.name for t in ra.tensors]
    moved = [float((unpack(np.array(x.data), qtype).codes != unpack(np.array(y.data), qtype).codes).mean())
             for x, y in iq]
    assert all(0.005 < m < 0.5 for m in moved), moved
    logits = llama_logits(out, list(range(1, 20)))
    assert np.isfinite(logits).all()


def test_calibration_blocks_are_spread_and_start_as_llama_cpp_contexts(model, tmp_path, monkeypatch):
    """The cached blocks are ``block_samples`` blocks spread over the whole training split (not its first ones) and,
    like the held-out blocks of the KL, start with the BOS that llama.cpp puts first in every context of this GGUF."""
    import llama_cpp

    from slimedge.distill.data import spread
    from slimedge.distill.runtime import load_teacher_meta
    from slimedge.distill.tokens import prepare
    from slimedge.tune import blockwise, teacher
    from slimedge.tune.model import first_token

    from slimedge.tune.modules import QuantLinear

    hf, d, q = model
    llm = llama_cpp.Llama(model_path=str(q), vocab_only=True, verbose=False)
    bos = first_token(read_info(q))
    assert llm._model.add_bos_token() and bos == llm.token_bos()
    seen, held = {True: [], False: []}, []
    real_input, real_lp = blockwise.first_layer_input, teacher.batch_logprobs

    def record(m, layers, x):
        seen[any(isinstance(mod, QuantLinear) for mod in m.modules())].append(x.clone())
        return real_input(m, layers, x)

    monkeypatch.setattr(blockwise, "first_layer_input", record)
    monkeypatch.setattr(teacher, "batch_logprobs", lambda m, h, *a: held.append(np.array(h)) or real_lp(m, h, *a))
    _tune(hf, d, q, tmp_path / "o.gguf", block_iters=1, block_samples=8)  # eval_blocks=4
    blocks = prepare(str(d / "train.txt"), load_teacher_meta(str(hf))[1], 64)
    want = np.asarray(blocks.train)[spread(len(blocks.train), 8)]
    want[:, 0] = bos
    assert len(blocks.train) > 16 and (torch.cat(seen[True]).numpy() == want).all()  # the quantized model's
    got = torch.cat(seen[False]).numpy()  # the streamed teacher's: the cached blocks, then the held-out ones
    assert (got[:8] == want).all() and len(got) == 12
    assert len(held) == 1 and (held[0] == got[8:]).all() and (held[0][:, 0] == bos).all()


def test_first_token_follows_llama_cpp_when_the_gguf_does_not_say():
    from types import SimpleNamespace

    from slimedge.tune.model import first_token

    def info(**md):
        return SimpleNamespace(metadata={"tokenizer.ggml.bos_token_id": 1, **md})

    assert first_token(info(**{"tokenizer.ggml.model": "llama"})) == 1  # SentencePiece: BOS unless told not to
    assert first_token(info(**{"tokenizer.ggml.model": "gpt2"})) is None
    assert first_token(info(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.add_bos_token": True})) == 1
    assert first_token(info(**{"tokenizer.ggml.model": "llama", "tokenizer.ggml.add_bos_token": False})) is None
    assert first_token(SimpleNamespace(metadata={"tokenizer.ggml.add_bos_token": True})) is None  # no BOS id
