"""SmolLM3 end to end through llama.cpp: logits with a no-rope layer (4 layers: layer 3 skips rope; tied
as the real ones), Llama 3 byte-level BPE tokenization, every mix vs llama_model_quantize, end of generation.

SmolLM3 ships Llama 3's tokenizer (llama.cpp identifies it as ``llama-bpe``; its ``smollm`` pre-tokenizer
is SmolLM 1/2's, whose models are ``LlamaForCausalLM``)."""

from __future__ import annotations

import pytest
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_smollm3_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="smollm3", kquant=True, tied=True)
    # 4 layers (twice the others) accumulate more rounding: BF16 (8 mantissa bits, ~8x F16's error) measures
    # ~0.13 here against F16's ~0.014
    errs = check_logits(hf, tmp_path, tol={"bf16": 0.2})
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    meta = read_info(f32).metadata
    assert meta["general.architecture"] == "smollm3" and meta["tokenizer.ggml.pre"] == "llama-bpe"
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert "output.weight" not in types["Q4_K_M"] and types["Q4_0"]["token_embd.weight"] == "Q6_K"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_smollm3_rope_pattern_matters(tmp_path):
    """The no-rope layer is real: giving that layer rope in transformers moves the logits far off llama.cpp's."""
    from tests.convert.convert_util import hf_logits, llama_logits, rel_err, sample_tokens
    import json
    import shutil

    hf = cached_hf_model(arch="smollm3")
    gguf = convert(hf, tmp_path / "m.gguf", "F32")
    other = shutil.copytree(hf, tmp_path / "all-rope")
    cfg = json.loads((other / "config.json").read_text())
    cfg["no_rope_layers"] = [1, 1, 1, 1]
    (other / "config.json").write_text(json.dumps(cfg))
    tokens = sample_tokens(cfg["vocab_size"], bos=cfg.get("bos_token_id"))
    got = llama_logits(gguf, tokens)
    assert rel_err(got, hf_logits(hf, tokens)) < 2e-5 < 1e-2 < rel_err(got, hf_logits(other, tokens))
