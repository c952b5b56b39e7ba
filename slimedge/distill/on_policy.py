"""On-policy distillation (GKD): the student samples continuations of prompts, the teacher scores them.

Semantics follow TRL's ``GKDTrainer`` so a run moves between the two: ``on_policy`` is its ``lmbda`` —
each optimizer step is, with that probability, an *on-policy* step: every sequence keeps its first
``prompt_len`` tokens (the prompt) and the student samples ``gen_len`` new tokens after it; the teacher
then scores the sequence token by token and the loss (``--loss``) is taken over the generated tokens
only, up to and including the first EOS (the prompt and anything after the EOS never count). The other
steps train on the data's own continuation of the same prompt (or, with ``--response``, the teacher's:
TRL's ``seq_kd``), again counting only the positions after the prompt. TRL's ``beta`` is ``--loss fkl``
(β = 0), ``--loss rkl`` (β = 1) or ``--loss jsd --beta β`` (the same generalized JSD); its sampling
temperature is ``--gen-temperature`` (top-p/top-k as for ``--response``). Differences: the coin is
seeded per step (``seed``, step), so resumed and multi-process runs draw the same steps (TRL draws per
micro-batch and process from Python's global RNG); ``--temperature`` (the loss's) also scales by T².

Sampling (:func:`sample`) runs the student's own decoder with its KV cache (one forward per new token
on the last position, the head applied to that position only). Each sequence draws its tokens by
inverse-CDF sampling from uniforms seeded by (seed, step, its place in the global batch), so the
samples do not depend on how the batch is split across processes or micro-batches.
"""

from __future__ import annotations

import contextlib

import numpy as np


def on_policy_step(seed: int, step: int, lam: float) -> bool:
    """Whether optimizer step ``step`` trains on the student's samples (probability ``lam``)."""
    if lam <= 0:
        return False
    if lam >= 1:
        return True
    return bool(np.random.default_rng([seed, step, 0x6B6D]).random() < lam)


def _uniforms(seed: int, step: int, positions, n: int):
    """[len(positions), n] uniforms in [0, 1): one stream per (seed, step, place in the global batch)."""
    import torch

    out = torch.empty(len(positions), n, dtype=torch.float64)
    for i, p in enumerate(positions):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, int(p)]).generate_state(1)[0]))
        out[i] = torch.rand(n, generator=g, dtype=torch.float64)
    return out


def _pick(logits, u, *, do_sample: bool, temperature: float, top_p: float, top_k: int):
    """Next token ids [B] from logits [B, V] (fp32) and uniforms u [B]."""
    import torch

    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k or top_p < 1.0:
        logits, order = logits.sort(-1, descending=True)
        probs = torch.softmax(logits, -1)
        if top_k:
            probs[:, top_k:] = 0
        if top_p < 1.0:
            before = probs.cumsum(-1) - probs  # mass of the more likely tokens
            probs = probs.masked_fill(before > top_p, 0.0)
    else:
        order, probs = None, torch.softmax(logits, -1)
    cdf = probs.double().cumsum(-1)
    j = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1])[:, None]).clamp_(max=cdf.shape[1] - 1)[:, 0]
    return order.gather(-1, j[:, None])[:, 0] if order is not None else j


def sample(student, prompts, gen_len: int, uniforms, *, do_sample: bool = True, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, autocast=None):
    """Prompts [B, P] long → [B, P + gen_len] long: the student's continuations, with its KV cache.

    ``uniforms`` [B, gen_len] drive the sampling (see :func:`_uniforms`). The model is run in eval mode
    and without gradients; its training mode is restored.
    """
    import torch

    import inspect

    base = getattr(student, student.base_model_prefix)
    from .losses import HeadTransform, head_logits

    W = student.get_output_embeddings().weight
    head = HeadTransform.from_config(student.config)  # sample from the distribution its forward gives
    # transformers >= 5.2x names the KV cache ``cache``; earlier versions ``past_key_values``
    key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    ctx = autocast or contextlib.nullcontext
    was_training = student.training
    student.eval()
    out_tokens = []
    try:
        with torch.no_grad():
            with ctx():
                out = base(input_ids=prompts, use_cache=True)
            past = getattr(out, key)
            for t in range(gen_len):
                logits = head_logits(out.last_hidden_state[:, -1], W, head)
                tok = _pick(logits, uniforms[:, t], do_sample=do_sample, temperature=temperature,
                            top_p=top_p, top_k=top_k)
                out_tokens.append(tok)
                if t + 1 < gen_len:
                    with ctx():
                        out = base(input_ids=tok[:, None], use_cache=True, **{key: past})
                    past = getattr(out, key)
    finally:
        student.train(was_training)
    return torch.cat([prompts, torch.stack(out_tokens, 1)], 1)


def on_policy_batch(student, ids, prompt_len: int, cfg, *, step: int, positions, eos_id, pad_id, autocast=None):
    """(ids, attention, loss_mask) torch tensors for an on-policy micro-batch.

    ``ids`` [b, prompt_len + gen_len] long (its prompts are kept, the rest replaced by the student's
    samples); ``positions`` are the rows' places in the step's global batch (seeds). Generated tokens
    count up to and including the first EOS; later ones become ``pad_id`` with attention 0.
    """
    import torch

    from .response import masks_for

    gen_len = ids.shape[1] - prompt_len
    u = _uniforms(cfg.seed, step, positions, gen_len)
    y = sample(student, ids[:, :prompt_len], gen_len, u, do_sample=cfg.do_sample,
               temperature=cfg.gen_temperature, top_p=cfg.top_p, top_k=cfg.top_k, autocast=autocast)
    y_np = y.cpu().numpy()
    attention, loss_mask = masks_for(y_np, prompt_len, eos_id)
    y_np = np.where(attention.astype(bool), y_np, pad_id)
    dev = ids.device
    return (torch.from_numpy(y_np).to(dev), torch.from_numpy(attention).to(dev),
            torch.from_numpy(loss_mask).to(dev))
