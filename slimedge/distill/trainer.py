"""The training loop: AdamW, warmup + cosine, accumulation, clipping, checkpoints, DDP (+ FSDP teacher).

One optimizer step takes ``batch_size`` sequences (global: split evenly across processes, then into
``grad_accum`` micro-batches). The loss of a step is the sum over its counted positions divided by
their number, so one process and N processes compute the same update (DDP averages gradients; each
process scales its share by N). Data order is a seeded permutation per epoch, so a run and a
resumed run see the same batches. With ``on_policy`` (GKD's lambda) a seeded coin per step decides
whether the student first samples the continuations of the batch's prompts (:mod:`.on_policy`); the
count of positions is then summed across processes before the update. A NaN/Inf loss or gradient stops the run before the update:
the last good state is saved as a checkpoint and a :class:`SlimedgeError` says where.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..publish import publish_file
from .fsdp import teacher_forward
from .losses import HeadTransform, LossSpec, chunked_head_loss, feature_loss, head_logits

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    ids: np.ndarray                    # [n, L] int64 on indexing (an array or a memory-mapped data.BlockView)
    loss_mask: np.ndarray | None       # [n, L-1] float32: 1 where predicting the next token counts
    #                                    (None: every position that predicts a token after the prompt)
    attention: np.ndarray | None = None  # [n, L] int64 or None (all ones)
    prompt_len: int = 0                # tokens of prompt per row: never counted; on-policy steps continue them
    eos_id: int | None = None          # on-policy samples count up to their first EOS ...
    pad_id: int = 0                    # ... and are padded with this after it

    def mask(self, rows) -> np.ndarray:
        """loss mask [len(rows), L-1] float32 of ``rows``."""
        if self.loss_mask is not None:
            return self.loss_mask[rows]
        m = np.ones((len(rows), self.ids.shape[1] - 1), np.float32)
        m[:, : max(self.prompt_len - 1, 0)] = 0
        return m


@dataclass
class TrainResult:
    steps: int = 0
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    resumed_from: int = 0
    peak_memory_bytes: int | None = None


def _base(model):
    return getattr(model, model.base_model_prefix)


def _import_torch():
    import torch
    import torch.nn as nn

    return torch, nn


def make_module(student, spec: LossSpec, chunk: int, feature_pairs: list[tuple[int, int]] | None,
                teacher_hidden: int | None, feature_kind: str = "mse", closed_form: bool = True):
    """The student plus learned feature projections, as one module whose forward returns the loss."""
    torch, nn = _import_torch()

    class _DistillModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            self.pairs = feature_pairs or []
            self.head = HeadTransform.from_config(student.config)  # what its forward does to h·Wᵀ
            hs = student.config.hidden_size
            if self.pairs and teacher_hidden and teacher_hidden != hs:
                self.proj = nn.ModuleList([nn.Linear(hs, teacher_hidden, bias=False) for _ in self.pairs])
            else:
                self.proj = None

        def forward(self, input_ids, attention_mask, loss_mask, norm, teacher_chunk=None, t_states=None,
                    feature_weight=0.0):
            # input_ids [B, L]; loss_mask [B, L-1]; t_states: teacher hidden_states tuple (feature KD)
            want = bool(self.pairs) and t_states is not None and feature_weight > 0
            out = _base(self.student)(input_ids=input_ids, attention_mask=attention_mask,
                                      output_hidden_states=want)
            h = out.last_hidden_state[:, :-1]
            W = self.student.get_output_embeddings().weight
            loss, sums = chunked_head_loss(h, W, input_ids[:, 1:], loss_mask, spec, chunk, teacher_chunk,
                                           closed_form=closed_form, head=self.head)
            feat = loss.new_zeros(())
            if want:
                s_list = [out.hidden_states[i + 1][:, :-1] for i, _ in self.pairs]
                t_list = [t_states[j + 1][:, :-1] for _, j in self.pairs]
                projs = list(self.proj) if self.proj is not None else None
                feat = feature_loss(s_list, t_list, projs, loss_mask, feature_kind)
                loss = loss + feature_weight * feat
            return loss / norm, sums.detach(), feat.detach()

    return _DistillModule()


def lr_lambda(total: int, warmup: float, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak lr at step ``s``: linear warmup, then cosine down to ``min_ratio``."""
    w = int(round(warmup * total)) if warmup < 1 else int(warmup)
    w = min(w, max(total - 1, 0))

    def f(s: int) -> float:
        if s < w:
            return (s + 1) / (w + 1)
        p = (s - w) / max(1, total - w)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    return f


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_rows(step: int, batch: int, n: int, seed: int) -> np.ndarray:
    """Rows of global step ``step``: a seeded permutation per epoch, read as one stream."""
    start = step * batch
    rows = []
    while len(rows) < batch:
        epoch, off = divmod(start + len(rows), n)
        perm = _permutation(seed, epoch, n)
        rows.extend(perm[off: off + batch - len(rows)].tolist())
    return np.asarray(rows, dtype=np.int64)


class Trainer:
    """Runs the optimization; see the module docstring. ``teacher`` may be None (cache or CE only)."""

    def __init__(self, cfg, module, data: TrainData, total_steps: int, *, teacher=None, cache=None,
                 device="cpu", autocast=None, rank: int = 0, world: int = 1,
                 progress: Progress = NULL_PROGRESS, settings_key: dict | None = None):
        torch, nn = _import_torch()
        self.cfg, self.module, self.data, self.total = cfg, module, data, total_steps
        self.teacher, self.cache, self.device = teacher, cache, device
        self.autocast = autocast or contextlib.nullcontext
        self.rank, self.world, self.progress = rank, world, progress
        self.settings_key = settings_key or {}
        if cfg.batch_size % (world * cfg.grad_accum):
            raise SlimedgeError(f"--batch-size {cfg.batch_size} must be a multiple of processes ({world}) "
                                f"x --grad-accum ({cfg.grad_accum})")
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        self.optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                        {"params": no_decay, "weight_decay": 0.0}],
                                       lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lr_lambda(total_steps, cfg.warmup,
                                                                              cfg.min_lr_ratio))
        self.ddp = None
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(module, find_unused_parameters=False)
        self.step = 0
        self.tokens = 0
        self.ckpt_dir = cfg.checkpoint_path()

    # ---- checkpoints ---------------------------------------------------------------------
    def _ckpt_file(self) -> str:
        return os.path.join(self.ckpt_dir, "checkpoint.pt")

    def save_checkpoint(self) -> None:
        torch, _ = _import_torch()
        if self.rank != 0:
            return
        os.makedirs(self.ckpt_dir, exist_ok=True)
        state = {"step": self.step, "tokens": self.tokens, "module": self.module.state_dict(),
                 "optim": self.optim.state_dict(), "sched": self.sched.state_dict(),
                 "settings": self.settings_key}
        with publish_file(self._ckpt_file()) as tmp:  # a crash mid-save keeps the previous checkpoint
            torch.save(state, tmp)

    def load_checkpoint(self) -> None:
        torch, _ = _import_torch()
        f = self._ckpt_file()
        if not os.path.isfile(f):
            raise SlimedgeError(f"--resume: no checkpoint in {self.ckpt_dir}; run without --resume "
                                "(or pass --checkpoint-dir)")
        try:
            state = torch.load(f, map_location=self.device, weights_only=False)
        except Exception as exc:  # corrupt file: say which
            raise SlimedgeError(f"cannot read checkpoint {f}: {exc}") from None
        diff = [k for k in self.settings_key if state["settings"].get(k) != self.settings_key[k]]
        if diff:
            raise SlimedgeError(f"checkpoint {f} was made with other {', '.join(diff)}; "
                                "resume with the same settings or start fresh without --resume")
        self.module.load_state_dict(state["module"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])

    # ---- one step ------------------------------------------------------------------------
    def _teacher_chunk(self, rows, x, attn):
        torch, _ = _import_torch()
        import torch.nn.functional as F

        T = self.cfg.temperature
        if self.cache is not None:
            return (lambda s0, s1: self.cache.chunk("train", rows, s0, s1, self.device)), None
        want_logits = self.cfg.alpha < 1
        if self.teacher is None or not (want_logits or self.cfg.feature_weight > 0):
            return None, None
        want_states = self.cfg.feature_weight > 0
        with self.autocast():  # FSDP-sharded or whole: fsdp.teacher_forward gathers what it needs
            th, states, Wt = teacher_forward(self.teacher, x, attn, want_states)
        th = th[:, :-1]
        t_head = HeadTransform.from_config(self.teacher.config)

        def chunk(s0, s1):
            with torch.no_grad():
                logits = head_logits(th[:, s0:s1], Wt, t_head)
                return F.log_softmax(logits / T, -1).reshape(-1, logits.shape[-1]), None, None

        return (chunk if want_logits else None), states

    def _micro_batches(self, rows: np.ndarray) -> tuple[list, float]:
        """This process's micro-batches [(rows, ids, attention, loss mask)] of a step and the step's
        global count of counted positions; on an on-policy step the student first samples continuations."""
        torch, _ = _import_torch()
        from .on_policy import on_policy_batch, on_policy_step

        cfg, d = self.cfg, self.data
        per = cfg.batch_size // self.world
        micro = per // cfg.grad_accum
        on = on_policy_step(cfg.seed, self.step, getattr(cfg, "on_policy", 0.0))
        out = []
        for m in range(cfg.grad_accum):
            lo = self.rank * per + m * micro
            r = rows[lo:lo + micro]
            x = torch.from_numpy(np.ascontiguousarray(d.ids[r], dtype=np.int64)).to(self.device)
            attn = torch.from_numpy(d.attention[r]).to(self.device) if d.attention is not None else None
            if on:
                x, attn, mask = on_policy_batch(self.module.student, x, d.prompt_len, cfg, step=self.step,
                                                positions=range(lo, lo + micro), eos_id=d.eos_id, pad_id=d.pad_id,
                                                autocast=self.autocast)
            else:
                mask = torch.from_numpy(d.mask(r)).to(self.device)
            out.append((r, x, attn, mask))
        if not on:  # known for the whole batch without communication
            return out, float(d.mask(rows).sum())
        count = torch.tensor(float(sum(float(b[3].sum()) for b in out)), dtype=torch.float64)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(count)
        return out, float(count)

    def _step(self) -> float:
        torch, _ = _import_torch()
        cfg, d = self.cfg, self.data
        rows = batch_rows(self.step, cfg.batch_size, len(d.ids), cfg.seed)
        batches, norm_total = self._micro_batches(rows)
        if norm_total == 0:
            norm_total = 1.0
        net = self.ddp or self.module
        step_loss = torch.zeros((), dtype=torch.float64)
        for m, (r, x, attn, mask) in enumerate(batches):
            teacher_chunk, t_states = self._teacher_chunk(r, x, attn)
            sync = self.ddp is None or m == cfg.grad_accum - 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            with ctx:
                with self.autocast():
                    loss, _sums, _feat = net(x, attn, mask, norm_total / self.world, teacher_chunk, t_states,
                                             cfg.feature_weight)
                loss.backward()
            step_loss += loss.detach().double().cpu() / self.world
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(step_loss)
        gnorm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.clip if cfg.clip > 0 else float("inf"))
        value = float(step_loss)
        if not math.isfinite(value) or not math.isfinite(float(gnorm)):
            self.optim.zero_grad(set_to_none=True)
            self.save_checkpoint()
            what = "loss" if not math.isfinite(value) else "gradient norm"
            raise SlimedgeError(
                f"training stopped: the {what} became {value if what == 'loss' else float(gnorm)} at step "
                f"{self.step + 1}; the last good state (step {self.step}) is saved in {self.ckpt_dir}; "
                "lower --lr (or raise --warmup) and run again with --resume")
        self.optim.step()
        self.sched.step()
        self.optim.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += cfg.batch_size * d.ids.shape[1]
        return value

    def run(self) -> TrainResult:
        torch, _ = _import_torch()
        res = TrainResult()
        if self.cfg.resume:
            self.load_checkpoint()
            res.resumed_from = self.step
        self.module.train()
        t0 = time.monotonic()
        tok0 = self.tokens
        if self.rank == 0:
            self.progress.start(self.total, "step", "distill")
            if self.step:
                self.progress.update(self.step, label="resumed")
        try:
            while self.step < self.total:
                value = self._step()
                res.losses.append(value)
                if self.rank == 0:
                    dt = max(time.monotonic() - t0, 1e-9)
                    self.progress.update(1, label=f"loss {value:.4f}",
                                         **{"tok/s": f"{(self.tokens - tok0) / dt:.0f}"})
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0 \
                        and self.step < self.total:
                    self.save_checkpoint()
        finally:
            if self.rank == 0:
                self.progress.close()
        res.steps, res.tokens_seen = self.step, self.tokens
        res.wall_s = time.monotonic() - t0
        if torch.cuda.is_available() and str(self.device).startswith("cuda"):
            res.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
        return res
