"""ERNIE 4.5 dense end to end through llama.cpp (``ernie4_5``), as ERNIE-4.5-0.3B ships: tied output,
head_dim != hidden/heads, interleaved rope (no permutation: transformers' ERNIE already pairs 0::2/1::2),
SentencePiece tokenization, every mix vs llama_model_quantize, end of generation."""

from __future__ import annotations

import pytest

from slimedge.gguf_info import read_info
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_ernie4_5_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="ernie4_5", kquant=True, tied=True)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    meta = read_info(f32).metadata
    assert meta["general.architecture"] == "ernie4_5" and meta["tokenizer.ggml.model"] == "llama"
    check_tokenization(hf, f32)
    check_mixes(hf, tmp_path, f32=f32)
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
