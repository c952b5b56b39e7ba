"""OLMo 2 end to end through llama.cpp: logits (post-norms, whole-projection q/k norms; untied, and tied
with output.weight stored), cl100k-style byte-level BPE tokenization (OLMo 2's dolma2 kind: llama.cpp
``dbrx``), every mix vs llama_model_quantize, end of generation."""

from __future__ import annotations

import pytest
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_olmo2_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="olmo2", kquant=True)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    meta = read_info(f32).metadata
    assert meta["general.architecture"] == "olmo2" and meta["tokenizer.ggml.pre"] == "dbrx"
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.1.post_ffw_norm.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_olmo2_tied_writes_output(tmp_path):
    hf = cached_hf_model(arch="olmo2", tied=True)
    check_logits(hf, tmp_path, types=("f32", "q8_0"))
    names = [t.name for t in read_info(tmp_path / "model-f32.gguf").tensors]
    assert "output.weight" in names and "token_embd.weight" in names
