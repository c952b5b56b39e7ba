"""Held-out evaluation: student and teacher perplexity, KL(teacher‖student), top-1 agreement.

Both models run over the held-out blocks; the output heads are applied ``chunk`` positions at a time
so no full ``[batch, seq, vocab]`` logits are kept. All figures are per predicted token at T=1.
With a teacher cache instead of a live teacher, the KL is taken over the cached top-k buckets
(exact when k covers the vocabulary, a lower bound otherwise) and the teacher's perplexity comes
from the cached log-prob of each actual next token.
"""

from __future__ import annotations

import math

import numpy as np

from .fsdp import teacher_forward
from .losses import HeadTransform, divergence, head_logits, topk_buckets


def _base(model):
    return getattr(model, model.base_model_prefix)


def evaluate(student, blocks: np.ndarray, *, teacher=None, cache=None, batch: int = 8, chunk: int = 128,
             device="cpu", autocast=None) -> dict:
    """Figures over ``blocks`` [n, seq_len]: student_perplexity, teacher_perplexity, kl, top1_agreement."""
    import contextlib

    import torch
    import torch.nn.functional as F

    ctx = autocast or contextlib.nullcontext
    was_training = student.training
    student.eval()
    s_ce = t_ce = kl = agree = 0.0
    n = 0
    W_s = student.get_output_embeddings().weight
    s_head = HeadTransform.from_config(student.config)  # each model's own logit scaling / soft-cap
    t_head = HeadTransform.from_config(teacher.config) if teacher is not None else None
    with torch.no_grad():
        for b0 in range(0, len(blocks), batch):
            rows = np.arange(b0, min(b0 + batch, len(blocks)))
            x = torch.from_numpy(np.ascontiguousarray(blocks[rows])).to(device)
            with ctx():
                hs = _base(student)(input_ids=x).last_hidden_state[:, :-1]
                if teacher is not None:  # whole or FSDP-sharded (then every process runs this loop)
                    ht, _, W_t = teacher_forward(teacher, x)
                    ht = ht[:, :-1]
            labels = x[:, 1:]
            if cache is not None:
                t_lab = cache.label_logp("eval", rows).to(device)
                t_ce += float(-t_lab.sum())
            for s0 in range(0, hs.shape[1], chunk):
                s1 = min(s0 + chunk, hs.shape[1])
                lab = labels[:, s0:s1].reshape(-1)
                s_logp = F.log_softmax(head_logits(hs[:, s0:s1], W_s, s_head), -1).reshape(len(lab), -1)
                s_ce += float(-s_logp.gather(-1, lab[:, None]).sum())
                if teacher is not None:
                    t_logp = F.log_softmax(head_logits(ht[:, s0:s1], W_t, t_head), -1).reshape(len(lab), -1)
                    t_ce += float(-t_logp.gather(-1, lab[:, None]).sum())
                    kl += float(divergence(t_logp, s_logp, "fkl").sum())
                    agree += float((t_logp.argmax(-1) == s_logp.argmax(-1)).sum())
                else:
                    logp, ids, tail = cache.chunk("eval", rows, s0, s1, device)
                    tb, sb = topk_buckets(s_logp, ids, logp, tail)
                    kl += float(divergence(tb, sb, "fkl").sum())
                    agree += float((ids[:, 0] == s_logp.argmax(-1)).sum())
                n += len(lab)
    student.train(was_training)
    return {"student_perplexity": math.exp(s_ce / n), "teacher_perplexity": math.exp(t_ce / n),
            "kl": kl / n, "top1_agreement": agree / n, "positions": n}
