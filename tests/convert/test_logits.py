"""llama.cpp runs our GGUF files with the same outputs as transformers, for every architecture.

Each case: a random-init model saved by transformers (tests/factory.py) → ``slimedge convert`` →
llama-cpp-python evaluates the same token ids → logits compared at every position.
Error = largest |llama.cpp - transformers| over all positions and vocabulary entries, divided by the
std of the reference logits (~0.8 here). Measured: F32 ~3e-6, F16 ~5e-3, BF16 ~4e-2, Q8_0 ~0.15
(llama.cpp also rounds the activations to Q8_0/F16 in its matmuls). Limits: F32 2e-5 (float32 in a
different order, with an F32 KV cache), F16 2e-2, BF16 1e-1, Q8_0 3e-1.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tests.convert.convert_util import hf_logits, llama_logits, rel_err, sample_tokens
from tests.factory import PHI3_LONGROPE, cached_hf_model

from slimedge.cli import main

CASES = {
    "llama": dict(arch="llama"),
    "llama-tied": dict(arch="llama", tied=True),
    "llama-bpe": dict(arch="llama", tokenizer="bpe:llama3"),
    "mistral": dict(arch="mistral"),
    "qwen2-tied": dict(arch="qwen2", tied=True),
    "phi3-padded": dict(arch="phi3", pad_vocab=18),  # embedding rows past the tokenizer's size
    "phi3-longrope": PHI3_LONGROPE,  # rope_factors_short/long tensors + attention factor
    # Phi-4-mini style: tied embeddings, partial rotary, GPT-2 BPE tokenizer
    "phi3-tied-partial-rope": dict(arch="phi3", tied=True, tokenizer="bpe:gpt2", partial_rotary_factor=0.5),
    "llama-bf16-sharded": dict(arch="llama", dtype="bfloat16", shard_size="100KB"),
    # attention/MLP biases (q/k biases permuted like their rows) and head_dim != hidden/heads
    "llama-bias-headdim": dict(arch="llama", attention_bias=True, mlp_bias=True, head_dim=32),
    # Llama 3 rope scaling -> rope_freqs tensor
    "llama3-rope": dict(arch="llama", tokenizer="bpe:llama3", rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    # YaRN scaling keys, untied qwen2
    "qwen2-yarn": dict(arch="qwen2", rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                      "original_max_position_embeddings": 64}),
}
TOL = {"f32": 2e-5, "f16": 2e-2, "bf16": 1e-1, "q8_0": 3e-1}


def _convert(src, out, typ):
    res = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--type", typ, "--quiet"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_f32_logits_match_transformers(case, tmp_path):
    model = cached_hf_model(**CASES[case])
    out = _convert(model, tmp_path / "m.gguf", "f32")
    n_vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    tokens = sample_tokens(n_vocab - 18 if "padded" in case else n_vocab)
    want, got = hf_logits(model, tokens), llama_logits(out, tokens)
    assert got.shape == want.shape == (len(tokens), n_vocab)
    assert rel_err(got, want) < TOL["f32"]


@pytest.mark.parametrize("typ", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("case", ["llama", "qwen2-tied", "phi3-padded"])
def test_lossy_types_stay_close(case, typ, tmp_path):
    model = cached_hf_model(**CASES[case])
    out = _convert(model, tmp_path / "m.gguf", typ)
    tokens = sample_tokens(900)
    err = rel_err(llama_logits(out, tokens), hf_logits(model, tokens))
    assert err < TOL[typ]
    assert err > 1e-7  # the weights really were rounded (the file is not secretly F32)
