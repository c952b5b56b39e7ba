"""Quality numbers from llama.cpp logits: perplexity, and against a reference model mean KL divergence,
top-1 agreement and ΔPPL — computed llama.cpp's way.

Method (``llama-perplexity``): the text is tokenized once (with BOS), cut into ``n_ctx`` chunks,
the first token of each chunk replaced by BOS, and only the second half of each chunk is scored:
logits at positions ``n_ctx//2 .. n_ctx-2`` predict the following token. PPL = exp(mean NLL).
KL divergence is ``Σ p_ref (log p_ref − log p_model)`` per scored position, averaged; top-1
agreement is the share of positions where both argmaxes agree; ΔPPL = PPL(model) − PPL(ref).
(llama.cpp stores the reference log-probs as 16-bit values and skips ``p_ref < e^-16`` terms; here
both sides stay float32, so KL is exact to float32.)

:func:`logprobs` runs a child process that writes the log-softmax rows (see
:mod:`slimedge.bench.child`); :func:`perplexity` and :func:`compare` are plain NumPy on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SlimedgeError


@dataclass
class Logprobs:
    """Log-softmax rows of the scored positions and the tokens they predict."""

    logprobs: np.ndarray  # float32 [n_chunks, n_ctx - 1 - n_ctx//2, n_vocab] (memory-mapped)
    targets: np.ndarray  # int [n_chunks, n_ctx - 1 - n_ctx//2]: the token each row predicts
    tokens: np.ndarray  # int [n_chunks, n_ctx]: the text's tokens (before the BOS replacement)
    n_ctx: int
    n_tokens: int  # tokens in the whole text


def load_logprobs(logprobs_path: str | Path, tokens_path: str | Path, n_ctx: int, n_tokens: int) -> Logprobs:
    lp = np.load(logprobs_path, mmap_mode="r")
    toks = np.load(tokens_path)
    first = n_ctx // 2
    return Logprobs(lp, toks[:, first + 1:], toks, n_ctx, n_tokens)


def nll_per_position(lp: Logprobs) -> np.ndarray:
    """Negative log-likelihood of each scored token, float64 ``[n_chunks, n_scored]``."""
    picked = np.take_along_axis(np.asarray(lp.logprobs), lp.targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return -picked.astype(np.float64)


def perplexity(lp: Logprobs) -> tuple[float, float]:
    """(PPL, its standard error by the delta method) over every scored position."""
    nll = nll_per_position(lp).ravel()
    mean = float(nll.mean())
    se = float(nll.std(ddof=1) / math.sqrt(nll.size)) if nll.size > 1 else 0.0
    ppl = math.exp(mean)
    return ppl, ppl * se


def compare(model: Logprobs, ref: Logprobs, chunk_rows: int = 64) -> dict:
    """KL(ref ‖ model) mean, top-1 agreement and ΔPPL over the same scored positions."""
    if model.tokens.shape != ref.tokens.shape or not np.array_equal(model.tokens, ref.tokens):
        raise SlimedgeError("the model and --ref tokenize the text differently; KL divergence needs the same "
                            "tokenizer (give the unquantized version of this model as --ref)")
    if model.logprobs.shape != ref.logprobs.shape:
        raise SlimedgeError(f"vocabulary sizes differ: model {model.logprobs.shape[-1]}, --ref "
                            f"{ref.logprobs.shape[-1]}; --ref must be the unquantized version of this model")
    n_chunks, n_scored, n_vocab = model.logprobs.shape
    same, count = 0, 0
    kls = []
    for c in range(n_chunks):
        for s in range(0, n_scored, chunk_rows):
            q = np.asarray(model.logprobs[c, s:s + chunk_rows], dtype=np.float64)
            p = np.asarray(ref.logprobs[c, s:s + chunk_rows], dtype=np.float64)
            kl = (np.exp(p) * (p - q)).sum(axis=-1)
            kls.append(kl)
            same += int((p.argmax(axis=-1) == q.argmax(axis=-1)).sum())
            count += kl.shape[0]
    kl_all = np.concatenate(kls)
    ppl, ppl_se = perplexity(model)
    ppl_ref, _ = perplexity(ref)
    return {
        "kld_mean": float(kl_all.mean()),
        "kld_stddev": float(kl_all.std(ddof=1)) if kl_all.size > 1 else 0.0,
        "kld_max": float(kl_all.max()),
        "top1_agreement": same / count,
        "perplexity": ppl,
        "perplexity_se": ppl_se,
        "ref_perplexity": ppl_ref,
        "delta_ppl": ppl - ppl_ref,
        "n_scored": count,
    }
