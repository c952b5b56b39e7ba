"""The shared family harness (tests/family_checks.py) on the Llama family it was first written for."""

from __future__ import annotations

import pytest
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_llama_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="llama", kquant=True, tokenizer="bpe:llama3")
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert len(set(types["Q4_K_M"].values())) >= 3 and types["Q4_0"]["output.weight"] == "Q6_K"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
