"""Distillation's steps on the shared loop (:mod:`.loop`): batches, micro-batches, teacher targets, the loss.

One optimizer step takes ``batch_size`` sequences (global: split evenly across processes, then into
``grad_accum`` micro-batches). The loss of a step is the sum over its counted positions divided by
their number, so one process and N processes compute the same update (:class:`~.loop.TrainLoop` sums the
processes' gradients). Data order is a seeded permutation per epoch (:func:`batch_rows`), so a run and a
resumed run see the same batches. With ``on_policy`` (GKD's lambda) a seeded coin per step decides
whether the student first samples the continuations of the batch's prompts (:mod:`.on_policy`); the
count of positions is then summed across processes before the update. AdamW, warmup + cosine, clipping,
checkpoints, the NaN/Inf stop and progress are the loop's (:func:`train`).
"""

from __future__ import annotations

import functools
import logging
import os

from dataclasses import dataclass

import numpy as np

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from .fsdp import teacher_forward
from .loop import LoopSettings, TrainLoop, TrainResult, lr_lambda
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


class DistillSteps:
    """The distillation's :class:`~.loop.StepWork`; ``teacher`` may be None (cache or CE only)."""

    def __init__(self, cfg, module, data: TrainData, *, teacher=None, cache=None, device="cpu", autocast=None,
                 group=None):
        import contextlib

        from .runtime import ProcessGroup

        self.cfg, self.module, self.data = cfg, module, data
        self.teacher, self.cache, self.device = teacher, cache, device
        self.autocast = autocast or contextlib.nullcontext
        self.group = group or ProcessGroup(False)
        if cfg.batch_size % (self.group.world * cfg.grad_accum):
            raise SlimedgeError(f"--batch-size {cfg.batch_size} must be a multiple of processes ({self.group.world}) "
                                f"x --grad-accum ({cfg.grad_accum})")

    def param_groups(self) -> list[dict]:
        """Matrices with weight decay, vectors (norms, biases) without."""
        decay, no_decay = [], []
        for _name, p in self.module.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        return [{"params": decay, "lr": self.cfg.lr, "weight_decay": self.cfg.weight_decay},
                {"params": no_decay, "lr": self.cfg.lr, "weight_decay": 0.0}]

    def state(self) -> dict:
        return {"module": self.module.state_dict()}

    def load_state(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])

    def after_update(self) -> None:
        pass

    def _teacher_chunk(self, rows, x, attn):
        import torch
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

    def _micro_batches(self, rows: np.ndarray, step: int) -> tuple[list, float]:
        """This process's micro-batches [(rows, ids, attention, loss mask)] of a step and the step's
        global count of counted positions; on an on-policy step the student first samples continuations."""
        import torch

        from .on_policy import on_policy_batch, on_policy_step

        cfg, d, g = self.cfg, self.data, self.group
        per = cfg.batch_size // g.world
        micro = per // cfg.grad_accum
        on = on_policy_step(cfg.seed, step, getattr(cfg, "on_policy", 0.0))
        out = []
        for m in range(cfg.grad_accum):
            lo = g.rank * per + m * micro
            r = rows[lo:lo + micro]
            x = torch.from_numpy(np.ascontiguousarray(d.ids[r], dtype=np.int64)).to(self.device)
            attn = torch.from_numpy(d.attention[r]).to(self.device) if d.attention is not None else None
            if on:
                x, attn, mask = on_policy_batch(self.module.student, x, d.prompt_len, cfg, step=step,
                                                positions=range(lo, lo + micro), eos_id=d.eos_id, pad_id=d.pad_id,
                                                autocast=self.autocast)
            else:
                mask = torch.from_numpy(d.mask(r)).to(self.device)
            out.append((r, x, attn, mask))
        if not on:  # known for the whole batch without communication
            return out, float(d.mask(rows).sum())
        count = torch.tensor(float(sum(float(b[3].sum()) for b in out)), dtype=torch.float64, device=self.device)
        return out, float(g.all_reduce_(count))

    def backward(self, step: int):
        """Step ``step``'s micro-batches forward and backward; this process's share of the step's loss."""
        import torch

        cfg, d = self.cfg, self.data
        rows = batch_rows(step, cfg.batch_size, len(d.ids), cfg.seed)
        batches, norm_total = self._micro_batches(rows, step)
        norm_total = norm_total or 1.0
        share = torch.zeros((), dtype=torch.float64)
        for r, x, attn, mask in batches:
            teacher_chunk, t_states = self._teacher_chunk(r, x, attn)
            with self.autocast():
                loss, _sums, _feat = self.module(x, attn, mask, norm_total, teacher_chunk, t_states,
                                                 cfg.feature_weight)
            loss.backward()
            share += loss.detach().double().cpu()
        return share


def train(cfg, module, data: TrainData, total_steps: int, *, teacher=None, cache=None, device="cpu", autocast=None,
          group=None, progress: Progress = NULL_PROGRESS, settings_key: dict | None = None) -> TrainResult:
    """Train ``module`` for ``total_steps`` on the shared loop: AdamW (0.9, 0.95) with weight decay on matrices,
    warmup + cosine to ``min_lr_ratio``, clipping, checkpoints in ``cfg.checkpoint_path()``."""
    work = DistillSteps(cfg, module, data, teacher=teacher, cache=cache, device=device, autocast=autocast,
                        group=group)
    settings = LoopSettings(total=total_steps, checkpoint=os.path.join(cfg.checkpoint_path(), "checkpoint.pt"),
                            schedule=lr_lambda(total_steps, cfg.warmup, cfg.min_lr_ratio),
                            checkpoint_every=cfg.checkpoint_every, resume=cfg.resume, key=settings_key or {},
                            clip=cfg.clip, betas=(0.9, 0.95), tokens_per_step=cfg.batch_size * data.ids.shape[1],
                            desc="distill", advice="lower --lr (or raise --warmup)")
    loop = TrainLoop(settings, work, work.group, device=device, progress=progress)
    module.train()
    return loop.run()
