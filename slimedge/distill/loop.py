"""One training loop for ``distill`` and ``tune``: optimizer, LR schedule, gradient sum, checkpoints, progress.

A training describes its steps as a :class:`StepWork` (its parameter groups, each step's forward and backward,
what else its checkpoint holds); :class:`TrainLoop` does the rest, the same way for both:

* **Optimizer**: AdamW over the work's parameter groups (each group its ``lr`` and ``weight_decay``; a group
  without weight decay is exactly Adam), ``betas``/``eps`` from :class:`LoopSettings`.
* **Schedule**: ``LambdaLR`` with the settings' multiplier (:func:`lr_lambda`: linear warmup, then cosine).
* **Processes** (torchrun, :class:`~slimedge.distill.runtime.ProcessGroup`): the trained parameters start as
  process 0's; after each backward the gradients are summed over the processes in one flat buffer (a parameter
  without a gradient counts as zero), so every process makes the same update. Each process's loss is its share
  of the step's mean (the work divides by the global count), so the sums are the one-process step.
* **Checks**: the gradient norm (clipped to ``clip`` when > 0) and the loss must be finite; otherwise the last
  good state is saved and a :class:`SlimedgeError` says where and what to do.
* **Checkpoints** every ``checkpoint_every`` steps (process 0; atomic, :mod:`slimedge.publish`): step, tokens,
  first loss, optimizer, schedule, the settings a resumed run must match, and the work's own state (weights,
  data order). ``resume`` continues bit for bit.
* **Progress**: one unit per step on process 0, labelled with the step's loss (``metric``) and tokens/s.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from .runtime import ProcessGroup, one_line

log = logging.getLogger(__name__)


def lr_lambda(total: int, warmup: float, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak lr at step ``s``: linear warmup (a fraction of ``total`` when < 1, else steps), then
    cosine down to ``min_ratio`` at ``total``."""
    w = int(round(warmup * total)) if warmup < 1 else int(warmup)
    w = min(w, max(total - 1, 0))

    def f(s: int) -> float:
        if s < w:
            return (s + 1) / (w + 1)
        p = (s - w) / max(1, total - w)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    return f


@dataclass
class LoopSettings:
    total: int                                   # optimizer steps of the whole run
    checkpoint: str                              # the checkpoint file
    schedule: Callable[[int], float] | None = None  # lr multiplier per step (None: constant)
    checkpoint_every: int = 0                    # save every this many steps (0: never)
    resume: bool = False                         # continue from ``checkpoint``
    key: dict = field(default_factory=dict)      # settings a checkpoint must have been made with
    clip: float = 0.0                            # clip the gradient norm to this (0: no clipping)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    tokens_per_step: int = 0                     # for tokens seen and tokens/s
    desc: str = "train"                          # progress label of the run
    metric: str = "loss"                         # progress label of a step's value
    advice: str = "lower --lr"                   # what to change when the loss diverges


@dataclass
class TrainResult:
    steps: int = 0
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)   # the steps of this run (not those before a resume)
    first_loss: float = float("nan")                     # step 1's loss (kept across a resume)
    wall_s: float = 0.0
    resumed_from: int = 0
    peak_memory_bytes: int | None = None


class StepWork(Protocol):
    """What a training gives :class:`TrainLoop`."""

    def param_groups(self) -> list[dict]:
        """Optimizer groups: ``params``, ``lr`` and optionally ``weight_decay`` (default 0)."""

    def backward(self, step: int):
        """Run this process's share of step ``step`` forward and backward (gradients into ``.grad``); returns its
        share of the step's loss as a detached scalar tensor (the shares sum to the step's loss)."""

    def state(self) -> dict:
        """What else a checkpoint holds (weights, data order)."""

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state`."""

    def after_update(self) -> None:
        """Called after every optimizer step (e.g. clamp parameters to their range)."""


class TrainLoop:
    """Runs ``settings.total`` steps of ``work``; see the module docstring."""

    def __init__(self, settings: LoopSettings, work: StepWork, group: ProcessGroup, *, device="cpu",
                 progress: Progress = NULL_PROGRESS):
        import torch

        self.s, self.work, self.group, self.device = settings, work, group, device
        self.progress = progress if group.rank == 0 else NULL_PROGRESS
        groups = [dict(g, weight_decay=g.get("weight_decay", 0.0)) for g in work.param_groups() if g["params"]]
        self.params = [p for g in groups for p in g["params"]]
        self.optim = torch.optim.AdamW(groups, lr=groups[0]["lr"] if groups else 0.0, betas=settings.betas,
                                       eps=settings.eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, settings.schedule or (lambda s: 1.0))
        with torch.no_grad():  # every process starts from process 0's parameters
            for p in self.params:
                group.broadcast_(p.data, src=0)
        self.step, self.tokens, self.first = 0, 0, float("nan")

    # ---- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Process 0 writes the state after ``self.step`` steps (a crash mid-save keeps the previous file)."""
        import torch

        from ..publish import publish_file

        if self.group.rank != 0:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.s.checkpoint)), exist_ok=True)
        state = {"step": self.step, "tokens": self.tokens, "first": self.first, "settings": self.s.key,
                 "optim": self.optim.state_dict(), "sched": self.sched.state_dict(), "work": self.work.state()}
        with publish_file(self.s.checkpoint) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> None:
        import torch

        f = self.s.checkpoint
        if not os.path.isfile(f):
            raise SlimedgeError(f"--resume: no checkpoint {f}; run without --resume")
        try:
            state = torch.load(f, map_location=self.device, weights_only=False)
        except Exception as exc:  # corrupt file: say which
            raise SlimedgeError(f"cannot read checkpoint {f}: {one_line(exc, 200)}") from None
        diff = [k for k in self.s.key if state.get("settings", {}).get(k) != self.s.key[k]]
        if diff or "work" not in state:
            raise SlimedgeError(f"checkpoint {f} was made with other {', '.join(diff) or 'software'}; "
                                "resume with the same settings or start fresh without --resume")
        self.work.load_state(state["work"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.step, self.tokens, self.first = int(state["step"]), int(state["tokens"]), float(state["first"])
        log.info("resuming %s at step %d", f, self.step)

    # ---- one step ----------------------------------------------------------------------------------
    def sync_grads(self) -> None:
        """Sum the gradients over the processes (one flat buffer); a parameter without a gradient counts as zero."""
        import torch

        if self.group.world == 1:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        self.group.all_reduce_(flat)
        at = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[at:at + n].view_as(p)  # a fresh buffer every step: views need no copy
            at += n

    def _check(self, value: float, gnorm: float) -> None:
        if math.isfinite(value) and math.isfinite(gnorm):
            return
        self.optim.zero_grad(set_to_none=True)
        self.save_checkpoint()
        what, bad = ("loss", value) if not math.isfinite(value) else ("gradient norm", gnorm)
        raise SlimedgeError(
            f"training stopped: the {what} became {bad} at step {self.step + 1}; the last good state (step "
            f"{self.step}) is saved in {self.s.checkpoint}; {self.s.advice} and run again with --resume")

    def train_step(self) -> float:
        """One optimizer step; the step's loss (summed over the processes)."""
        import torch

        self.optim.zero_grad(set_to_none=True)  # whatever ran before (a warm start) leaves no gradient behind
        share = self.work.backward(self.step)
        self.sync_grads()
        # on the device: NCCL sums CUDA tensors only
        value = float(self.group.all_reduce_(share.detach().double().reshape(1).to(self.device, copy=True)))
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.s.clip if self.s.clip > 0 else float("inf"))
        self._check(value, float(gnorm))
        self.optim.step()
        self.sched.step()
        self.optim.zero_grad(set_to_none=True)
        self.work.after_update()
        self.first = value if self.step == 0 else self.first
        self.step += 1
        self.tokens += self.s.tokens_per_step
        return value

    def run(self) -> TrainResult:
        """All steps (from the checkpoint with ``resume``), with checkpoints and progress; their figures."""
        import torch

        res = TrainResult()
        if self.s.resume:
            self.load_checkpoint()
            res.resumed_from = self.step
        t0, tok0 = time.monotonic(), self.tokens
        self.progress.start(self.s.total, "step", self.s.desc)
        if self.step:
            self.progress.update(self.step, label="resumed")
        try:
            while self.step < self.s.total:
                value = self.train_step()
                res.losses.append(value)
                dt = max(time.monotonic() - t0, 1e-9)
                self.progress.update(1, label=f"{self.s.metric} {value:.4f}",
                                     **{"tok/s": f"{(self.tokens - tok0) / dt:.0f}"})
                if self.s.checkpoint_every and self.step % self.s.checkpoint_every == 0 and self.step < self.s.total:
                    self.save_checkpoint()
        finally:
            self.progress.close()
        res.steps, res.tokens_seen, res.first_loss = self.step, self.tokens, self.first
        res.wall_s = time.monotonic() - t0
        if torch.cuda.is_available() and str(self.device).startswith("cuda"):
            res.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
        return res
