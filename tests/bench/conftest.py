"""A tiny local model converted once per session (Q4_K_M, F32), and a text to score."""

from __future__ import annotations

import textwrap

import pytest
from factory import cached_hf_model

from slimedge.convert import convert
from slimedge.quant.mixes import QuantSpec

MODEL_KW = dict(arch="llama", kquant=True, max_position_embeddings=4096)  # same model as tests/bundle (built once per session)


@pytest.fixture(scope="session")
def hf_model():
    return cached_hf_model(**MODEL_KW)


@pytest.fixture(scope="session")
def ggufs(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-models")
    out = {}
    for t in ("Q4_K_M", "F32"):
        out[t] = root / f"tiny-{t.lower()}.gguf"
        convert(hf_model, out[t], QuantSpec(ftype=t))
    return out


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """Python standard-library source: thousands of tokens with the tiny tokenizer."""
    p = tmp_path_factory.mktemp("text") / "text.txt"
    p.write_text(open(textwrap.__file__, encoding="utf-8").read(), encoding="utf-8")
    return p
