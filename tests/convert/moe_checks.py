"""Logit checks for mixture-of-experts models, whose top-k routing is discrete.

Rounding the weights (BF16, Q8_0) moves the router's scores a little; where two experts score almost
alike that flips which experts a token uses, and that position's logits (and, through the KV cache,
some later ones) jump — by design of MoE, not a conversion error (F32 matches to ~1e-5 everywhere, which
rules a layout mistake out). So for the rounded types the **median** over positions of the per-position
error (largest |llama.cpp - transformers| / std of the reference logits) must be within the harness's
tolerance, and the top-1 token must agree at most positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tests.family_checks import TOL, _n_vocab, convert


def check_moe_logits(hf_dir: Path, tmp: Path, types=("bf16", "q8_0"), min_top1: float = 0.75) -> dict[str, float]:
    """Median per-position error of each rounded type vs transformers (< TOL[type]); returns the medians."""
    from tests.convert.convert_util import hf_logits, llama_logits, sample_tokens

    out, want, tokens = {}, None, None
    for typ in types:
        gguf = convert(hf_dir, tmp / f"moe-{typ}.gguf", typ)
        if tokens is None:
            n_vocab, bos = _n_vocab(gguf)
            tokens = sample_tokens(n_vocab, bos=bos)
            want = hf_logits(hf_dir, tokens)
        got = llama_logits(gguf, tokens)
        assert np.isfinite(got).all(), typ
        per_position = np.abs(got - want).max(axis=1) / want.std()
        top1 = float((got.argmax(axis=1) == want.argmax(axis=1)).mean())
        out[typ] = float(np.median(per_position))
        assert out[typ] < TOL[typ] and top1 >= min_top1, (typ, out[typ], top1, per_position.round(3).tolist())
    return out
