"""Block-wise reconstruction for :mod:`slimedge.tune` (``--mode blockwise``): one transformer block at a time.

As AutoRound does, each decoder layer of the quantized model is tuned alone so that its output matches the float
teacher layer's: the target is the teacher layer's output on the teacher's own inputs to that layer, the input is
the *quantized* model's input to it (the layers before it already tuned), both cached for ``block_samples``
calibration blocks spread evenly over all of them (:func:`slimedge.distill.data.spread`: a sample of the whole
corpus, not its first blocks — on the 103M-parameter bench model that took Q4_0's KL from 1.22x AutoRound's to
0.87x). Learned per layer, for every quantized matrix in it: the block scales and mins (as the KL
stage, :class:`~slimedge.tune.modules.QuantWeight`) and a rounding offset ``v`` in [-1/2, 1/2] per weight, the
code being ``round((w - offset) / scale + v)`` of the teacher's float weight ``w``, straight-through
(:meth:`QuantWeight.begin_rounding`); ``block_iters`` Adam steps (``block_opt="sign"``: AutoRound's signed gradient
descent, each parameter moving by its rate times its gradient's sign) with the offsets at ``round_lr`` (Adam 1e-2,
sign ``1 / block_iters``), log scales at ``block_lr``, integer sub-scales/mins at 40x that, on the mean squared
error of the layer's output over ``batch_size`` random cached blocks, rates decaying linearly to 0. The quantized
layer runs under the tune's autocast (``--precision bf16``), its matrices built once a step in one fused pass
(:class:`~slimedge.tune.modules.RoundedWeight`); the teacher layer's targets stay fp32. A layer whose error on all
the cached blocks does not fall keeps the file's fields. The codes are then fixed and written back through
:func:`slimedge.quant.blockfields.pack`'s code bit map, so types and bytes stay the file's.

Cost grows with one layer: memory is the model's codes plus one layer's float matrices and offsets plus three
cached activations ``[block_samples, seq_len, hidden]`` (teacher input, quantized input, target), and the teacher
is read one layer at a time where its checkpoint allows (:mod:`.stream`; its embeddings only while the first
inputs are formed, its head only for the held-out KL). Embedding and output matrices are left to the optional
end-to-end KL stage (``steps``). After each layer its tuned tensors are saved in a folder next to the output, one
file per layer (so a layer writes what it changed, not the model), and ``resume`` continues at the next layer
with the same result. Under torchrun every process runs the same deterministic steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time

import numpy as np

from ..distill.data import spread
from ..errors import SlimedgeError
from ..progress import Progress

log = logging.getLogger(__name__)


def block_checkpoint_path(output: str) -> str:
    """The folder of a block-wise run's per-layer checkpoints, next to the output."""
    head, tail = os.path.split(os.path.abspath(output))
    return os.path.join(head, f".{tail}.blockwise-checkpoint")


def decoder_layers(model, n: int, what: str):
    """The model's decoder layers: its ModuleList of ``n`` modules."""
    import torch

    for _, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n:
            return m
    raise SlimedgeError(f"{what}: no list of {n} decoder layers found; --mode blockwise does not support this "
                        "architecture (use --mode e2e)")


class _Stop(Exception):
    pass


def first_layer_input(model, layers, x):
    """The hidden states entering ``layers[0]`` for the ids ``x``, and the keyword arguments the layer got."""
    import torch

    got = {}

    def hook(_m, args, kwargs):
        got["h"] = (args[0] if args else kwargs.pop("hidden_states")).detach()
        got["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    h = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=x, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    return got["h"], got["kw"]


def _run(layer, h, kw):
    out = layer(h, **kw)
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def _fixed_weights(layer):
    """No grad, and each quantized matrix of ``layer`` built once for all the batches of a pass."""
    import torch

    mods = _quant_linears(layer).values()
    with torch.no_grad():
        try:
            for m in mods:
                m.fixed = m.qw()
            yield
        finally:
            for m in mods:
                m.fixed = None


def _apply(layer, xs, kw, bsz, autocast=None):
    """``layer`` over the cached activations ``xs`` in batches of ``bsz`` (no grad), fp32 out."""
    import torch

    with _fixed_weights(layer), (autocast or contextlib.nullcontext)():
        return torch.cat([_run(layer, xs[i:i + bsz], kw).float() for i in range(0, len(xs), bsz)])


def _error(out, y) -> float:
    """Mean squared error of the layer's outputs ``out`` against ``y`` over all cached blocks."""
    return float(((out - y) ** 2).double().sum() / y.numel())


def _quant_linears(layer):
    from .modules import QuantLinear

    return {n: m for n, m in layer.named_modules() if isinstance(m, QuantLinear)}


def _optimizer(cfg, qs):
    """Adam (offsets at ``round_lr``, log scales at ``block_lr``, integer sub-scales/mins at 40x) or, with
    ``block_opt="sign"``, AutoRound's signed gradient descent (SGD on the gradients' signs) at the same rates."""
    import torch

    groups = [{"params": [p for q in qs for p in q.scale_parameters()], "lr": cfg.block_lr_or_default},
              {"params": [p for q in qs for p in q.sub_parameters()], "lr": 40 * cfg.block_lr_or_default},
              {"params": [p for q in qs for p in q.round_parameters()], "lr": cfg.round_lr_or_default}]
    groups = [g for g in groups if g["params"]]
    if cfg.block_opt == "sign":
        return torch.optim.SGD(groups, lr=cfg.round_lr_or_default)
    return torch.optim.Adam(groups)


def _batch_loss(ql, xt, xq, y, idx, kw, cfg, scale):
    """The step's relative squared error: the quantized layer on its own inputs (``block_input="quant"``), on the
    teacher's (``"teacher"``) or the mean of both (``"mix"``), against the teacher layer's output."""
    xs = {"quant": (xq,), "teacher": (xt,), "mix": (xq, xt)}[cfg.block_input]
    return sum(((_run(ql, x[idx], kw) - y[idx]) ** 2).mean() for x in xs) * (scale / len(xs))


def tune_layer(i: int, tl, ql, xt, xq, kw, cfg, autocast=None) -> tuple[float, float, object, object]:
    """Tune the quantized layer ``ql`` against the teacher layer ``tl``: (error before, after, the teacher layer's
    output, the tuned layer's output on ``xq``). ``autocast``: None, or a factory of the context the quantized
    layer runs in (bf16); the teacher layer runs in fp32."""
    import torch

    bsz = cfg.batch_size
    y = _apply(tl, xt, kw, bsz)
    mods = _quant_linears(ql)
    if not mods or cfg.block_iters == 0:
        return float("nan"), float("nan"), y, _apply(ql, xq, kw, bsz, autocast)
    start = {n: ({k: v.clone() for k, v in m.qw.state_dict().items()}, m.qw.new_codes) for n, m in mods.items()}
    low = next(iter(mods.values())).qw.low_memory
    e0 = _error(_apply(ql, xq, kw, bsz, autocast), y)
    for n, m in mods.items():
        m.qw.begin_rounding(tl.get_submodule(n).weight)
        m.qw.low_memory = False  # one layer's matrices: kept for backward rather than rebuilt there
    qs = [m.qw for m in mods.values()]
    opt = _optimizer(cfg, qs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / cfg.block_iters)
    rng = np.random.default_rng(cfg.seed * 7919 + i)
    scale = 1.0 / max(float((y ** 2).mean()), 1e-30)  # a relative error: one lr for every layer's size
    for _ in range(cfg.block_iters):
        idx = torch.as_tensor(rng.choice(len(xq), size=min(cfg.block_batch or bsz, len(xq)), replace=False),
                              device=xq.device)
        with (autocast or contextlib.nullcontext)():
            loss = _batch_loss(ql, xt, xq, y, idx, kw, cfg, scale)
        if not torch.isfinite(loss):
            raise SlimedgeError(f"--mode blockwise: the error of layer {i} became {float(loss)}; lower --round-lr "
                                "or --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.block_opt == "sign":
            for g in opt.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.sign_()
        opt.step()
        sched.step()
        for q in qs:
            q.clamp_()
    opt.zero_grad(set_to_none=True)  # the last step's gradients: no longer needed, and a layer's worth of memory
    for q in qs:
        q.end_rounding()
        q.low_memory = low
    out = _apply(ql, xq, kw, bsz, autocast)
    e1 = _error(out, y)
    if not e1 < e0:  # keep the file's fields
        for n, m in mods.items():
            m.qw.load_state_dict(start[n][0], strict=False)
            m.qw.new_codes = start[n][1]
        e1, out = e0, _apply(ql, xq, kw, bsz, autocast)
    return e0, e1, y, out


def _save(folder: str, key: dict, layer: int, qws: dict, errors: list) -> None:
    """Layer ``layer``'s checkpoint: its tuned tensors' fields and codes (``qws``: GGUF name -> QuantWeight) and
    its errors, one file per layer, so each layer writes only what it changed."""
    import torch

    from ..publish import publish_file

    os.makedirs(folder, exist_ok=True)
    state = {"settings": key, "layer": layer, "errors": errors,
             "fields": {n: (q.state_dict(), q.new_codes) for n, q in qws.items()}}
    with publish_file(os.path.join(folder, f"layer-{layer:04d}.pt")) as tmp:
        torch.save(state, tmp)


def _load(folder: str, key: dict, qws: dict) -> tuple[int, list]:
    """Every layer checkpoint of ``folder``, in order: (the next layer to tune, the errors so far)."""
    import torch

    layer, errors = 0, []
    while os.path.isfile(path := os.path.join(folder, f"layer-{layer:04d}.pt")):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise SlimedgeError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
        if state.get("settings") != key or state.get("layer") != layer:
            raise SlimedgeError(f"checkpoint {path} was made with other settings; resume with the same settings or "
                                "start fresh without --resume")
        for n, (sd, new) in state["fields"].items():
            qws[n].load_state_dict(sd, strict=False)
            qws[n].new_codes = new
        layer, errors = layer + 1, errors + list(state["errors"])
    if layer:
        log.info("resuming block-wise tuning at layer %d", layer)
    return layer, errors


def _inputs(model, layers, ids, bsz: int, device) -> list:
    """[(x, h, kw)] per batch of ``bsz`` rows of ``ids``: the hidden states entering ``layers[0]`` and the keyword
    arguments it got (a batch's own: the last one may be smaller)."""
    import torch

    out = []
    for i in range(0, len(ids), bsz):
        x = torch.as_tensor(np.asarray(ids[i:i + bsz]), device=device)
        h, kw = first_layer_input(model, layers, x)
        out.append((x, h.float(), kw))
    return out


def blockwise(cfg, qm, teacher, train, n_train: int, device, key: dict, rank: int,
              progress: Progress, autocast=None, held=None) -> tuple[list, list]:
    """Tune every decoder layer of ``qm.model`` against ``teacher`` (a :class:`~slimedge.tune.stream.WholeTeacher`
    or :class:`~slimedge.tune.stream.StreamedTeacher`; module docstring). Returns the per-layer mean squared output
    error (before, after) on the cached blocks, and for the held-out ids ``held`` (None: none) the teacher's last
    layer outputs ``[(x, h)]`` per batch, carried through every layer in the same pass."""
    import torch

    n_layers = qm.teacher_cfg.num_hidden_layers
    qls = decoder_layers(qm.model, n_layers, cfg.gguf)
    bsz = cfg.batch_size
    n = max(bsz, min(cfg.block_samples, n_train) // bsz * bsz)
    if n_train < bsz:
        raise SlimedgeError(f"--mode blockwise: {n_train} calibration blocks, fewer than --batch-size {bsz}; give "
                            "more data or a smaller --batch-size / --seq-len")
    ckpt = block_checkpoint_path(cfg.output)
    first, errors = _load(ckpt, key, qm.qws) if cfg.resume else (0, [])
    if not cfg.resume:
        shutil.rmtree(ckpt, ignore_errors=True)  # a fresh run: no layer file of an earlier one is left to mix in
    names = {id(q): n for n, q in qm.qws.items()}
    pick = spread(n_train, n)  # the cached blocks spread over all the calibration blocks, not the first n
    with teacher.rest(leave="head"):  # a streamed teacher's embeddings: only while the first inputs are formed
        got = _inputs(teacher.model, teacher.layers, train[pick], bsz, device)
        held_t = [] if held is None else _inputs(teacher.model, teacher.layers, held, bsz, device)
    xt, kw = torch.cat([h for _, h, _ in got]), got[0][2]
    xq = torch.cat([first_layer_input(qm.model, qls, x)[0].float() for x, _, _ in got])
    del got
    progress.start(n_layers, unit="layers", desc="block-wise")
    try:
        for i in range(n_layers):
            t0 = time.monotonic()
            with teacher.layer(i) as tl:
                if i < first:
                    y, out = _apply(tl, xt, kw, bsz), _apply(qls[i], xq, kw, bsz, autocast)
                else:
                    e0, e1, y, out = tune_layer(i, tl, qls[i], xt, xq, kw, cfg, autocast)
                    log.info("layer %d: output error %.3g -> %.3g (%.2fx) in %.1f s", i, e0, e1,
                             e1 / e0 if e0 > 0 else 1.0, time.monotonic() - t0)
                    if rank == 0:
                        mine = {names[id(m.qw)]: m.qw for m in _quant_linears(qls[i]).values()}
                        _save(ckpt, key, i, mine, [(e0, e1)])
                    errors.append((e0, e1))
                held_t = [(x, _apply(tl, h, k, bsz), k) for x, h, k in held_t]
            xq, xt = out, y
            progress.update(1, label=f"layer {i}")
    finally:
        progress.close()
    return errors, [(x, h) for x, h, _ in held_t]
