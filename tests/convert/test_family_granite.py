"""Granite 3.x end to end through llama.cpp: logits with non-trivial embedding/residual/attention/logit
multipliers, StarCoder-style byte-level BPE tokenization (digits split, GPT-2 regex: Granite 3's kind),
every mix vs llama_model_quantize, end of generation."""

from __future__ import annotations

import pytest
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_granite_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="granite", kquant=True)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    meta = read_info(f32).metadata
    assert meta["general.architecture"] == "granite" and meta["tokenizer.ggml.pre"] == "starcoder"
    assert (meta["granite.embedding_scale"], meta["granite.residual_scale"], meta["granite.logit_scale"]) == (2.0, 0.5, 2.0)
    check_tokenization(hf, f32)
    check_mixes(hf, tmp_path, f32=f32)
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_granite_multipliers_matter(tmp_path):
    """The test model's multipliers are not neutral: with each scale key set to 1.0, llama.cpp's logits move
    far from transformers', so the end-to-end match above depends on every key."""
    from tests.convert.convert_util import hf_logits, llama_logits, rel_err, sample_tokens
    from gguf import GGUFValueType
    from tests.gguf_edit import edit_gguf

    hf = cached_hf_model(arch="granite")
    assert check_logits(hf, tmp_path, types=("f32",))["f32"] < 2e-5
    f32 = tmp_path / "model-f32.gguf"
    tokens = sample_tokens(read_info(f32).metadata["granite.vocab_size"], bos=None)
    want = hf_logits(hf, tokens)
    for key in ("granite.embedding_scale", "granite.residual_scale", "granite.attention.scale", "granite.logit_scale"):
        off = edit_gguf(f32, tmp_path / "off.gguf", set={key: (1.0, GGUFValueType.FLOAT32, None)})
        assert rel_err(llama_logits(off, tokens), want) > 1e-2, key
        off.unlink()
