"""Tune a quantized GGUF against its teacher: learn the block scales, keep the codes, write the same file.

``tune(TuneConfig(gguf=..., teacher=..., data=..., output=...))`` starts from a k-quant or legacy-quant GGUF of
the teacher (or of a student distilled from it) and learns, by gradient descent in torch, every
quantized tensor's block parameters so that the quantized model's next-token distribution matches the
teacher's (forward KL, :func:`slimedge.distill.losses.divergence`, on calibration blocks cut by
:func:`slimedge.distill.data.prepare`). Integer codes do not change unless ``learn_codes`` (then each weight's
code is a float latent rounded to the type's range with a straight-through estimator, written back through
:func:`slimedge.quant.blockfields.pack`'s code bit map; 12 more bytes per weight while tuning). Tensor types,
block layout, metadata and file size stay exactly those of the input, so the result runs wherever it runs.

How:

* **Fields.** Each quantized tensor's blocks are read with :mod:`slimedge.quant.blockfields` (codes +
  ``d``/``dmin`` + integer sub-scales/mins; one formula for every supported type, equal bit for bit to
  ``slimedge.quant.dequantize``). In torch a :class:`QuantWeight` holds the codes (int8) and learns
  ``log(d/d0)`` and ``log(dmin/dmin0)`` (fp32, rounded to fp16 in the forward pass with a straight-through
  estimator, so the forward weights are exactly what the file will hold) and continuous sub-scales/mins
  (rounded and clamped to their integer range, straight-through). Sub-scales get ``sub_lr``.
* **Model** (:mod:`slimedge.distill.tune_model`). The teacher's transformers architecture (``num_hidden_layers``
  from the GGUF's ``block_count``) gets every weight from the GGUF: quantized matrices become
  :class:`QuantLinear` / :class:`QuantEmbedding` modules, everything else (norms, float tensors) is
  dequantized and frozen. GGUF names map to HF names through
  the converter's own table (:meth:`slimedge.arch.base.Arch.tensors`); the converter's layout transform
  (Llama's q/k rope row permutation) is probed on row indices and inverted — blocks run along rows, so rows
  move whole. An architecture whose transform is not a row permutation is refused.
* **Memory.** The file's codes live as int8 (1 byte per weight) plus a few fp32 numbers per block. When the
  model's float weights would take more than ``float_mb`` (256 MiB), each quantized linear layer keeps only
  its input for backward, which rebuilds the matrix from its fields (``LowMemoryLinear``; embeddings run under
  activation checkpointing), so a float matrix exists only while it multiplies: memory is then about the codes
  plus one matrix in float plus activations; smaller models keep their float weights for the step. The teacher (float, as transformers loads it) stays loaded; its log-probabilities on the
  calibration blocks are computed once and cached when they fit ``cache_mb`` (else it runs each step).
* **Warm start** (optional, ``warm_steps``): each matrix alone first minimises its output error
  ``tr(E G E^T)`` against the teacher's weight, ``G`` its inputs' Gram matrix on calibration blocks.
* **Checkpoints** every ``checkpoint_every`` steps next to the output (``resume`` continues bit for bit).
* **Output.** Every tensor is written in file order with :class:`slimedge.writer.GGUFStreamWriter` (atomic,
  :mod:`slimedge.publish`): tuned tensors as their original bytes with the new scale fields packed in
  (:func:`slimedge.quant.blockfields.pack`), all others and every metadata key copied unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from .tune_model import _build, _entries, _modules, _raw, check_vocab  # noqa: F401  (the GGUF as a torch model)

log = logging.getLogger(__name__)


@dataclass
class TuneConfig:
    gguf: str                       # the quantized GGUF to tune
    teacher: str                    # the teacher's Hugging Face folder
    data: str                       # calibration text (anything slimedge.distill.data.prepare reads)
    output: str
    steps: int = 300
    lr: float = 2e-3                # Adam lr of log d / log dmin
    sub_lr: float | None = None     # Adam lr of the sub-scales/mins, in integer units (default 20 x lr)
    batch_size: int = 4
    seq_len: int = 256
    max_blocks: int = 0             # calibration blocks used for training (0: all; fresh blocks beat epochs)
    eval_blocks: int = 4            # held-out blocks for the before/after KL
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    overwrite: bool = False
    data_field: str = "text"
    checkpoint_every: int = 25      # save a resumable checkpoint every this many steps (0: never)
    resume: bool = False            # continue from the checkpoint next to the output
    cache_mb: int = 512             # cache the teacher's log-probs when they fit in this many MiB
    warm_steps: int = 0             # layer-wise warm start: Adam steps per matrix on its output error (0: none)
    warm_blocks: int = 16           # calibration blocks whose teacher activations weigh the warm start
    float_mb: int = 256             # above this many MiB of float weights, rebuild each in backward (checkpoint)
    fsdp_teacher: bool = False      # under torchrun: shard the float teacher across the processes (FSDP2)
    learn_codes: bool = False       # also learn the integer codes (straight-through; +12 bytes per weight)
    codes_lr: float = 5e-3          # Adam lr of the codes' float latents, in code units
    precision: str = "auto"         # training matmuls: fp32, bf16 (autocast), auto (bf16 on CUDA that has it)


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
    step_seconds: float = 0.0                                # wall time of the optimizer steps alone


def _write(cfg: TuneConfig, info, qws, mm) -> None:
    """Copy the GGUF with the tuned tensors' scale fields replaced (same header, same sizes)."""
    from gguf import GGUF_DEFAULT_ALIGNMENT, GGUFReader, Keys

    from ..quant.blockfields import pack, unpack
    from ..source.gguf_src import _field_value
    from ..writer import GGUFStreamWriter

    reader = GGUFReader(cfg.gguf, "r")
    with GGUFStreamWriter(cfg.output, arch="", overwrite=cfg.overwrite, alignment=info.alignment) as w:
        for key, f in reader.fields.items():
            # the writer adds general.alignment itself when it is not the default
            own = key == Keys.General.ALIGNMENT and info.alignment != GGUF_DEFAULT_ALIGNMENT
            if key.startswith("GGUF.") or own:
                continue
            w.add_kv(key, *_field_value(f))
        for t in info.tensors:
            w.add_tensor_info(t.name, t.shape, t.qtype)
        w.begin_data()
        for t in info.tensors:
            raw = _raw(mm, t)
            if t.name in qws:
                raw = pack(qws[t.name].fields(unpack(raw, t.type)), raw, codes=cfg.learn_codes)
            w.write_tensor(t.name, np.ascontiguousarray(raw).reshape(-1))
    del reader


# ---- checkpoints ----------------------------------------------------------------------------------

def checkpoint_path(cfg: TuneConfig) -> str:
    """The resumable checkpoint of a run: next to the output (removed when the output is written)."""
    head, tail = os.path.split(os.path.abspath(cfg.output))
    return os.path.join(head, f".{tail}.tune-checkpoint.pt")


def _settings(cfg: TuneConfig) -> dict:
    st = os.stat(cfg.gguf)
    return {"gguf": f"{os.path.abspath(cfg.gguf)}:{st.st_size}:{st.st_mtime_ns}",
            "teacher": os.path.abspath(cfg.teacher),
            "data": os.path.abspath(cfg.data), "steps": cfg.steps, "lr": cfg.lr, "sub_lr": cfg.sub_lr,
            "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "max_blocks": cfg.max_blocks, "seed": cfg.seed,
            "warm_steps": cfg.warm_steps, "precision": cfg.precision, "learn_codes": cfg.learn_codes, "codes_lr": cfg.codes_lr}


def _save_checkpoint(path: str, state: dict) -> None:
    import torch

    from ..publish import publish_file

    with publish_file(path) as tmp:  # a crash mid-save keeps the previous checkpoint
        torch.save(state, tmp)


def _load_checkpoint(path: str, key: dict, device) -> dict:
    import torch

    if not os.path.isfile(path):
        raise SlimedgeError(f"--resume: no checkpoint {path}; run without --resume")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise SlimedgeError(f"cannot read checkpoint {path}: {' '.join(str(exc).split())[:200]}") from None
    diff = [k for k in key if state["settings"].get(k) != key[k]]
    if diff:
        raise SlimedgeError(f"checkpoint {path} was made with other {', '.join(diff)}; resume with the same "
                            "settings or start fresh without --resume")
    return state


# ---- training -----------------------------------------------------------------------------------------

def _logprobs(model, x):
    import torch

    return torch.log_softmax(model(input_ids=x).logits.float(), -1)


def _chunks(n: int, dist, sharded: bool):
    """The chunks ``c`` (``c % world == rank``) of ``n`` this process runs; with a sharded teacher, ``None`` pads
    the list so that every process runs the same number of teacher forwards (each one is a collective)."""
    for r in range(-(-n // dist.world)):
        c = r * dist.world + dist.rank
        if c < n:
            yield c
        elif sharded:
            yield None


class _Teacher:
    """The teacher's log-probabilities ``[B, L, V]`` (its head transform applied), whole or FSDP-sharded."""

    def __init__(self, model, config, sharded: bool, pad_block):
        from .losses import HeadTransform

        self.model, self.head, self.sharded, self.pad = model, HeadTransform.from_config(config), sharded, pad_block

    def __call__(self, x):
        import torch

        from .fsdp import teacher_forward
        from .losses import head_logits

        h, _, w = teacher_forward(self.model, x)
        return torch.log_softmax(head_logits(h, w, self.head), -1)

    def join(self) -> None:
        """A forward whose result is dropped: this process's part in a collective it has no block for."""
        self(self.pad)


def _mean_kl(model, teacher: _Teacher, blocks, batch: int, device, dist) -> float:
    """Mean per-token KL(teacher || model) over ``blocks``: batch ``c`` on process ``c % world``, summed."""
    import torch

    from .losses import divergence

    acc = torch.zeros(2, dtype=torch.float64, device=device)
    starts = range(0, len(blocks), batch)
    with torch.no_grad():
        for c in _chunks(len(starts), dist, teacher.sharded):
            if c is None:
                teacher.join()
                continue
            i = starts[c]
            x = torch.as_tensor(np.asarray(blocks[i:i + batch]), device=device)
            t = teacher(x)
            s = _logprobs(model, x)
            kl = divergence(t.reshape(-1, t.shape[-1]), s.reshape(-1, s.shape[-1]), "fkl")
            acc[0] += kl.double().sum()
            acc[1] += kl.numel()
    tot, n = dist.all_reduce_(acc).tolist()
    return tot / max(n, 1)


def _teacher_cache(teacher: _Teacher, train, n_train: int, cfg: TuneConfig, vocab: int, device, dist):
    """The teacher's log-probs of every training block ``[n_train, seq, vocab]`` when they fit ``cache_mb``, else
    None. Batch ``c`` (always the same blocks, as one process would run them) on process ``c % world``, then
    broadcast, so every process holds the same cache."""
    import torch

    if n_train * cfg.seq_len * vocab * 4 > cfg.cache_mb << 20:
        return None
    cache = torch.empty((n_train, cfg.seq_len, vocab), dtype=torch.float32, device=device)
    spans = [(i, min(i + cfg.batch_size, n_train)) for i in range(0, n_train, cfg.batch_size)]
    with torch.no_grad():
        for c in _chunks(len(spans), dist, teacher.sharded):
            if c is None:
                teacher.join()
                continue
            i, j = spans[c]
            cache[i:j] = teacher(torch.as_tensor(train[i:j], device=device))
    for c, (i, j) in enumerate(spans):
        dist.broadcast_(cache[i:j], src=c % dist.world)
    return cache


def _all_reduce_grads(params, dist) -> None:
    """Sum the gradients over the processes (one flat buffer); a parameter without a gradient counts as zero."""
    import torch

    if dist.world == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce_(flat)
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p)  # a fresh buffer every step: views need no copy
        at += n


def tune(cfg: TuneConfig, progress: Progress = NULL_PROGRESS) -> TuneResult:
    """Tune ``cfg.gguf`` against ``cfg.teacher`` on ``cfg.data``; writes ``cfg.output`` (see the module docstring).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process holds the model and the teacher and takes its share of
    each step's calibration blocks (``batch_size`` blocks in all); gradients are summed, so every process makes
    the same update; process 0 writes the output and checkpoints, and gets the result (the others get one
    with ``output=""``). ``fsdp_teacher`` shards the float teacher's weights across the processes (FSDP2, one
    unit per decoder layer, as ``distill --fsdp-teacher``), for teachers that do not fit one device.
    """
    import torch

    from ..writer import check_output_path
    from .api import _Dist

    check_output_path(Path(cfg.output), cfg.overwrite)
    if cfg.steps < 0 or cfg.batch_size < 1 or cfg.seq_len < 2:
        raise SlimedgeError("tune: --steps must be >= 0, --batch-size >= 1, --seq-len >= 2")
    cuda = cfg.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SlimedgeError("--device cuda: no CUDA device is available to torch; use --device cpu")
    dist = _Dist(cuda)
    try:
        if cfg.fsdp_teacher and cfg.warm_steps:
            raise SlimedgeError("--warm-steps needs the teacher's whole weights: leave out --fsdp-teacher or "
                                "--warm-steps")
        if cfg.batch_size < dist.world:
            raise SlimedgeError(f"--batch-size {cfg.batch_size} is smaller than the {dist.world} processes: each "
                                "process needs at least one block per step; raise --batch-size")
        return _tune(cfg, dist, progress if dist.rank == 0 else NULL_PROGRESS)
    finally:
        dist.close()


def _tune(cfg: TuneConfig, dist, progress: Progress) -> TuneResult:
    import torch

    from ..gguf_info import read_info
    from .api import _blocks, _device, _load_teacher, load_teacher_meta
    from .losses import divergence
    from .tune_warm import input_grams, warm_start

    t0 = time.monotonic()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dev = _device(cfg, dist, cfg.device.startswith("cuda"))  # as distill: cuda:LOCAL_RANK, bf16 autocast where asked
    device = dev.device
    info = read_info(cfg.gguf)
    teacher_cfg, tokenizer = load_teacher_meta(cfg.teacher)
    check_vocab(info, tokenizer, teacher_cfg, cfg.gguf, cfg.teacher)
    entries, scfg = _entries(info, teacher_cfg, cfg.teacher, cfg.gguf)
    mm = np.memmap(cfg.gguf, dtype=np.uint8, mode="r")
    model, qws = _build(cfg, info, entries, scfg, mm)
    low = sum(q.rows * q.cols for q in qws.values()) * 4 > cfg.float_mb << 20
    for q in qws.values():
        q.low_memory = low
    model.to(device).train()
    blocks = _blocks(cfg.data, tokenizer, cfg.seq_len, dist, progress, field=cfg.data_field)
    train = blocks.train  # a memory-mapped view: rows are read when a step takes them
    n_train = min(len(train), cfg.max_blocks) if cfg.max_blocks else len(train)
    held = np.asarray(blocks.eval[:cfg.eval_blocks])
    sharded = cfg.fsdp_teacher and dist.world > 1
    if cfg.fsdp_teacher and not sharded:
        log.info("--fsdp-teacher: one process, so the teacher stays whole (run under torchrun to shard it)")
    teacher = _load_teacher(cfg.teacher, torch.float32, device, sharded)[0]  # fp32: the targets as the file's KL
    pad = torch.as_tensor(np.asarray(train[:1]), device=device)
    tlp = _Teacher(teacher, teacher_cfg, sharded, pad)
    vocab = teacher_cfg.vocab_size
    cache = _teacher_cache(tlp, train, n_train, cfg, vocab, device, dist)

    # training steps in bf16 autocast where asked (the fields, the written file and the reported KL stay fp32)
    autocast = dev.autocast or contextlib.nullcontext

    def teacher_train(rows, x):
        if cache is not None:
            return cache[torch.as_tensor(rows, device=device)]
        with torch.no_grad(), autocast():
            return tlp(x).float()

    kl_before = _mean_kl(model, tlp, held, cfg.batch_size, device, dist)
    sub_lr = cfg.sub_lr if cfg.sub_lr is not None else 20 * cfg.lr
    # a student has no float reference to warm-start against
    if cfg.warm_steps and not cfg.resume and scfg is teacher_cfg:
        names = {e.hf.rsplit(".", 1)[0] for e in entries if e.name in qws}
        grams = input_grams(teacher, names, train[:min(n_train, cfg.warm_blocks)], cfg.batch_size, device, dist)
        left = warm_start(qws, entries, teacher, grams, cfg.warm_steps, 10 * cfg.lr, 10 * sub_lr, progress)
        log.info("warm start: output error of %d matrices down to %.3f of the start on average", len(left),
                 float(np.mean(list(left.values()))) if left else 1.0)
        del grams
    scale_p = [p for q in qws.values() for p in q.scale_parameters()]
    sub_p = [p for q in qws.values() for p in q.sub_parameters()]
    code_p = [p for q in qws.values() for p in q.code_parameters()]
    groups = [{"params": scale_p, "lr": cfg.lr}] + ([{"params": sub_p, "lr": sub_lr}] if sub_p else []) + \
        ([{"params": code_p, "lr": cfg.codes_lr}] if code_p else [])
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / max(cfg.steps, 1))))
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    first = last = float("nan")

    ckpt, key, start = checkpoint_path(cfg), _settings(cfg), 0
    if cfg.resume:
        state = _load_checkpoint(ckpt, key, device)
        for name, qw in qws.items():
            qw.load_state_dict(state["fields"][name], strict=False)
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        start, order, first = int(state["step"]), list(state["order"]), float(state["first"])
        log.info("resuming %s at step %d", ckpt, start)
    params = scale_p + sub_p + code_p
    progress.start(cfg.steps, unit="steps", desc="tune")
    progress.update(start)
    t_steps = time.monotonic()
    try:
        for step in range(start, cfg.steps):
            if cfg.checkpoint_every and step > start and step % cfg.checkpoint_every == 0 and dist.rank == 0:
                _save_checkpoint(ckpt, {"settings": key, "step": step, "order": order, "first": first,
                                        "rng": rng.bit_generator.state, "optim": opt.state_dict(),
                                        "sched": sched.state_dict(),
                                        "fields": {n: {k: v for k, v in q.named_parameters()} for n, q in qws.items()}})
            if len(order) < cfg.batch_size:
                order += list(rng.permutation(n_train))
            rows, order = order[:cfg.batch_size], order[cfg.batch_size:]
            mine = rows[dist.rank::dist.world]  # this process's share of the step's blocks
            x = torch.as_tensor(train[np.asarray(mine)], device=device)
            t = teacher_train(mine, x)
            with autocast():
                s = _logprobs(model, x)
            # the step's mean over all its tokens: each process adds its share, the gradients are summed
            loss = divergence(t.reshape(-1, vocab), s.reshape(-1, s.shape[-1]), "fkl").sum() / (len(rows) * cfg.seq_len)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _all_reduce_grads(params, dist)
            opt.step()
            sched.step()
            for q in qws.values():
                q.clamp_()
            last = float(dist.all_reduce_(loss.detach().clone()))
            first = last if step == 0 else first
            progress.update(1, label=f"kl {last:.4f}")
    finally:
        progress.close()
    t_steps = time.monotonic() - t_steps
    model.eval()
    kl_after = _mean_kl(model, tlp, held, cfg.batch_size, device, dist)
    log.info("tune: held-out KL %.5f -> %.5f (%d steps)", kl_before, kl_after, cfg.steps)
    if dist.rank == 0:
        _write(cfg, info, qws, mm)
        if os.path.isfile(ckpt):
            os.remove(ckpt)
    dist.barrier()
    counts: dict[str, int] = {}
    for q in qws.values():
        counts[q.qtype.name] = counts.get(q.qtype.name, 0) + 1
    return TuneResult(cfg.output if dist.rank == 0 else "", kl_before, kl_after, first, last,
                      round(time.monotonic() - t0, 2), counts, len(info.tensors) - len(qws), round(t_steps, 2))
