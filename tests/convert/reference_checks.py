"""Comparing slimedge's F32 GGUF with what llama.cpp's own converter writes for the same checkpoint: for the
families whose llama.cpp graph computes differently from transformers (PhiMoE's routing and norms, gpt-oss's
YaRN as released), parity is with the converter's file, not with transformers' outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.convert.convert_util import llama_logits, sample_tokens
from tests.convert.hybrid_checks import reference_gguf, same_tensors_as
from tests.family_checks import _n_vocab

# keys the converter does not write: slimedge's provenance and the explicit vocab_size (same as the token count)
_OURS_ONLY = ("slimedge.", "general.", "tokenizer.", "GGUF.")


def arch_keys(path: Path) -> dict:
    """The ``{arch}.*`` metadata of a GGUF file, without ``vocab_size``."""
    from slimedge.gguf_info import read_info

    m = read_info(path).metadata
    return {k: v for k, v in m.items() if not k.startswith(_OURS_ONLY) and not k.endswith(".vocab_size")}


def check_as_converter(hf_dir: Path, ours: Path, tmp: Path, pre: str) -> tuple[list[int], np.ndarray]:
    """``ours`` holds the converter's tensors (bytes) and keys, and llama.cpp computes the same logits from
    both files; returns the tokens (:func:`tests.convert.convert_util.sample_tokens`) and those logits."""
    theirs = reference_gguf(hf_dir, tmp / "converter-f32.gguf", pre)
    same_tensors_as(ours, theirs)
    assert arch_keys(ours) == arch_keys(theirs)
    n_vocab, bos = _n_vocab(ours)
    tokens = sample_tokens(n_vocab, bos=bos)
    got = llama_logits(ours, tokens)
    np.testing.assert_array_equal(got, llama_logits(theirs, tokens))
    return tokens, got
