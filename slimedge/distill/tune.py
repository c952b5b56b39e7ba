"""Tune a quantized GGUF against its teacher: learn the block scales, keep the codes, write the same file.

``tune(TuneConfig(gguf=..., teacher=..., data=..., output=...))`` starts from a k-quant or legacy-quant GGUF of
the teacher (or of a fewer-layer student distilled from it) and learns, by gradient descent in torch, every
quantized tensor's block parameters so that the quantized model's next-token distribution matches the
teacher's (forward KL, :func:`slimedge.distill.losses.divergence`, on calibration blocks cut by
:func:`slimedge.distill.data.prepare`). Integer codes never change; tensor types, block layout, metadata and
file size stay exactly those of the input, so the result runs wherever the input runs.

How:

* **Fields.** Each quantized tensor's blocks are read with :mod:`slimedge.quant.blockfields` (codes +
  ``d``/``dmin`` + integer sub-scales/mins; one formula for every supported type, equal bit for bit to
  ``slimedge.quant.dequantize``). In torch a :class:`QuantWeight` holds the codes (int8) and learns
  ``log(d/d0)`` and ``log(dmin/dmin0)`` (fp32, rounded to fp16 in the forward pass with a straight-through
  estimator, so the forward weights are exactly what the file will hold) and continuous sub-scales/mins
  (rounded and clamped to their integer range, straight-through). Sub-scales get ``sub_lr``.
* **Model.** The teacher's transformers architecture (``num_hidden_layers`` from the GGUF's ``block_count``)
  gets every weight from the GGUF: quantized matrices become :class:`QuantLinear` / :class:`QuantEmbedding`
  modules, everything else (norms, float tensors) is dequantized and frozen. GGUF names map to HF names through
  the converter's own table (:meth:`slimedge.arch.base.Arch.tensors`); the converter's layout transform
  (Llama's q/k rope row permutation) is probed on row indices and inverted — blocks run along rows, so rows
  move whole. An architecture whose transform is not a row permutation is refused.
* **Memory.** The file's codes live as int8 (1 byte per weight) plus a few fp32 numbers per block; a float
  weight exists only while its own matrix multiplies: each quantized layer runs under activation
  checkpointing, so backward rematerialises one matrix at a time. The teacher's log-probabilities on the
  calibration blocks are computed once and cached when they fit ``cache_mb`` (else the teacher runs each step).
* **Output.** Every tensor is written in file order with :class:`slimedge.writer.GGUFStreamWriter` (atomic,
  :mod:`slimedge.publish`): tuned tensors as their original bytes with the new scale fields packed in
  (:func:`slimedge.quant.blockfields.pack`), all others and every metadata key copied unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)


@dataclass
class TuneConfig:
    gguf: str                       # the quantized GGUF to tune
    teacher: str                    # the teacher's Hugging Face folder
    data: str                       # calibration text (anything slimedge.distill.data.prepare reads)
    output: str
    steps: int = 100
    lr: float = 2e-3                # Adam lr of log d / log dmin
    sub_lr: float | None = None     # Adam lr of the sub-scales/mins, in integer units (default 20 x lr)
    batch_size: int = 4
    seq_len: int = 256
    max_blocks: int = 64            # calibration blocks used for training (0: all)
    eval_blocks: int = 4            # held-out blocks for the before/after KL
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    overwrite: bool = False
    data_field: str = "text"
    cache_mb: int = 512             # cache the teacher's log-probs when they fit in this many MiB
    warm_steps: int = 0             # layer-wise warm start: Adam steps per matrix on its output error (0: none)
    warm_blocks: int = 16           # calibration blocks whose teacher activations weigh the warm start
    float_mb: int = 256             # above this many MiB of float weights, rebuild each in backward (checkpoint)


@dataclass
class TuneResult:
    output: str
    kl_before: float                # mean KL(teacher || quantized) per token on held-out blocks, before
    kl_after: float                 # ... after tuning
    train_kl_first: float
    train_kl_last: float
    seconds: float
    tuned: dict[str, int] = field(default_factory=dict)   # type -> tensors tuned
    frozen: int = 0                                          # tensors copied unchanged


# ---- torch modules ------------------------------------------------------------------------------------

def _modules():
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    def ste_f16(x):
        return x + (x.clamp(-65504.0, 65504.0).to(torch.float16).to(torch.float32) - x).detach()

    def ste_int(x, lo, hi):
        return x + (torch.round(x).clamp(lo, hi) - x).detach()

    class QuantWeight(nn.Module):
        """A quantized matrix in HF row order: fixed codes, learnable block parameters (module docstring)."""

        def __init__(self, fields, rows: int, cols: int, hf_from_gguf: np.ndarray | None):
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
            w = scale[:, :, None] * self.codes.float()
            if dmin is not None:
                off = dmin[:, None] * mn if mn is not None else dmin[:, None]
                w = w + (float(self.spec.min_sign) * off)[:, :, None]
            return w.reshape(self.rows, self.cols)

        def sub_parameters(self):
            return [p for p in (self.sc, self.mn) if p is not None]

        def scale_parameters(self):
            return [p for p in (self.log_d, self.log_dmin) if p is not None]

        @torch.no_grad()
        def clamp_(self):
            s = self.spec
            if self.sc is not None:
                self.sc.clamp_(s.sc_range[0] - 0.49, s.sc_range[1] + 0.49)
            if self.mn is not None:
                self.mn.clamp_(s.mn_range[0] - 0.49, s.mn_range[1] + 0.49)

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
            return BlockFields(like.qtype, like.codes, back(d, np.float32), back(dmin, np.float32),
                               back(sc, np.int16), back(mn, np.int16))

    class QuantLinear(nn.Module):
        def __init__(self, qw: QuantWeight, bias):
            super().__init__()
            self.qw, self.bias = qw, bias

        def _f(self, x):
            return F.linear(x, self.qw(), self.bias)

        def forward(self, x):
            if self.qw.low_memory and torch.is_grad_enabled():  # one float matrix at a time: rebuilt in backward
                return checkpoint(self._f, x, use_reentrant=False)
            return self._f(x)

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


def _check_vocab(info, tokenizer, teacher_cfg, path: str, teacher: str) -> None:
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


def _entries(info, teacher: str, path: str) -> tuple[list[_Entry], int]:
    """GGUF tensor -> HF name and row order, checked against the teacher's converter table; GGUF layers."""
    from ..arch import get_arch
    from ..source.hf import HFSource

    source = HFSource(teacher)
    arch = get_arch(source.config, f"{teacher}/config.json")
    if info.arch != arch.arch:
        raise SlimedgeError(f"{path}: a {info.arch!r} model, but teacher {teacher} converts to {arch.arch!r}; give "
                            "the teacher this GGUF was made from")
    table = {t.name: t for t in arch.tensors(source)}
    n_layers = int(info.metadata.get(f"{info.arch}.block_count", arch.hp.n_layer))
    if n_layers > arch.hp.n_layer:
        raise SlimedgeError(f"{path}: {n_layers} layers, more than teacher {teacher}'s {arch.hp.n_layer}; not a "
                            "model of this teacher")
    out = []
    for t in info.tensors:
        ref = table.get(t.name)
        if ref is None or tuple(ref.shape) != tuple(t.shape):
            want = f"shape {list(ref.shape)}" if ref is not None else "no such tensor"
            raise SlimedgeError(f"{path}: tensor {t.name} {list(t.shape)} does not match teacher {teacher} ({want}); "
                                "tune takes a GGUF of the teacher or of a fewer-layer student distilled from it")
        generated = ref.origin.startswith("generated")
        hf = None if generated else ref.origin.rsplit(" in ", 1)[0]
        perm = None if generated else _row_permutation(arch, t.name, tuple(t.shape))
        out.append(_Entry(t.name, hf, None if perm is None else np.argsort(perm)))
    return out, n_layers


def _raw(mm: np.ndarray, t) -> np.ndarray:
    """A tensor's bytes as ``uint8[rows, row_bytes]`` (1-D tensors: one row)."""
    rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
    return np.asarray(mm[t.offset:t.offset + t.n_bytes]).reshape(rows, -1)


def _build(cfg: TuneConfig, info, entries, n_layers: int, teacher_cfg, mm):
    """The quantized student in torch: {GGUF name: QuantWeight} and the model."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..quant import dequantize
    from ..quant.blockfields import SUPPORTED, unpack
    from ..quant.types import FLOAT_TYPES
    from .student import student_config

    QuantWeight, QuantLinear, QuantEmbedding = _modules()
    scfg = student_config(teacher_cfg, layers=n_layers) if n_layers != teacher_cfg.num_hidden_layers else teacher_cfg
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
        qw = QuantWeight(unpack(raw, t.type), t.shape[0], t.shape[1], e.perm)
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
        for p in qw.scale_parameters() + qw.sub_parameters():
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


def _write(cfg: TuneConfig, info, qws, mm) -> None:
    """Copy the GGUF with the tuned tensors' scale fields replaced (same header, same sizes)."""
    from gguf import GGUFReader, Keys

    from ..quant.blockfields import pack, unpack
    from ..source.gguf_src import _field_value
    from ..writer import GGUFStreamWriter

    reader = GGUFReader(cfg.gguf, "r")
    with GGUFStreamWriter(cfg.output, arch="", overwrite=cfg.overwrite, alignment=info.alignment) as w:
        for key, f in reader.fields.items():
            if key.startswith("GGUF.") or (key == Keys.General.ALIGNMENT and key in w._kv):
                continue
            w.add_kv(key, *_field_value(f))
        for t in info.tensors:
            w.add_tensor_info(t.name, t.shape, t.qtype)
        w.begin_data()
        for t in info.tensors:
            raw = _raw(mm, t)
            if t.name in qws:
                raw = pack(qws[t.name].fields(unpack(raw, t.type)), raw)
            w.write_tensor(t.name, np.ascontiguousarray(raw).reshape(-1))
    del reader


# ---- layer-wise warm start ----------------------------------------------------------------------------

def _input_grams(teacher, names: set[str], blocks, batch: int, device) -> dict[str, object]:
    """HF module name -> mean ``x^T x`` of its inputs over the blocks (teacher activations, fp32)."""
    import torch

    grams: dict[str, object] = {}
    count = [0]
    hooks = []

    def hook(name):
        def f(_m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            g = x.T @ x
            grams[name] = g if name not in grams else grams[name] + g
        return f

    for name, m in teacher.named_modules():
        if name in names and isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            for i in range(0, len(blocks), batch):
                x = torch.as_tensor(np.asarray(blocks[i:i + batch]), device=device)
                teacher(input_ids=x)
                count[0] += x.numel()
    finally:
        for h in hooks:
            h.remove()
    return {k: v / max(count[0], 1) for k, v in grams.items()}


def _warm_start(qws: dict, entries, teacher, grams: dict, steps: int, lr: float, sub_lr: float,
                progress: Progress) -> dict[str, float]:
    """Each matrix alone: minimise its output error ``tr(E G E^T)`` (``E = W_q - W_teacher``, ``G`` the input
    Gram matrix) over its block fields; a matrix whose error does not fall keeps its fields. Returns the
    relative error left per tensor."""
    import torch

    tparams = dict(teacher.named_parameters())
    hf_of = {e.name: e.hf for e in entries}
    left: dict[str, float] = {}
    progress.start(len(qws), unit="tensors", desc="warm start")
    try:
        for name, qw in qws.items():
            hf = hf_of[name]
            g = grams.get(hf.rsplit(".", 1)[0])
            if g is None or hf not in tparams:
                progress.update(1, label=name)
                continue
            w_t = tparams[hf].detach().float()
            start = {k: v.detach().clone() for k, v in qw.state_dict().items()}

            def err():
                e = qw() - w_t
                return ((e @ g) * e).sum()

            with torch.no_grad():
                e0 = float(err())
            groups = [{"params": qw.scale_parameters(), "lr": lr}]
            if qw.sub_parameters():
                groups.append({"params": qw.sub_parameters(), "lr": sub_lr})
            opt = torch.optim.Adam(groups)
            for _ in range(steps):
                loss = err() / max(e0, 1e-30)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                qw.clamp_()
            with torch.no_grad():
                e1 = float(err())
            if not e1 < e0:
                qw.load_state_dict(start)
                e1 = e0
            left[name] = e1 / max(e0, 1e-30)
            progress.update(1, label=name)
    finally:
        progress.close()
    return left


# ---- training -----------------------------------------------------------------------------------------

def _logprobs(model, x):
    import torch

    return torch.log_softmax(model(input_ids=x).logits.float(), -1)


def _mean_kl(model, teacher_lp, blocks, batch: int, device) -> float:
    import torch

    from .losses import divergence

    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch):
            x = torch.as_tensor(np.asarray(blocks[i:i + batch]), device=device)
            t = teacher_lp(i, x)
            s = _logprobs(model, x)
            kl = divergence(t.reshape(-1, t.shape[-1]), s.reshape(-1, s.shape[-1]), "fkl")
            tot += float(kl.sum())
            n += kl.numel()
    return tot / max(n, 1)


def tune(cfg: TuneConfig, progress: Progress = NULL_PROGRESS) -> TuneResult:
    """Tune ``cfg.gguf`` against ``cfg.teacher`` on ``cfg.data``; writes ``cfg.output`` (see the module docstring)."""
    import torch

    from ..gguf_info import read_info
    from ..writer import check_output_path
    from .api import load_teacher_meta, load_teacher_model
    from .data import prepare

    t0 = time.monotonic()
    check_output_path(__import__("pathlib").Path(cfg.output), cfg.overwrite)
    if cfg.steps < 0 or cfg.batch_size < 1 or cfg.seq_len < 2:
        raise SlimedgeError("tune: --steps must be >= 0, --batch-size >= 1, --seq-len >= 2")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SlimedgeError("--device cuda: no CUDA device is available to torch; use --device cpu")
    info = read_info(cfg.gguf)
    teacher_cfg, tokenizer = load_teacher_meta(cfg.teacher)
    _check_vocab(info, tokenizer, teacher_cfg, cfg.gguf, cfg.teacher)
    entries, n_layers = _entries(info, cfg.teacher, cfg.gguf)
    mm = np.memmap(cfg.gguf, dtype=np.uint8, mode="r")
    model, qws = _build(cfg, info, entries, n_layers, teacher_cfg, mm)
    low = sum(q.rows * q.cols for q in qws.values()) * 4 > cfg.float_mb << 20
    for q in qws.values():
        q.low_memory = low
    model.to(device).train()
    blocks = prepare(cfg.data, tokenizer, cfg.seq_len, field=cfg.data_field, progress=progress)
    train = blocks.train  # a memory-mapped view: rows are read when a step takes them
    n_train = min(len(train), cfg.max_blocks) if cfg.max_blocks else len(train)
    held = np.asarray(blocks.eval[:cfg.eval_blocks])
    teacher = load_teacher_model(cfg.teacher, torch.float32, device)
    vocab = teacher_cfg.vocab_size
    cache = None
    if n_train * cfg.seq_len * vocab * 4 <= cfg.cache_mb << 20:
        with torch.no_grad():
            cache = torch.cat([_logprobs(teacher, torch.as_tensor(train[i:min(i + cfg.batch_size, n_train)],
                                                                  device=device))
                               for i in range(0, n_train, cfg.batch_size)])

    def teacher_train(rows, x):
        if cache is not None:
            return cache[torch.as_tensor(rows, device=device)]
        with torch.no_grad():
            return _logprobs(teacher, x)

    def teacher_held(i, x):
        with torch.no_grad():
            return _logprobs(teacher, x)

    kl_before = _mean_kl(model, teacher_held, held, cfg.batch_size, device)
    sub_lr = cfg.sub_lr if cfg.sub_lr is not None else 20 * cfg.lr
    if cfg.warm_steps and n_layers == teacher_cfg.num_hidden_layers:  # a student has no float reference
        names = {e.hf.rsplit(".", 1)[0] for e in entries if e.name in qws}
        grams = _input_grams(teacher, names, train[:min(n_train, cfg.warm_blocks)], cfg.batch_size, device)
        left = _warm_start(qws, entries, teacher, grams, cfg.warm_steps, 10 * cfg.lr, 10 * sub_lr, progress)
        log.info("warm start: output error of %d matrices down to %.3f of the start on average", len(left),
                 float(np.mean(list(left.values()))) if left else 1.0)
        del grams
    scale_p = [p for q in qws.values() for p in q.scale_parameters()]
    sub_p = [p for q in qws.values() for p in q.sub_parameters()]
    groups = [{"params": scale_p, "lr": cfg.lr}] + ([{"params": sub_p, "lr": sub_lr}] if sub_p else [])
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / max(cfg.steps, 1))))
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    first = last = float("nan")
    from .losses import divergence

    progress.start(cfg.steps, unit="steps", desc="tune")
    try:
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                order += list(rng.permutation(n_train))
            rows, order = order[:cfg.batch_size], order[cfg.batch_size:]
            x = torch.as_tensor(train[np.asarray(rows)], device=device)
            t = teacher_train(rows, x)
            s = _logprobs(model, x)
            loss = divergence(t.reshape(-1, vocab), s.reshape(-1, s.shape[-1]), "fkl").mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for q in qws.values():
                q.clamp_()
            last = float(loss.detach())
            first = last if step == 0 else first
            progress.update(1, label=f"kl {last:.4f}")
    finally:
        progress.close()
    model.eval()
    kl_after = _mean_kl(model, teacher_held, held, cfg.batch_size, device)
    log.info("tune: held-out KL %.5f -> %.5f (%d steps)", kl_before, kl_after, cfg.steps)
    _write(cfg, info, qws, mm)
    counts: dict[str, int] = {}
    for q in qws.values():
        counts[q.qtype.name] = counts.get(q.qtype.name, 0) + 1
    return TuneResult(cfg.output, kl_before, kl_after, first, last, round(time.monotonic() - t0, 2), counts,
                      len(info.tensors) - len(qws))
