"""llama.cpp runs our GGUF files with the same outputs as transformers, for every architecture.

Each case: a random-init model saved by transformers (tests/factory.py) → ``slimedge convert`` →
llama-cpp-python evaluates the same token ids → logits compared at every position.
Tolerances are relative to the spread (std) of the reference logits:
F32 ≤ 1e-3 (float32 arithmetic in a different order), F16 ≤ 2e-2, BF16 ≤ 6e-2, Q8_0 ≤ 6e-2.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from convert_util import hf_logits, llama_logits, rel_err, sample_tokens
from factory import cached_hf_model

from slimedge.cli.convert import cli

CASES = {
    "llama": dict(arch="llama"),
    "llama-tied": dict(arch="llama", tied=True),
    "llama-bpe": dict(arch="llama", tokenizer="bpe:llama3"),
    "mistral": dict(arch="mistral"),
    "qwen2-tied": dict(arch="qwen2", tied=True),
    "phi3-padded": dict(arch="phi3", pad_vocab=18),  # embedding rows past the tokenizer's size
}
TOL = {"f32": 1e-3, "f16": 2e-2, "bf16": 6e-2, "q8_0": 6e-2}


def _convert(src, out, typ):
    res = CliRunner().invoke(cli, [str(src), "-o", str(out), "--type", typ, "--quiet"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_f32_logits_match_transformers(case, tmp_path):
    model = cached_hf_model(**CASES[case])
    out = _convert(model, tmp_path / "m.gguf", "f32")
    import json

    n_vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    tokens = sample_tokens(n_vocab - 18 if "padded" in case else n_vocab)
    want, got = hf_logits(model, tokens), llama_logits(out, tokens)
    assert got.shape == want.shape == (len(tokens), n_vocab)
    assert rel_err(got, want) < TOL["f32"]


@pytest.mark.parametrize("typ", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("case", ["llama", "phi3-padded"])
def test_lossy_types_stay_close(case, typ, tmp_path):
    model = cached_hf_model(**CASES[case])
    out = _convert(model, tmp_path / "m.gguf", typ)
    tokens = sample_tokens(900)
    err = rel_err(llama_logits(out, tokens), hf_logits(model, tokens))
    assert err < TOL[typ]
    assert err > 1e-7  # the weights really were rounded (the file is not secretly F32)
