"""Response (sequence-level) distillation data: the teacher continues prompts taken from the data.

Each prompt is the first ``prompt_len`` tokens of a training block; the teacher generates up to
``gen_len`` new tokens with the exposed sampling settings (``do_sample``, ``gen_temperature``,
``top_p``, ``top_k``), seeded by ``seed``. The student then trains on prompt + continuation with
the prompt positions and everything after the first EOS masked out of the loss (and the padding
out of attention): cross-entropy on these sequences is sequence-level KD; with ``alpha < 1`` the
logit loss on the same sequences is mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..progress import NULL_PROGRESS, Progress


@dataclass
class ResponseData:
    ids: np.ndarray        # [n, prompt_len + gen_len] int64, right-padded
    attention: np.ndarray  # [n, prompt_len + gen_len] int64: 1 for real tokens
    loss_mask: np.ndarray  # [n, prompt_len + gen_len - 1] float32: 1 where the next token is generated


def masks_for(ids: np.ndarray, prompt_len: int, eos_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(attention [n, L], loss_mask [n, L-1]) for prompt + generated ``ids`` [n, L].

    Generated tokens count up to and including the first EOS; prompt tokens and anything after the
    first generated EOS (padding) do not.
    """
    n, L = ids.shape
    gen = ids[:, prompt_len:]
    real = np.ones_like(gen, dtype=bool)
    if eos_id is not None:
        is_eos = gen == eos_id
        after = np.cumsum(is_eos, axis=1) - is_eos  # EOS seen strictly before this position
        real = after == 0
    attention = np.concatenate([np.ones((n, prompt_len), bool), real], 1).astype(np.int64)
    loss_mask = np.zeros((n, L - 1), np.float32)
    loss_mask[:, prompt_len - 1:] = real  # position t predicts token t+1
    return attention, loss_mask


def generate(teacher, tokenizer, train_blocks: np.ndarray, cfg, *, device="cpu", batch: int = 16,
             progress: Progress = NULL_PROGRESS) -> ResponseData:
    """Teacher continuations of prompts from ``train_blocks`` [n, seq_len] per ``cfg`` (a DistillConfig)."""
    import torch

    n = cfg.response_samples or len(train_blocks)
    rows = np.arange(n) % len(train_blocks)
    prompts = train_blocks[rows, : cfg.prompt_len]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    total = cfg.prompt_len + cfg.gen_len
    out = np.full((n, total), pad, np.int64)
    gen_kw = dict(max_new_tokens=cfg.gen_len, min_new_tokens=0, do_sample=cfg.do_sample, pad_token_id=pad,
                  eos_token_id=eos)
    if cfg.do_sample:
        gen_kw.update(temperature=cfg.gen_temperature, top_p=cfg.top_p, top_k=cfg.top_k or None)
    else:
        gen_kw.update(temperature=None, top_p=None, top_k=None)
    torch.manual_seed(cfg.seed)
    progress.start(n, "seq", "teacher responses")
    teacher.eval()
    with torch.no_grad():
        for b0 in range(0, n, batch):
            x = torch.from_numpy(np.ascontiguousarray(prompts[b0:b0 + batch])).to(device)
            y = teacher.generate(input_ids=x, attention_mask=torch.ones_like(x), **gen_kw)
            y = y[:, :total].cpu().numpy()
            out[b0:b0 + len(y), : y.shape[1]] = y
            progress.update(len(y))
    progress.close()
    attention, loss_mask = masks_for(out, cfg.prompt_len, eos)
    return ResponseData(ids=out, attention=attention, loss_mask=loss_mask)
