"""The quantized GGUF as a torch model for :mod:`slimedge.distill.tune`: block-field modules and their loading.

* :func:`_modules` — :class:`QuantWeight` (fixed int8 codes + learnable ``log d``/``log dmin`` rounded to fp16 and
  integer sub-scales/mins rounded straight-through; its weight equals ``slimedge.quant.dequantize`` bit for bit
  for the initial fields), :class:`QuantLinear` and :class:`QuantEmbedding` (when ``low_memory``,
  backward rebuilds one float matrix at a time: ``LowMemoryLinear``, checkpointing for the embedding).
* :func:`student_config_of` — the transformers config of the model in the GGUF: the teacher's at the GGUF's depth,
  or the widths the GGUF states (a student distilled with other hidden/feed-forward/head sizes), each checked by
  matching every tensor against the converter's table for that config (built on a meta-device model: no weights);
  :func:`_entries` — every GGUF tensor's HF name and the inverse of the converter's row permutation (probed on row
  indices; anything else is refused);
  :func:`check_vocab` — the GGUF's token list against the teacher's tokenizer.
* :func:`_build` — that transformers architecture with every weight from the GGUF:
  quantized matrices as QuantLinear/QuantEmbedding, all else dequantized and frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SlimedgeError

# ---- torch modules ------------------------------------------------------------------------------------

def _modules():
    import contextlib

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    from ..quant.blockfields import code_bits

    def ste_f16(x):
        return x + (x.clamp(-65504.0, 65504.0).to(torch.float16).to(torch.float32) - x).detach()

    def ste_int(x, lo, hi):
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
            cb = code_bits(fields.qtype) if learn_codes else None
            self.code_range = (cb.lo, cb.hi) if cb else None

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
            return BlockFields(like.qtype, codes, back(d, np.float32), back(dmin, np.float32),
                               back(sc, np.int16), back(mn, np.int16))

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

        def forward(self, x):
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

    return QuantWeight, QuantLinear, QuantEmbedding


# ---- the GGUF against the teacher ---------------------------------------------------------------------

@dataclass
class _Entry:
    name: str          # GGUF tensor name
    hf: str | None     # HF parameter name (None: a generated tensor such as rope_freqs, not in the torch model)
    perm: np.ndarray | None  # HF row r = GGUF row perm[r] (None: same order)


def _row_permutation(arch, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """HF row -> GGUF row of the converter's transform, probed on row indices; refuse a non-permutation."""
    rows = shape[0]
    probe = np.arange(rows, dtype=np.float64).reshape((rows,) + (1,) * (len(shape) > 1))
    y = np.asarray(arch.transform(name, probe.copy()), dtype=np.float64).reshape(-1)
    gguf_from_hf = y.astype(np.int64)
    if y.shape != (rows,) or not np.array_equal(y, gguf_from_hf) or not np.array_equal(np.sort(gguf_from_hf),
                                                                                     np.arange(rows)):
        raise SlimedgeError(f"{name}: slimedge tune cannot invert the {arch.arch} converter's layout of this tensor "
                            "(not a row permutation); this architecture is not supported by tune")
    if np.array_equal(gguf_from_hf, np.arange(rows)):
        return None
    return gguf_from_hf  # GGUF row i holds HF row gguf_from_hf[i]; the HF order is the inverse


def check_vocab(info, tokenizer, teacher_cfg, path: str, teacher: str) -> None:
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        raise SlimedgeError(f"{path}: no tokenizer.ggml.tokens; not a model GGUF")
    n = min(len(tokenizer), len(tokens))
    hf = tokenizer.convert_ids_to_tokens(list(range(n)))
    same = sum(1 for a, b in zip(hf, tokens) if a == (b.decode("utf-8", "replace") if isinstance(b, bytes) else b))
    if len(tokens) != teacher_cfg.vocab_size or same < 0.9 * n:
        raise SlimedgeError(f"{path}: its vocabulary ({len(tokens)} tokens, {same} of the first {n} equal to the "
                            f"teacher's) is not that of teacher {teacher} ({teacher_cfg.vocab_size} tokens); give "
                            "the teacher this GGUF was made from")


@dataclass
class _ShapeRef:
    """A tensor of the student's transformers model, by shape only (what the converter's table matcher reads)."""

    hf: str
    shape: tuple[int, ...]
    file: str = "the student"

    @property
    def where(self) -> str:
        return f"{self.hf} in {self.file}"

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1


def _table(scfg, teacher_cfg, teacher: str) -> tuple[object, dict]:
    """(converter arch, GGUF name -> OutTensor) of a transformers config, from its model's shapes (no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..arch import get_arch

    config = dict(scfg.to_dict(), architectures=list(getattr(teacher_cfg, "architectures", None) or []))
    arch = get_arch(config, f"{teacher}/config.json")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(scfg)
    refs = {k: _ShapeRef(k, tuple(v.shape)) for k, v in model.state_dict().items()}
    source = type("ShapeSource", (), {"config": config, "tensors": refs, "model_dir": teacher})()
    return arch, {t.name: t for t in arch.tensors(source)}


def _mismatch(info, table) -> tuple[str, str] | None:
    for t in info.tensors:
        ref = table.get(t.name)
        if ref is None or tuple(ref.shape) != tuple(t.shape):
            return t.name, (f"shape {list(ref.shape)}" if ref is not None else "no such tensor")
    return None


def student_config_of(info, teacher_cfg, teacher: str, path: str):
    """(transformers config of the model in the GGUF, converter arch, its table), checked against the teacher.

    The teacher's own shape at the GGUF's depth when every tensor fits it; else (a student distilled with
    another width) the widths the GGUF states (embedding, feed-forward, head counts, key length).
    """
    from ..arch import get_arch
    from ..quant.model_info import ModelInfo
    from .student import student_config

    t_arch = get_arch(dict(teacher_cfg.to_dict()), f"{teacher}/config.json")
    if info.arch != t_arch.arch:
        raise SlimedgeError(f"{path}: a {info.arch!r} model, but teacher {teacher} converts to {t_arch.arch!r}; give "
                            "the teacher this GGUF was made from")
    n_layers = int(info.metadata.get(f"{info.arch}.block_count", t_arch.hp.n_layer))
    if n_layers > t_arch.hp.n_layer:
        raise SlimedgeError(f"{path}: {n_layers} layers, more than teacher {teacher}'s {t_arch.hp.n_layer}; not a "
                            "model of this teacher")
    scfg = student_config(teacher_cfg, layers=n_layers) if n_layers != teacher_cfg.num_hidden_layers else teacher_cfg
    arch, table = _table(scfg, teacher_cfg, teacher)
    first = _mismatch(info, table)
    if first is None:
        return scfg, arch, table
    mi = ModelInfo.from_metadata(info.metadata, path)
    if mi.n_head_layers or mi.n_head_kv_layers or mi.n_ff_layers or not mi.n_embd:
        wide = None  # per-layer widths: no transformers config of this family states them
    else:
        wide = student_config(teacher_cfg, layers=n_layers, hidden=mi.n_embd, intermediate=mi.n_ff or None,
                              heads=mi.n_head, kv_heads=mi.n_head_kv)
        if mi.key_length and getattr(wide, "head_dim", None) is not None:
            wide.head_dim = mi.key_length
        w_arch, w_table = _table(wide, teacher_cfg, teacher)
        if _mismatch(info, w_table) is None:
            return wide, w_arch, w_table
    name, want = first
    shape = next(list(t.shape) for t in info.tensors if t.name == name)
    raise SlimedgeError(f"{path}: tensor {name} {shape} does not match teacher {teacher} ({want}) nor the widths "
                        "its own metadata states; tune takes a GGUF of the teacher or of a student distilled from it")


def _entries(info, teacher_cfg, teacher: str, path: str) -> tuple[list[_Entry], object]:
    """GGUF tensor -> HF name and row order, checked against the converter's table; the model's config."""
    scfg, arch, table = student_config_of(info, teacher_cfg, teacher, path)
    out = []
    for t in info.tensors:
        ref = table[t.name]
        generated = ref.origin.startswith("generated")
        hf = None if generated else ref.origin.rsplit(" in ", 1)[0]
        perm = None if generated else _row_permutation(arch, t.name, tuple(t.shape))
        out.append(_Entry(t.name, hf, None if perm is None else np.argsort(perm)))
    return out, scfg


def _raw(mm: np.ndarray, t) -> np.ndarray:
    """A tensor's bytes as ``uint8[rows, row_bytes]`` (1-D tensors: one row)."""
    rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
    return np.asarray(mm[t.offset:t.offset + t.n_bytes]).reshape(rows, -1)


def _build(cfg, info, entries, scfg, mm):
    """The quantized model in torch (transformers config ``scfg``): the model and {GGUF name: QuantWeight}."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..quant import dequantize
    from ..quant.blockfields import SUPPORTED, unpack
    from ..quant.types import FLOAT_TYPES
    QuantWeight, QuantLinear, QuantEmbedding = _modules()
    model = AutoModelForCausalLM.from_config(scfg, dtype=torch.float32)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    qws: dict[str, object] = {}
    for t, e in zip(info.tensors, entries):
        if e.hf is None:
            continue
        p = params.get(e.hf)
        if p is None or tuple(p.shape) != tuple(t.shape):
            raise SlimedgeError(f"{cfg.gguf}: tensor {t.name} has no matching weight {e.hf} in the transformers "
                                f"model; this architecture is not supported by tune")
        raw = _raw(mm, t)
        if t.qtype in FLOAT_TYPES or len(t.shape) != 2:
            if t.qtype not in FLOAT_TYPES and t.type not in SUPPORTED:
                raise SlimedgeError(f"{cfg.gguf}: tensor {t.name} is {t.type}, which slimedge tune cannot learn; "
                                    f"supported: {', '.join(sorted(SUPPORTED))} (and float tensors, kept)")
            w = dequantize(raw, t.type, t.shape[-1]).reshape(t.shape)
            if e.perm is not None:
                w = w[e.perm]
            with torch.no_grad():
                p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            p.requires_grad_(False)
            loaded.add(e.hf)
            continue
        if t.type not in SUPPORTED:
            raise SlimedgeError(f"{cfg.gguf}: tensor {t.name} is {t.type}, which slimedge tune cannot learn; "
                                f"supported: {', '.join(sorted(SUPPORTED))}")
        qw = QuantWeight(unpack(raw, t.type), t.shape[0], t.shape[1], e.perm, getattr(cfg, "learn_codes", False))
        qws[t.name] = qw
        module_name = e.hf.rsplit(".", 1)[0]
        _replace(model, module_name, qw, QuantLinear, QuantEmbedding)
        loaded.add(e.hf)
        if getattr(scfg, "tie_word_embeddings", False) and t.name == "token_embd.weight":
            head = model.get_output_embeddings()
            for n, m in model.named_modules():
                if m is head:
                    _replace(model, n, qw, QuantLinear, QuantEmbedding)
                    loaded.update(k for k, v in params.items() if v is p)
    if not qws:
        raise SlimedgeError(f"{cfg.gguf}: no quantized tensor to tune (types {', '.join(info.type_counts)}); "
                            "give a k-quant or legacy-quant GGUF")
    missing = sorted(set(params) - loaded)
    if missing:
        raise SlimedgeError(f"{cfg.gguf}: the file has no tensor for {missing[0]} (and {len(missing) - 1} more); "
                            "not a complete GGUF of this model")
    for p in model.parameters():
        p.requires_grad_(False)
    for qw in qws.values():
        for p in qw.scale_parameters() + qw.sub_parameters() + qw.code_parameters():
            p.requires_grad_(True)
    return model, qws


def _replace(model, module_name: str, qw, QuantLinear, QuantEmbedding) -> None:
    import torch

    parent_name, _, child = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    if isinstance(old, torch.nn.Linear):
        new = QuantLinear(qw, old.bias)
    elif isinstance(old, torch.nn.Embedding):
        new = QuantEmbedding(qw, old.padding_idx)
    else:
        raise SlimedgeError(f"{module_name}: a {type(old).__name__}, not a Linear or Embedding; this architecture "
                            "is not supported by tune")
    setattr(parent, child, new)
