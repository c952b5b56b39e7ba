"""The teacher's side of tuning: its log-probabilities, their cache, and the mean KL of the quantized model.

* :class:`TeacherLogprobs` — the teacher's log-probabilities ``[B, L, V]`` (its head transform applied), whole or
  FSDP-sharded (:func:`slimedge.distill.fsdp.teacher_forward`); a sharded teacher's every forward is a collective,
  so a process with no block of its own joins it on a padding block (:meth:`TeacherLogprobs.join`).
* :func:`teacher_cache` — those of every training block, computed once when they fit ``cache_mb``: batch ``c``
  on process ``c % world``, then broadcast, so every process holds the same cache.
* :func:`mean_kl` — mean per-token KL(teacher || model) over held-out blocks, split over the processes and summed.
* :class:`WholeTeacherSide` — the teacher loaded whole for the KL steps (and for block-wise tuning where it cannot
  be streamed): its log-probs, their cache, the training targets.
* :func:`batch_logprobs` / :func:`streamed_kl` — the same KL where the teacher is streamed layer by layer
  (:mod:`.stream`): the model's log-probs kept from before tuning, the teacher's formed batch by batch at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def logprobs(model, x):
    """The model's log-probabilities of the ids ``x``, in fp32."""
    import torch

    return torch.log_softmax(model(input_ids=x).logits.float(), -1)


def process_chunks(n: int, group, sharded: bool):
    """The chunks ``c`` (``c % world == rank``) of ``n`` this process runs; with a sharded teacher, ``None`` pads
    the list so that every process runs the same number of teacher forwards (each one is a collective)."""
    for r in range(-(-n // group.world)):
        c = r * group.world + group.rank
        if c < n:
            yield c
        elif sharded:
            yield None


class TeacherLogprobs:
    """The teacher's log-probabilities ``[B, L, V]`` (its head transform applied), whole or FSDP-sharded."""

    def __init__(self, model, config, sharded: bool, pad_block):
        from ..distill.losses import HeadTransform

        self.model, self.head, self.sharded, self.pad = model, HeadTransform.from_config(config), sharded, pad_block

    def __call__(self, x, inputs_embeds=None):
        import torch

        from ..distill.fsdp import teacher_forward
        from ..distill.losses import head_logits

        h, _, w = teacher_forward(self.model, x, inputs_embeds=inputs_embeds)
        return torch.log_softmax(head_logits(h, w, self.head), -1)

    def join(self) -> None:
        """A forward whose result is dropped: this process's part in a collective it has no block for."""
        self(self.pad)


def _kl_sum(t, s) -> tuple[float, int]:
    """(sum of the per-token KL(t || s), tokens) of log-probabilities ``[..., V]``, the sum in float64."""
    from ..distill.losses import divergence

    kl = divergence(t.reshape(-1, t.shape[-1]), s.reshape(-1, s.shape[-1]), "fkl")
    return float(kl.double().sum()), kl.numel()


def mean_kl(model, teacher: TeacherLogprobs, blocks, batch: int, device, group) -> float:
    """Mean per-token KL(teacher || model) over ``blocks``: batch ``c`` on process ``c % world``, summed."""
    import torch

    acc = torch.zeros(2, dtype=torch.float64, device=device)
    starts = range(0, len(blocks), batch)
    with torch.no_grad():
        for c in process_chunks(len(starts), group, teacher.sharded):
            if c is None:
                teacher.join()
                continue
            i = starts[c]
            x = torch.as_tensor(np.asarray(blocks[i:i + batch]), device=device)
            acc += torch.tensor(_kl_sum(teacher(x), logprobs(model, x)), dtype=torch.float64, device=device)
    tot, n = group.all_reduce_(acc).tolist()
    return tot / max(n, 1)


def teacher_cache(teacher: TeacherLogprobs, train, n_train: int, *, seq_len: int, vocab: int, batch: int,
                  cache_mb: int, device, group):
    """The teacher's log-probs of every training block ``[n_train, seq_len, vocab]`` when they fit ``cache_mb``,
    else None. Batch ``c`` (always the same blocks, as one process would run them) on process ``c % world``, then
    broadcast, so every process holds the same cache."""
    import torch

    if n_train * seq_len * vocab * 4 > cache_mb << 20:
        return None
    cache = torch.empty((n_train, seq_len, vocab), dtype=torch.float32, device=device)
    spans = [(i, min(i + batch, n_train)) for i in range(0, n_train, batch)]
    with torch.no_grad():
        for c in process_chunks(len(spans), group, teacher.sharded):
            if c is None:
                teacher.join()
                continue
            i, j = spans[c]
            cache[i:j] = teacher(torch.as_tensor(train[i:j], device=device))
    for c, (i, j) in enumerate(spans):
        group.broadcast_(cache[i:j], src=c % group.world)
    return cache


@dataclass
class WholeTeacherSide:
    """The teacher held whole in fp32 (FSDP-sharded under ``--fsdp-teacher``): the model, its log-probabilities, and
    those of the training blocks, cached when the KL steps will read them and they fit ``cache_mb``."""
    teacher: object
    tlp: TeacherLogprobs
    cache: object         # [n_train, seq_len, vocab] or None
    autocast: object      # factory of the training steps' autocast context
    device: object

    @classmethod
    def load(cls, cfg, config, train, n_train: int, dev, group) -> "WholeTeacherSide":
        """``cfg``: the :class:`~slimedge.tune.TuneConfig`; ``config``: the teacher's; ``dev``: the picked device."""
        import contextlib

        import torch

        from ..distill.runtime import load_teacher

        device = dev.device
        sharded = cfg.fsdp_teacher and group.world > 1
        if cfg.fsdp_teacher and not sharded:
            log.info("--fsdp-teacher: one process, so the teacher stays whole (run under torchrun to shard it)")
        teacher = load_teacher(cfg.teacher, torch.float32, device, sharded)[0]  # fp32: the targets as the file's KL
        tlp = TeacherLogprobs(teacher, config, sharded, torch.as_tensor(np.asarray(train[:1]), device=device))
        cache = None if cfg.steps == 0 else teacher_cache(  # no KL steps (blockwise alone): nothing reads it
            tlp, train, n_train, seq_len=cfg.seq_len, vocab=config.vocab_size, batch=cfg.batch_size,
            cache_mb=cfg.cache_mb, device=device, group=group)
        # training steps in bf16 autocast where asked (the fields, the written file and the reported KL stay fp32)
        return cls(teacher, tlp, cache, dev.autocast or contextlib.nullcontext, device)

    def targets(self, rows, x):
        """The teacher's log-probs of the training blocks ``rows`` (ids ``x``): cached, or computed now."""
        import torch

        if self.cache is not None:
            return self.cache[torch.as_tensor(rows, device=self.device)]
        with torch.no_grad(), self.autocast():
            return self.tlp(x).float()


def batch_logprobs(model, blocks, batch: int, device) -> list:
    """The model's fp32 log-probabilities of ``blocks``, one ``[b, L, V]`` tensor per batch of ``batch`` rows."""
    import torch

    with torch.no_grad():
        return [logprobs(model, torch.as_tensor(np.asarray(blocks[i:i + batch]), device=device))
                for i in range(0, len(blocks), batch)]


def streamed_kl(stream, held_h: list, before: list, model=None) -> tuple[float, float | None]:
    """Mean per-token KL(teacher || model) on the held-out blocks for a streamed teacher: ``held_h`` its last
    layer's outputs ``[(x, h)]`` per batch (:func:`slimedge.tune.blockwise.blockwise`), ``before`` the model's
    log-probs of the same batches before tuning (:func:`batch_logprobs`). Returns (KL before, KL of ``model`` now,
    or None when no model is given)."""
    import torch

    acc = np.zeros((2, 2))
    with torch.no_grad(), stream.rest(leave="embedding"):
        for (x, h), b in zip(held_h, before):
            t = stream.logprobs(h)
            acc[0] += _kl_sum(t, b)
            if model is not None:
                acc[1] += _kl_sum(t, logprobs(model, x))
    return acc[0, 0] / max(acc[0, 1], 1), (acc[1, 0] / max(acc[1, 1], 1) if model is not None else None)
