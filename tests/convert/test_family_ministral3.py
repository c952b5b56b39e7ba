"""Ministral 3 end to end through llama.cpp (``mistral3``): logits with its YaRN (mscale / mscale_all_dim ->
yarn_log_multiplier) and Llama 4's query temperature with a period of 16 positions (the 25 sample tokens cross
it, so the temperature matters), tekken tokenization, every mix vs llama_model_quantize, end of generation;
and the text tower of a Mistral3ForConditionalGeneration checkpoint (Pixtral tower skipped) against
transformers' multimodal class."""

from __future__ import annotations

import numpy as np
import pytest

from slimedge.gguf_info import read_info
from tests.convert.convert_util import llama_logits, rel_err, sample_tokens
from tests.factory import cached_hf_model
from tests.family_checks import (TOL, check_generation_stops, check_logits, check_mixes, check_tokenization, convert,
                                 eog_ids)

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_ministral3_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="ministral3", kquant=True)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    meta = read_info(f32).metadata
    assert meta["general.architecture"] == "mistral3" and meta["tokenizer.ggml.pre"] == "tekken"
    assert meta["mistral3.attention.temperature_scale"] == pytest.approx(0.1)
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.attn_v.weight"] in ("Q6_K", "Q4_K")
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_mistral3_conditional_generation_text_tower(tmp_path):
    import torch
    from transformers import Mistral3ForConditionalGeneration

    hf = cached_hf_model(arch="mistral3_mm")
    out = convert(hf, tmp_path / "mm.gguf", "f32", "--no-mmproj")  # the text tower (the projector: tests/vision)
    meta = read_info(out).metadata
    assert meta["general.architecture"] == "mistral3" and not any("vision" in t.name for t in read_info(out).tensors)
    tokens = sample_tokens(meta["mistral3.vocab_size"] - 1)  # the last id is the image token
    model = Mistral3ForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    got = llama_logits(out, tokens)
    assert rel_err(got, want) < TOL["f32"]
    assert not np.allclose(got[-1], got[-2])
