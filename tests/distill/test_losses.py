"""Each loss against a direct reference computation (float64, from probabilities), the chunked head
against the plain full-logits computation (values and gradients), masks, T², and the top-k buckets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimedge.distill.losses import LossSpec, chunked_head_loss, divergence, feature_loss, topk_buckets

torch.manual_seed(0)


def _logits(n=6, v=11, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=torch.float64) * scale


def _ref_kl(p, q):  # rows of probabilities
    return (p * (p.log() - q.log())).sum(-1)


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd", "skl", "srkl"])
def test_divergence_matches_reference(kind):
    t, s = _logits(seed=1), _logits(seed=2)
    p, q = t.softmax(-1), s.softmax(-1)
    beta, lam = 0.3, 0.2
    ref = {
        "fkl": _ref_kl(p, q),
        "rkl": _ref_kl(q, p),
        "jsd": beta * _ref_kl(p, beta * p + (1 - beta) * q) + (1 - beta) * _ref_kl(q, beta * p + (1 - beta) * q),
        "skl": _ref_kl(p, lam * p + (1 - lam) * q),
        "srkl": _ref_kl(q, lam * q + (1 - lam) * p),
    }[kind]
    got = divergence(t.log_softmax(-1), s.log_softmax(-1), kind, beta=beta, skew=lam)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    if kind == "fkl":  # and torch's own KL
        torch.testing.assert_close(got, F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True,
                                                 reduction="none").sum(-1))


def test_divergences_vanish_on_equal_distributions_and_are_positive():
    t = _logits(seed=3).log_softmax(-1)
    s = _logits(seed=4).log_softmax(-1)
    for kind in ("fkl", "rkl", "jsd", "skl", "srkl"):
        assert divergence(t, t, kind).abs().max() < 1e-12
        assert (divergence(t, s, kind) > 0).all()


def test_zero_probabilities_give_finite_values_and_gradients():
    # a teacher putting exactly zero mass on some tokens (top-k style): 0·log 0 must not poison anything
    t = torch.tensor([[0.0, -1e30, -0.5, -2.0]], dtype=torch.float64).log_softmax(-1)
    t[0, 1] = float("-inf")
    s = _logits(1, 4, seed=5).requires_grad_(True)
    for kind in ("fkl", "jsd", "skl"):
        d = divergence(t, s.log_softmax(-1), kind).sum()
        (g,) = torch.autograd.grad(d, s)
        assert torch.isfinite(d) and torch.isfinite(g).all(), kind


def test_temperature_scaling_t_squared():
    t, s = _logits(seed=6).float(), _logits(seed=7).float()
    labels = torch.randint(0, 11, (6,))
    T = 2.5
    kd, _ = LossSpec("fkl", alpha=0.0, temperature=T).position_losses(s, labels, lambda: ((t / T).log_softmax(-1),
                                                                                          None, None))
    ref = T * T * _ref_kl((t.double() / T).softmax(-1), (s.double() / T).softmax(-1))
    torch.testing.assert_close(kd.double(), ref, rtol=1e-5, atol=1e-6)


def test_topk_buckets_full_vocab_equals_full_and_tail_is_rest_mass():
    t, s = _logits(seed=8).log_softmax(-1), _logits(seed=9).log_softmax(-1)
    V = t.shape[-1]
    top, ids = t.topk(V, -1)
    tb, sb = topk_buckets(s, ids, top, None)
    torch.testing.assert_close(divergence(tb, sb), divergence(t, s))
    k = 4
    top, ids = t.topk(k, -1)
    rest = torch.ones_like(t, dtype=torch.bool).scatter(-1, ids, False)
    t_tail = (t.exp() * rest).sum(-1).log()
    tb, sb = topk_buckets(s, ids, top, t_tail)
    assert tb.shape == (t.shape[0], k + 1)
    torch.testing.assert_close(sb[:, -1].exp(), (s.exp() * rest).sum(-1))
    torch.testing.assert_close(tb.exp().sum(-1), torch.ones(t.shape[0], dtype=t.dtype))
    ref = _ref_kl(torch.cat([top.exp(), t_tail.exp()[:, None]], -1),
                  torch.cat([s.exp().gather(-1, ids), (s.exp() * rest).sum(-1, keepdim=True)], -1))
    torch.testing.assert_close(divergence(tb, sb), ref)


def _reference_head_loss(hidden, W, labels, mask, t_logits, spec):
    """The plain computation: full logits of both models, per-position losses, masked sum."""
    T = spec.temperature
    s_logits = (hidden @ W.t()).float()                        # [B, S, V]
    s_logp1 = s_logits.log_softmax(-1)
    ce = -s_logp1.gather(-1, labels[..., None])[..., 0]
    kd = divergence((t_logits / T).log_softmax(-1).reshape(-1, W.shape[0]),
                    (s_logits / T).log_softmax(-1).reshape(-1, W.shape[0]), spec.kind, spec.beta,
                    spec.skew).reshape(labels.shape) * T * T
    return ((spec.kd_w * kd + spec.ce_w * ce) * mask).sum()


@pytest.mark.parametrize("kind,alpha,T", [("fkl", 0.0, 1.0), ("fkl", 0.4, 1.0), ("fkl", 0.3, 2.0), ("rkl", 0.3, 2.0),
                                          ("jsd", 0.5, 1.0), ("skl", 0.1, 1.5), ("srkl", 1.0, 1.0)])
@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("closed_form", [True, False])
def test_chunked_head_loss_equals_unchunked(kind, alpha, T, chunk, closed_form):
    g = torch.Generator().manual_seed(11)
    B, S, H, V = 2, 7, 8, 13
    hidden = torch.randn(B, S, H, generator=g, requires_grad=True)
    W = torch.randn(V, H, generator=g, requires_grad=True)
    t_logits = torch.randn(B, S, V, generator=g) * 2
    labels = torch.randint(0, V, (B, S), generator=g)
    mask = torch.ones(B, S)
    mask[0, :3] = 0  # prompt positions
    mask[1, 5:] = 0  # padding
    spec = LossSpec(kind, alpha=alpha, temperature=T, beta=0.4, skew=0.2)

    def teacher_chunk(s0, s1):
        return (t_logits[:, s0:s1] / T).log_softmax(-1).reshape(-1, V), None, None

    loss, sums = chunked_head_loss(hidden, W, labels, mask, spec, chunk, teacher_chunk, closed_form=closed_form)
    gh, gw = torch.autograd.grad(loss * 0.7, [hidden, W])
    ref = _reference_head_loss(hidden, W, labels, mask, t_logits, spec)
    rh, rw = torch.autograd.grad(ref * 0.7, [hidden, W])
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, rh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sums[0], loss.detach())
    # masked positions contribute nothing: changing their labels/teacher changes neither value nor gradient
    assert gh[0, :3].abs().max() == 0 and gh[1, 5:].abs().max() == 0


def test_closed_form_from_full_vocab_topk_matches_live():
    g = torch.Generator().manual_seed(12)
    B, S, H, V = 2, 5, 8, 9
    hidden = torch.randn(B, S, H, generator=g, requires_grad=True)
    W = torch.randn(V, H, generator=g, requires_grad=True)
    t_logp = (torch.randn(B, S, V, generator=g) * 2).log_softmax(-1)
    labels = torch.randint(0, V, (B, S), generator=g)
    spec = LossSpec("fkl", alpha=0.25)
    full = lambda s0, s1: (t_logp[:, s0:s1].reshape(-1, V), None, None)  # noqa: E731

    def topk(s0, s1):
        top, ids = t_logp[:, s0:s1].reshape(-1, V).topk(V, -1)
        return top, ids, None

    outs = []
    for fn, cf in ((full, True), (topk, True), (topk, False)):
        loss, _ = chunked_head_loss(hidden, W, labels, torch.ones(B, S), spec, 2, fn, closed_form=cf)
        outs.append((loss, *torch.autograd.grad(loss, [hidden, W])))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_head_loss_under_no_grad_needs_no_gradients():
    hidden = torch.randn(1, 4, 8)
    W = torch.nn.Parameter(torch.randn(5, 8))
    with torch.no_grad():
        loss, _ = chunked_head_loss(hidden, W, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4),
                                    LossSpec(alpha=1.0), 2)
    ref = -(hidden @ W.t()).log_softmax(-1)[..., 0].sum()
    torch.testing.assert_close(loss, ref.detach())
    assert W.grad is None


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_loss_with_projection_and_mask(kind):
    g = torch.Generator().manual_seed(3)
    s = [torch.randn(2, 5, 6, generator=g) for _ in range(2)]
    t = [torch.randn(2, 5, 10, generator=g) for _ in range(2)]
    proj = [torch.nn.Linear(6, 10, bias=False) for _ in range(2)]
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.float32)
    got = feature_loss(s, t, proj, mask, kind)
    ref = 0.0
    for si, ti, p in zip(s, t, proj):
        a = p(si).double()
        b = ti.double()
        for bi in range(2):
            for pos in range(5):
                if mask[bi, pos]:
                    x, y = a[bi, pos], b[bi, pos]
                    ref += ((x - y) ** 2).mean() if kind == "mse" else 1 - (x @ y) / (x.norm() * y.norm())
    torch.testing.assert_close(got.double(), ref / 2, rtol=1e-5, atol=1e-6)
    same = feature_loss(t, t, None, mask, kind)
    assert abs(float(same)) < 1e-5
