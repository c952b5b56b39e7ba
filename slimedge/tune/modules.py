"""The torch modules of a quantized GGUF's tensors: fixed integer codes, learnable block fields.

* :class:`QuantWeight` — one quantized matrix in HF row order: the codes as int8 (or, with ``learn_codes``, a float
  latent per weight rounded to the type's range with a straight-through estimator), learnable ``log(d/d0)`` and
  ``log(dmin/dmin0)`` (rounded to fp16 in the forward pass, straight-through, so the forward weights are exactly
  what the file will hold) and continuous sub-scales/mins rounded and clamped to their integer range. Its weight
  equals ``slimedge.quant.dequantize`` bit for bit for the file's fields; :meth:`QuantWeight.fields` gives the
  learned fields back in GGUF block order for :func:`slimedge.quant.blockfields.pack`.
* :class:`QuantLinear` / :class:`QuantEmbedding` — a Linear / Embedding whose weight is a QuantWeight. With
  ``low_memory`` the linear keeps only its input for backward and rebuilds the matrix there
  (:class:`LowMemoryLinear`; the embedding runs under activation checkpointing), so a float matrix exists only
  while it multiplies.

This module imports torch; :mod:`slimedge.tune.model` imports it when a model is built.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..quant.blockfields import code_bits


def ste_f16(x):
    """``x`` rounded to fp16 in the forward pass, the identity for its gradient."""
    return x + (x.clamp(-65504.0, 65504.0).to(torch.float16).to(torch.float32) - x).detach()


def ste_int(x, lo, hi):
    """``x`` rounded to an integer in ``[lo, hi]`` in the forward pass, the identity for its gradient."""
    return x + (torch.round(x).clamp(lo, hi) - x).detach()


class QuantWeight(nn.Module):
    """A quantized matrix in HF row order: fixed codes, learnable block parameters (module docstring)."""

    def __init__(self, fields, rows: int, cols: int, hf_from_gguf: np.ndarray | None, learn_codes: bool = False):
        super().__init__()
        s = fields.spec
        self.qtype, self.spec, self.rows, self.cols = fields.qtype, s, rows, cols
        self.low_memory = True  # checkpointed: the float matrix exists only while it multiplies
        bpr = cols // (fields.codes.shape[1] * fields.codes.shape[2])          # blocks per row
        order = None
        if hf_from_gguf is not None:  # block index (HF order) -> block index (GGUF order)
            order = (hf_from_gguf[:, None] * bpr + np.arange(bpr)[None, :]).reshape(-1)
        self.register_buffer("order", None if order is None else torch.from_numpy(order))

        def take(a):
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a if order is None else a[order]))

        self.register_buffer("codes", take(fields.codes).to(torch.int8))
        self.register_buffer("d0", take(fields.d).float())
        self.log_d = nn.Parameter(torch.zeros_like(self.d0))
        self.register_buffer("dmin0", take(fields.dmin))
        self.log_dmin = nn.Parameter(torch.zeros_like(self.dmin0)) if s.has_min else None
        self.sc = nn.Parameter(take(fields.sc).float()) if s.has_sub else None
        self.mn = nn.Parameter(take(fields.mn).float()) if s.has_sub_min else None
        # learn_codes: a float latent per weight, rounded to the type's code range (straight-through)
        self.lat = nn.Parameter(self.codes.float()) if learn_codes else None
        cb = code_bits(fields.qtype)
        self.code_range = (cb.lo, cb.hi)
        # a non-linear type (IQ4_NL/IQ4_XS): the codes index this table of levels
        self.register_buffer("grid", None if s.grid is None else torch.tensor(s.grid, dtype=torch.float32))
        # block-wise rounding (begin_rounding): codes = round((w_ref - offset) / scale + v), v in [-1/2, 1/2]
        self.w_ref = self.v = None
        self.new_codes = False  # the codes buffer holds learned codes (written back by fields())

    def block_params(self):
        """(d, dmin, sc, mn) as the forward pass uses them (fp16-rounded, integer-rounded)."""
        s = self.spec
        d = ste_f16(self.d0 * torch.exp(self.log_d))
        dmin = ste_f16(self.dmin0 * torch.exp(self.log_dmin)) if s.has_min else None
        sc = ste_int(self.sc, *s.sc_range) if s.has_sub else None
        mn = ste_int(self.mn, *s.mn_range) if s.has_sub_min else None
        return d, dmin, sc, mn

    def forward(self):
        d, dmin, sc, mn = self.block_params()
        scale = d[:, None] * sc if sc is not None else d[:, None]
        if self.v is not None and self.grid is not None:  # learned rounding on a table (torch, autograd)
            return (grid_rounded(self.w_ref, self.v, scale, self.codes, self.grid)[1]
                    * scale[:, :, None]).reshape(self.rows, self.cols)
        if self.v is not None:  # learned rounding: one fused pass each way (RoundedWeight)
            w = RoundedWeight.apply(self.w_ref, self.v, scale, self._offset(dmin, mn), self.codes, self.code_range)
            return w.reshape(self.rows, self.cols)
        if self.grid is not None:  # the table's levels (straight-through for learned codes)
            codes = grid_ste(self.lat, self.grid) if self.lat is not None else self.grid[self.codes.long()]
        else:
            codes = ste_int(self.lat, *self.code_range) if self.lat is not None else self.codes
        # int8 codes times float scales: promoted exactly in the one pass that multiplies (a separate
        # .float() copy and out-of-place add cost two more full-size allocations: 2.5x the time here)
        dev = self.codes.device.type
        low = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None  # built in bf16 there
        w = torch.mul(codes, (scale if low is None else scale.to(low))[:, :, None])
        if dmin is not None:
            off = (float(self.spec.min_sign) * (dmin[:, None] * mn if mn is not None else dmin[:, None]))
            w = w.add_((off if low is None else off.to(low))[:, :, None])  # mul's backward keeps its inputs
        return w.reshape(self.rows, self.cols)

    def _offset(self, dmin, mn):
        if dmin is None:
            return None
        return float(self.spec.min_sign) * (dmin[:, None] * mn if mn is not None else dmin[:, None])

    def begin_rounding(self, w_ref):
        """Learn per-weight rounding offsets against the float matrix ``w_ref`` (HF order, ``rows x cols``)."""
        self.w_ref = w_ref.detach().float().reshape(self.codes.shape).to(self.codes.device)
        self.v = nn.Parameter(torch.zeros_like(self.w_ref))

    @torch.no_grad()
    def end_rounding(self):
        """Fix the learned codes into the codes buffer and drop the offsets and the float matrix."""
        d, dmin, sc, mn = self.block_params()
        scale = d[:, None] * sc if sc is not None else d[:, None]
        if self.grid is not None:
            q = grid_rounded(self.w_ref, self.v, scale, self.codes, self.grid)[0]
        else:
            q = _rounded(self.w_ref, self.v, scale, self._offset(dmin, mn), self.codes, self.code_range)[0]
        self.codes.copy_(q.to(torch.int8))
        self.w_ref = self.v = None
        self.new_codes = True
        if self.lat is not None:
            self.lat.copy_(self.codes.float())

    def round_parameters(self):
        return [self.v] if self.v is not None else []

    def sub_parameters(self):
        return [p for p in (self.sc, self.mn) if p is not None]

    def code_parameters(self):
        return [self.lat] if self.lat is not None else []

    def scale_parameters(self):
        return [p for p in (self.log_d, self.log_dmin) if p is not None]

    @torch.no_grad()
    def clamp_(self):
        s = self.spec
        if self.sc is not None:
            self.sc.clamp_(s.sc_range[0] - 0.49, s.sc_range[1] + 0.49)
        if self.mn is not None:
            self.mn.clamp_(s.mn_range[0] - 0.49, s.mn_range[1] + 0.49)
        if self.lat is not None:
            self.lat.clamp_(self.code_range[0] - 0.49, self.code_range[1] + 0.49)
        if self.v is not None:
            self.v.clamp_(-0.5, 0.5)

    @torch.no_grad()
    def fields(self, like):
        """The learned fields in GGUF block order (a :class:`BlockFields` shaped like ``like``)."""
        from ..quant.blockfields import BlockFields

        def back(t, dtype):
            if t is None:
                return None
            a = t.detach().cpu().numpy()
            if self.order is not None:
                out = np.empty_like(a)
                out[self.order.cpu().numpy()] = a
                a = out
            return a.astype(dtype)

        d, dmin, sc, mn = self.block_params()
        codes = like.codes
        if self.lat is not None:
            codes = back(torch.round(self.lat).clamp(*self.code_range), np.int16).reshape(like.codes.shape)
        elif self.new_codes:
            codes = back(self.codes, np.int16).reshape(like.codes.shape)
        return BlockFields(like.qtype, codes, back(d, np.float32), back(dmin, np.float32),
                           back(sc, np.int16), back(mn, np.int16))


def _interp(t, grid):
    """The table ``grid`` linearly interpolated at the fractional indices ``t`` (clamped to its ends)."""
    t = t.clamp(0, len(grid) - 1)
    j = t.detach().floor().clamp(max=len(grid) - 2).long()
    return grid[j] + (t - j) * (grid[j + 1] - grid[j])


def _nearest(t, grid):
    """``round(t)`` clamped to the table's indices."""
    return torch.round(t.detach()).clamp(0, len(grid) - 1).long()


def grid_ste(t, grid, idx=None):
    """The level ``grid[idx]`` (default ``idx``: ``round(t)`` clamped to the table) in the forward pass; the
    gradient of the table's linear interpolation (straight-through rounding on a non-uniform grid). The forward
    value is the level exactly (``lin - lin.detach()`` is 0)."""
    lin = _interp(t, grid)
    return grid[_nearest(t, grid) if idx is None else idx] + (lin - lin.detach())


def grid_rounded(w_ref, v, scale, codes, grid):
    """Learned rounding on a table of levels: ``w_ref / scale`` mapped to a fractional index by the table's linear
    interpolation, plus the offset ``v``, rounded and clamped: ``(indices, levels)``, the levels straight-through
    (:func:`grid_ste`; zero gradient where the clamp binds, as for the uniform types). A zero scale keeps the
    file's code. Shapes: ``w_ref``, ``v``, ``codes`` ``[blocks, subs, k]``, ``scale`` ``[blocks, subs]``."""
    zero = (scale == 0)[:, :, None]
    y = w_ref / torch.where(zero, torch.ones_like(scale[:, :, None]), scale[:, :, None])
    j = (torch.searchsorted(grid, y.detach().contiguous()) - 1).clamp(0, len(grid) - 2)
    t = j + (y - grid[j]) / (grid[j + 1] - grid[j]) + v       # the fractional index, then the offset
    q = torch.where(zero, codes.long(), _nearest(t, grid))
    return q, grid_ste(t, grid, q)                             # a zero scale: the file's code, its level


def _rounded(w_ref, v, scale, off, codes, code_range):
    """AutoRound's learned rounding of the float blocks ``w_ref`` ``[blocks, subs, k]``: the codes
    ``clamp(round((w_ref - off) / scale + v))`` (a zero scale keeps the file's code), with what backward needs:
    ``(codes, w_ref - off, 1 / scale (0 where the scale is 0), inside)``, ``inside`` where the clamp did not bind."""
    zero = scale == 0
    inv = torch.where(zero, torch.zeros_like(scale), 1.0 / torch.where(zero, torch.ones_like(scale), scale))[:, :, None]
    num = w_ref if off is None else w_ref - off[:, :, None]
    q = torch.addcmul(v, num, inv).round_()
    inside = (q >= code_range[0]) & (q <= code_range[1])
    q.clamp_(*code_range)
    if bool(zero.any()):
        q = torch.where(zero[:, :, None], codes.to(q.dtype), q)
        inside &= ~zero[:, :, None]
    return q, num, inv, inside


def _flat(t, n_sub):
    return None if t is None else t.detach().contiguous().reshape(n_sub, -1).numpy()


def _bytes(t, n_sub):
    """A bf16 tensor's rows as uint8 (NumPy has no bf16), a float32 one's as float32."""
    return _flat(t.view(torch.uint8) if t.dtype == torch.bfloat16 else t, n_sub)


def _kernel_fwd(K, w_ref, v, scale, off, codes, code_range, bf16: bool):
    """:func:`_rounded` and the weight (bf16 when ``bf16``) in one pass of the C kernels (``round_fwd``)."""
    from ..quant.backend import parallel_ranges

    k = w_ref.shape[-1]
    n_sub = w_ref.numel() // k
    out_w = torch.empty(w_ref.shape, dtype=torch.bfloat16 if bf16 else torch.float32)
    q = torch.empty(w_ref.shape, dtype=torch.int8)
    inside = torch.empty(w_ref.shape, dtype=torch.uint8)
    a = [_flat(t, n_sub) for t in (w_ref, v, scale, off, codes)]
    o = [_bytes(out_w, n_sub), _flat(q, n_sub), _flat(inside, n_sub)]

    def run(i, j):
        K.round_fwd(*[x[i:j] if x is not None else None for x in a], j - i, k, *code_range, o[0][i:j], bf16,
                    o[1][i:j], o[2][i:j])

    parallel_ranges(n_sub, k, run)
    return out_w, q, inside


def _kernel_bwd(K, g, w_ref, scale, off, q, inside, needs):
    from ..quant.backend import parallel_ranges

    k = w_ref.shape[-1]
    n_sub = w_ref.numel() // k
    g_v = torch.empty_like(w_ref) if needs[0] else None
    g_s = torch.empty_like(scale) if needs[1] else None
    g_o = torch.empty_like(scale) if needs[2] else None
    bf16 = g.dtype == torch.bfloat16
    gb = _bytes(g if bf16 else g.float(), n_sub)
    a = [_flat(t, n_sub) for t in (w_ref, scale, off, q, inside)]
    outs = [_flat(t, n_sub) for t in (g_v, g_s, g_o)]

    def run(i, j):
        K.round_bwd(gb[i:j], bf16, *[x[i:j] if x is not None else None for x in a], j - i, k,
                    *[x[i:j] if x is not None else None for x in outs])

    parallel_ranges(n_sub, k, run)
    return g_v, g_s, g_o


def _round_kernels(*ts):
    """The C kernels when they are active and every tensor is a CPU float32 (or int8) one of sub-blocks the
    kernels take, else None."""
    from ..quant.backend import active_kernels

    K = active_kernels()
    ok = K is not None and ts[0].shape[-1] <= 256 and all(
        t is None or (t.device.type == "cpu" and t.dtype in (torch.float32, torch.int8)) for t in ts)
    return K if ok else None


class RoundedWeight(torch.autograd.Function):
    """The weight ``q * scale + off`` of the learned codes ``q`` (:func:`_rounded`) in one pass each way.

    Straight-through for the rounding, the clamp's true gradient (AutoRound's): where the clamp does not bind
    ``dW/dv = scale``, ``dW/dscale = q - (w_ref - off) / scale`` and ``dW/doff = 0``; where it binds ``dW/dv = 0``,
    ``dW/dscale = q`` and ``dW/doff = 1``. Shapes: ``w_ref``, ``v``, ``codes`` ``[blocks, subs, k]``; ``scale``,
    ``off`` ``[blocks, subs]``; the weight is ``[blocks, subs, k]``. On CPU with the C kernels active
    (:mod:`slimedge.quant.backend`) both passes are one kernel each (``kernels/rounding.c``): the same forward bit
    for bit, the backward's sums in another order; else these torch operations."""

    @staticmethod
    def forward(ctx, w_ref, v, scale, off, codes, code_range):
        ctx.has_off = off is not None
        K = _round_kernels(w_ref, v, scale, off, codes)
        ctx.kernel = K
        if K is not None:  # under CPU bf16 autocast the weight comes out in bf16, as the product takes it
            bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            w, q, inside = _kernel_fwd(K, w_ref, v, scale, off, codes, code_range, bf16)
            ctx.save_for_backward(w_ref, scale, off, q, inside)
            return w
        q, num, inv, inside = _rounded(w_ref, v, scale, off, codes, code_range)
        ctx.save_for_backward(q, num, inv, scale, inside)
        w = q * scale[:, :, None]
        return w if off is None else w.add_(off[:, :, None])

    @staticmethod
    def backward(ctx, g):
        need = ctx.needs_input_grad
        if ctx.kernel is not None:
            w_ref, scale, off, q, inside = ctx.saved_tensors
            g_v, g_scale, g_off = _kernel_bwd(ctx.kernel, g, w_ref, scale, off, q, inside,
                                              (need[1], need[2], ctx.has_off and need[3]))
            return None, g_v, g_scale, g_off, None, None
        q, num, inv, scale, inside = ctx.saved_tensors
        gi = g * inside
        g_v = gi * scale[:, :, None] if need[1] else None
        g_scale = ((g * q).sum(-1) - (gi * num).sum(-1) * inv[:, :, 0]) if need[2] else None
        g_off = (g - gi).sum(-1) if ctx.has_off and need[3] else None
        return None, g_v, g_scale, g_off, None, None


class LowMemoryLinear(torch.autograd.Function):
    """``x @ W^T + b`` keeping only ``x``: backward rebuilds ``W`` from its block fields (with grad), takes
    ``grad_x = g W`` and ``grad_W = g^T x``, sends ``grad_W`` into the fields and drops ``W`` again — one
    float matrix at a time, and no second forward matmul (as activation checkpointing would run)."""

    @staticmethod
    def forward(ctx, x, bias, qw, *fields):
        with torch.no_grad():
            w = qw()
        dev = x.device.type
        ctx.autocast = (dev, torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else None
        ctx.qw, ctx.bias_dtype = qw, (bias.dtype if bias is not None else None)
        ctx.save_for_backward(x)
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        amp = torch.autocast(*ctx.autocast) if ctx.autocast else contextlib.nullcontext()
        with torch.enable_grad(), amp:  # the matrix forward multiplied (bf16 under autocast)
            w = ctx.qw()
        g2 = g.reshape(-1, g.shape[-1])  # under autocast: the matmuls in g's (bf16) dtype, as forward ran
        grad_x = (g2 @ w.detach().to(g.dtype)).reshape(x.shape).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = g2.t() @ x.reshape(-1, x.shape[-1]).to(g.dtype)
        torch.autograd.backward(w, grad_w.to(w.dtype))  # into the fields' .grad
        grad_b = g2.sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[1] else None
        return (grad_x, grad_b, None) + (None,) * (len(ctx.needs_input_grad) - 3)


class QuantLinear(nn.Module):
    def __init__(self, qw: QuantWeight, bias):
        super().__init__()
        self.qw, self.bias = qw, bias
        self.fixed = None  # the weight, built once while the fields do not change (blockwise's no-grad passes)

    def forward(self, x):
        if self.fixed is not None and not torch.is_grad_enabled():  # built once for many no-grad passes
            return F.linear(x, self.fixed, self.bias)
        if self.qw.low_memory and torch.is_grad_enabled():  # one float matrix at a time: rebuilt in backward
            fields = [p for p in self.qw.parameters() if p.requires_grad]
            return LowMemoryLinear.apply(x, self.bias, self.qw, *fields)
        return F.linear(x, self.qw(), self.bias)


class QuantEmbedding(nn.Module):
    def __init__(self, qw: QuantWeight, padding_idx=None):
        super().__init__()
        self.qw, self.padding_idx = qw, padding_idx

    def _f(self, ids):
        return F.embedding(ids, self.qw(), self.padding_idx)

    def forward(self, ids):
        if self.qw.low_memory and torch.is_grad_enabled():
            return checkpoint(self._f, ids, use_reentrant=False)
        return self._f(ids)
