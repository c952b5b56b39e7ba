"""Distillation losses: divergences between teacher and student, chunked over the sequence.

* :func:`divergence` — per-position divergence between two log-probability tensors ``[N, M]``
  (M = vocabulary, or k+1 buckets from the teacher cache): forward KL(t‖s), reverse KL(s‖t),
  generalized JSD(β) = β·KL(t‖m) + (1-β)·KL(s‖m) with m = β·t + (1-β)·s, skew forward
  KL(t‖λt+(1-λ)s) and skew reverse KL(s‖λs+(1-λ)t).
* :func:`topk_buckets` — folds a full student distribution onto the teacher's top-k ids plus one
  "tail" bucket, so a cached top-k teacher is compared exactly (exact when k covers the vocabulary).
* :func:`chunked_head_loss` — runs the output head and the loss ``chunk`` positions at a time and
  computes the gradient of each chunk on the spot (the way fused linear-cross-entropy kernels do; in
  closed form for forward KL, reverse KL and JSD), so
  neither model's full fp32 ``[batch, seq, vocab]`` logits ever exist; backward only scales the
  stored gradients of the hidden states and the head weight.
* :func:`feature_loss` — hidden-state MSE or cosine distance between mapped layers.
* :class:`HeadTransform` — what a family does to ``hidden · head weight`` before the softmax (Granite's
  ``logits_scaling``, Cohere's ``logit_scale``, Gemma 2/3's ``final_logit_softcapping``); every place that
  forms logits from hidden states applies the model's own, and the closed forms chain through it.

All functions return *sums* over counted positions; the caller divides by the token count.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


class HeadTransform:
    """logits = cap·tanh(scale·z/cap), or scale·z without a cap, of the head's z = h·Wᵀ.

    :meth:`from_config` reads a transformers config as its model's forward does: Granite divides by
    ``logits_scaling``, Cohere multiplies by ``logit_scale``, Gemma 2/3 soft-cap with
    ``final_logit_softcapping`` (the text config of a multimodal one).
    """

    def __init__(self, scale: float = 1.0, cap: float | None = None):
        self.scale, self.cap = float(scale), (float(cap) if cap else None)

    @classmethod
    def from_config(cls, config) -> "HeadTransform":
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        scale = 1.0
        if getattr(cfg, "logits_scaling", None):
            scale /= float(cfg.logits_scaling)
        if getattr(cfg, "logit_scale", None):
            scale *= float(cfg.logit_scale)
        return cls(scale, getattr(cfg, "final_logit_softcapping", None))

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.cap is None

    def __repr__(self) -> str:
        return f"HeadTransform(scale={self.scale}, cap={self.cap})"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """The transformed logits, out of place (differentiable)."""
        if self.cap is not None:
            return torch.tanh(z * (self.scale / self.cap)) * self.cap
        return z * self.scale if self.scale != 1.0 else z

    def apply_(self, z: torch.Tensor) -> torch.Tensor | float:
        """Transform ``z`` in place; returns dz'/dz (a tensor like z with a cap, else the scale)."""
        if self.cap is None:
            if self.scale != 1.0:
                z.mul_(self.scale)
            return self.scale
        t = z.mul_(self.scale / self.cap).tanh_()
        d = torch.square(t).neg_().add_(1.0).mul_(self.scale)        # scale·(1 - tanh²)
        t.mul_(self.cap)
        return d


IDENTITY = HeadTransform()


def head_logits(h: torch.Tensor, w: torch.Tensor, head: HeadTransform | None = None) -> torch.Tensor:
    """fp32 logits of hidden states ``h [..., H]`` through head weight ``w [V, H]`` and its transform."""
    z = (h @ w.t()).float()
    return z if head is None or head.identity else head(z)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) per row of ``[N, M]`` log-probabilities; 0·log0 terms are 0 and stay NaN-free in backward."""
    p = logp.exp()
    live = p > 0
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    lp = torch.where(live, logp, zero)
    lq = torch.where(live, logq, zero)
    return (p * (lp - lq)).sum(-1)


def _mix(loga: torch.Tensor, logb: torch.Tensor, wa: float) -> torch.Tensor:
    """log(wa·a + (1-wa)·b) from log a and log b, stably."""
    return torch.logaddexp(loga + math.log(wa), logb + math.log1p(-wa))


def divergence(t_logp: torch.Tensor, s_logp: torch.Tensor, kind: str = "fkl",
               beta: float = 0.5, skew: float = 0.1) -> torch.Tensor:
    """Per-row divergence ``[N]`` between teacher and student log-probabilities ``[N, M]``."""
    if kind == "fkl":
        return _kl(t_logp, s_logp)
    if kind == "rkl":
        return _kl(s_logp, t_logp)
    if kind == "jsd":
        m = _mix(t_logp, s_logp, beta)
        return beta * _kl(t_logp, m) + (1.0 - beta) * _kl(s_logp, m)
    if kind == "skl":
        return _kl(t_logp, _mix(t_logp, s_logp, skew))
    if kind == "srkl":
        return _kl(s_logp, _mix(s_logp, t_logp, skew))
    raise ValueError(f"unknown divergence {kind!r}")


def topk_buckets(s_logp: torch.Tensor, ids: torch.Tensor, t_top: torch.Tensor,
                 t_tail: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probs over the teacher's top-k ids (+ a tail bucket).

    s_logp [N, V] full student log-probs; ids [N, k] long; t_top [N, k]; t_tail [N] or None when
    k covers the vocabulary. Returns (t [N, k(+1)], s [N, k(+1)]).
    """
    s_top = s_logp.gather(-1, ids)
    if t_tail is None:
        return t_top, s_top
    s_rest = s_logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return torch.cat([t_top, t_tail[:, None]], -1), torch.cat([s_top, s_rest[:, None]], -1)


class LossSpec:
    """Weights and kind of the logit losses: total = kd_w·T²·div + ce_w·CE per counted position."""

    def __init__(self, kind: str = "fkl", alpha: float = 0.0, temperature: float = 1.0,
                 beta: float = 0.5, skew: float = 0.1):
        self.kind, self.temperature, self.beta, self.skew = kind, float(temperature), beta, skew
        self.ce_w = float(alpha)
        self.kd_w = 1.0 - float(alpha)

    def position_losses(self, s_logits: torch.Tensor, labels: torch.Tensor,
                        teacher: Callable[[], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(kd [N], ce [N]) for student logits [N, V] (fp32) and labels [N].

        ``teacher()`` returns (t_logp [N, M], ids [N, k] or None, tail [N] or None) at this spec's
        temperature; it is only called when the KD weight is non-zero.
        """
        T = self.temperature
        s_logp1 = F.log_softmax(s_logits, -1)
        ce = -s_logp1.gather(-1, labels[:, None])[:, 0] if self.ce_w else s_logits.new_zeros(labels.shape)
        if not self.kd_w or teacher is None:
            return s_logits.new_zeros(labels.shape), ce
        s_logp = s_logp1 if T == 1.0 else F.log_softmax(s_logits / T, -1)
        t_logp, ids, tail = teacher()
        if ids is not None:
            t_logp, s_logp = topk_buckets(s_logp, ids, t_logp, tail)
        return divergence(t_logp, s_logp, self.kind, self.beta, self.skew) * (T * T), ce


def fkl_ce_with_grad(z: torch.Tensor, labels: torch.Tensor, m: torch.Tensor, spec: LossSpec,
                     t_logp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward KL (+ CE) with its gradient in closed form, in place, no autograd graph.

    z [N, V] fp32 student logits (overwritten); labels [N]; m [N] mask; t_logp [N, V] teacher
    log-probs at T (None: CE only). d(T²·KL(p‖softmax(z/T)))/dz = T·(q_T - p) and
    d(CE)/dz = softmax(z) - onehot. Returns (kd sum, ce sum, G = d(loss sum)/dz [N, V]).
    """
    T, kw, cw = spec.temperature, spec.kd_w, spec.ce_w
    use_kd = kw > 0 and t_logp is not None
    rows = torch.arange(z.shape[0], device=z.device)
    kd = ce = z.new_zeros(())
    lse1 = torch.logsumexp(z, -1)                                        # [N]
    if cw:
        ce = ((lse1 - z[rows, labels]) * m).sum()
    if use_kd:
        p = t_logp.exp()
        zt = z if T == 1.0 else z / T
        lse_t = lse1 if T == 1.0 else torch.logsumexp(zt, -1)
        # KL rows = sum p·log p - sum p·z/T + lse_T·sum p  (row dot products, no [N, V] temporaries)
        kl = (torch.einsum("nv,nv->n", p, t_logp) - torch.einsum("nv,nv->n", p, zt)
              + lse_t * p.sum(-1))
        kd = (kl * m).sum() * (T * T)
        if T == 1.0:
            G = z.sub_(lse1[:, None]).exp_().mul_(kw + cw).sub_(p, alpha=kw)  # (kw+cw)·q - kw·p
        else:
            G = zt.sub_(lse_t[:, None]).exp_().sub_(p).mul_(T * kw)          # T·kw·(q_T - p)
            if cw:
                G.add_(z.sub_(lse1[:, None]).exp_(), alpha=cw)
        del p
    else:
        G = z.sub_(lse1[:, None]).exp_().mul_(cw)
    if cw:
        G[rows, labels] -= cw
    G.mul_(m[:, None])
    return kd, ce, G


def rkl_jsd_ce_with_grad(z: torch.Tensor, labels: torch.Tensor, m: torch.Tensor, spec: LossSpec,
                         t_logp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reverse KL or generalized JSD(β) (+ CE) with its gradient in closed form, like :func:`fkl_ce_with_grad`.

    With s = softmax(z/T), a = log s and the row-wise d: reverse KL d = a - log t; JSD d = a - log m with
    m = β·t + (1-β)·s. Then d(T²·KL(s‖t))/dz = T·s⊙(d - <s, d>) and d(T²·JSD)/dz = T·(1-β)·s⊙(d - <s, d>)
    (the terms from m's own dependence on s cancel). Returns (kd sum, ce sum, G [N, V]).
    """
    if spec.kind not in ("rkl", "jsd"):
        raise ValueError(f"no closed form for {spec.kind!r}")
    T, kw, cw = spec.temperature, spec.kd_w, spec.ce_w
    use_kd = kw > 0 and t_logp is not None
    rows = torch.arange(z.shape[0], device=z.device)
    kd = ce = z.new_zeros(())
    lse1 = torch.logsumexp(z, -1)
    if cw:
        ce = ((lse1 - z[rows, labels]) * m).sum()
    G = None
    if use_kd:
        a = (z / T) if T != 1.0 else z.clone()
        a.sub_(torch.logsumexp(a, -1, keepdim=True))                        # log s_T
        s = a.exp()
        if spec.kind == "rkl":
            d = a - t_logp
            rows_kd = (s * d).sum(-1)
            scale = T * kw
        else:
            beta = spec.beta
            d = torch.logaddexp(t_logp + math.log(beta), a + math.log1p(-beta))  # log m
            tp = t_logp.exp()
            rows_kd = beta * torch.where(tp > 0, tp * (t_logp - d), 0.0).sum(-1)
            del tp
            d.neg_().add_(a)                                                   # a - log m
            sd = (s * d).sum(-1)
            rows_kd = rows_kd + (1.0 - beta) * sd
            scale = T * kw * (1.0 - beta)
        del a
        inner = (s * d).sum(-1, keepdim=True)
        G = d.sub_(inner).mul_(s).mul_(scale)
        del s
        kd = (rows_kd * m).sum() * (T * T)
    if cw:
        q = z.sub_(lse1[:, None]).exp_().mul_(cw)
        q[rows, labels] -= cw
        G = q if G is None else G.add_(q)
    elif G is None:
        G = z.zero_()
    G.mul_(m[:, None])
    return kd, ce, G


class _ChunkedHead(torch.autograd.Function):
    """Loss of a linear head applied chunk by chunk; gradients are computed in forward, per chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, chunk_fn, chunk, fast_fn=None):  # type: ignore[override]
        # hidden [B, S, H], weight [V, H]; chunk_fn(h [B, c, H], w [V, H], s0, s1) -> (loss, kd, ce) sums
        g_hidden = torch.zeros_like(hidden) if hidden.requires_grad else None
        g_weight = torch.zeros_like(weight) if weight.requires_grad else None
        sums = torch.zeros(3, dtype=torch.float32, device=hidden.device)
        for s0 in range(0, hidden.shape[1], chunk):
            s1 = min(s0 + chunk, hidden.shape[1])
            if fast_fn is not None:  # closed-form gradient of the logits: no graph, few [N, V] buffers
                h = hidden[:, s0:s1]
                loss, kd, ce, G = fast_fn(h, weight, s0, s1)                 # G [B·c, V]
                if g_hidden is not None:
                    g_hidden[:, s0:s1] = (G @ weight.to(G.dtype)).reshape(h.shape).to(g_hidden.dtype)
                if g_weight is not None:
                    g_weight.addmm_(G.t(), h.reshape(-1, h.shape[-1]).to(G.dtype))
                del G
            else:
                with torch.enable_grad():
                    h = hidden[:, s0:s1].detach().requires_grad_(hidden.requires_grad)
                    w = weight.detach().requires_grad_(weight.requires_grad)
                    loss, kd, ce = chunk_fn(h, w, s0, s1)
                    wrt = [x for x in (h, w) if x.requires_grad]
                    grads = iter(torch.autograd.grad(loss, wrt) if wrt and loss.requires_grad else ())
                if g_hidden is not None:
                    g_hidden[:, s0:s1] = next(grads, 0.0)
                if g_weight is not None:
                    g_weight += next(grads, 0.0)
            sums += torch.stack([loss.detach().float(), kd.detach().float(), ce.detach().float()])
        ctx.save_for_backward(*(g for g in (g_hidden, g_weight) if g is not None))
        ctx.has = (g_hidden is not None, g_weight is not None)
        ctx.mark_non_differentiable(sums)
        return sums[0].clone(), sums

    @staticmethod
    def backward(ctx, g_loss, _g_sums):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        gh = gw = None
        if ctx.has[0]:
            g = saved.pop(0)
            gh = g * g_loss.to(g.dtype)
        if ctx.has[1]:
            g = saved.pop(0)
            gw = g * g_loss.to(g.dtype)
        return gh, gw, None, None, None


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      mask: torch.Tensor, spec: LossSpec, chunk: int,
                      teacher_chunk: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None,
                                                                torch.Tensor | None]] | None = None,
                      closed_form: bool = True, head: HeadTransform | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over counted positions, computed ``chunk`` positions at a time.

    hidden [B, S, H] student final hidden states at the predicting positions; weight [V, H] the
    student head; labels [B, S] next tokens; mask [B, S] 1 where the position counts;
    ``teacher_chunk(s0, s1)`` gives the teacher's (log-probs [B·c, M], ids [B·c, k] | None,
    tail [B·c] | None) for positions s0:s1 at ``spec.temperature``. Forward KL, reverse KL, JSD and CE
    with a full teacher distribution use :func:`fkl_ce_with_grad` / :func:`rkl_jsd_ce_with_grad` unless
    ``closed_form`` is off; the skew KLs and the top-k cache differentiate the chunk with autograd.
    ``head`` is the student's :class:`HeadTransform` (the closed forms multiply their logit gradient by its
    derivative). Returns (loss sum — differentiable, sums [loss, kd, ce] — detached).
    """
    head = head or IDENTITY

    def chunk_fn(h, w, s0, s1):
        logits = head_logits(h, w, head).reshape(-1, w.shape[0])        # [B·c, V]
        lab = labels[:, s0:s1].reshape(-1)
        m = mask[:, s0:s1].reshape(-1).to(logits.dtype)
        teacher = (lambda: teacher_chunk(s0, s1)) if teacher_chunk is not None else None
        kd, ce = spec.position_losses(logits, lab, teacher)
        kd = (kd * m).sum()
        ce = (ce * m).sum()
        return spec.kd_w * kd + spec.ce_w * ce, kd, ce

    def fast_fn(h, w, s0, s1):
        logits = (h @ w.t()).float().reshape(-1, w.shape[0])           # [B·c, V], overwritten by G
        dz = head.apply_(logits)                                         # dz'/dz of the transform
        lab = labels[:, s0:s1].reshape(-1)
        m = mask[:, s0:s1].reshape(-1).to(logits.dtype)
        t = teacher_chunk(s0, s1) if (teacher_chunk is not None and spec.kd_w) else None
        t_logp = None
        if t is not None:
            t_logp, ids, tail = t
            if tail is not None:
                raise ValueError("the closed form needs the whole teacher distribution (k >= vocab)")
            if ids is not None:  # a full-vocabulary top-k cache: put the values back in vocabulary order
                t_logp = torch.empty_like(logits).scatter_(-1, ids, t_logp)
        fn = rkl_jsd_ce_with_grad if (spec.kind in ("rkl", "jsd") and t_logp is not None and spec.kd_w) \
            else fkl_ce_with_grad
        kd, ce, G = fn(logits, lab, m, spec, t_logp)
        if not head.identity:
            G.mul_(dz)                                                   # chain rule: dL/dz = dL/dz' · dz'/dz
        return spec.kd_w * kd + spec.ce_w * ce, kd, ce, G

    if not torch.is_grad_enabled():  # evaluation: no gradients to prepare
        hidden, weight = hidden.detach(), weight.detach()
    use_fast = closed_form and (spec.kind in ("fkl", "rkl", "jsd") or not spec.kd_w or teacher_chunk is None)
    return _ChunkedHead.apply(hidden, weight, chunk_fn, int(chunk), fast_fn if use_fast else None)


def feature_loss(s_states: list[torch.Tensor], t_states: list[torch.Tensor],
                 projections: list[Callable[[torch.Tensor], torch.Tensor]] | None,
                 mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Sum over counted positions of the layer-averaged feature distance.

    s_states[i] [B, S, Hs] pairs with t_states[i] [B, S, Ht]; projections[i] maps Hs → Ht (None when
    widths match); mask [B, S]. MSE is averaged over the hidden dimension; cosine is 1 - cos.
    """
    total = s_states[0].new_zeros((), dtype=torch.float32)
    m = mask.float()
    for i, (s, t) in enumerate(zip(s_states, t_states)):
        s = s.float()
        if projections is not None and projections[i] is not None:
            s = projections[i](s).float()
        t = t.float()
        if kind == "mse":
            d = (s - t).pow(2).mean(-1)
        elif kind == "cosine":
            d = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
        else:
            raise ValueError(f"unknown feature loss {kind!r}")
        total = total + (d * m).sum()
    return total / len(s_states)
