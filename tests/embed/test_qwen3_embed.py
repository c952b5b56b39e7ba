"""Qwen3-Embedding (``Qwen3Model``): last-token pooling through llama.cpp equals sentence-transformers'.

Slow: a tiny random-init bare Qwen3Model whose tokenizer appends <|endoftext|> (as Qwen3-Embedding's does),
lasttoken pooling + Normalize; cosine ≥ 0.9999 at F32 and F16, ≥ 0.998 at Q8_0 (measured min 0.99896 on
the random weights); the token ids (the appended end token included) equal the source tokenizer's. Fast: the
metadata, and the memory estimate keeps the KV cache (a causal embedder has one).
"""

from __future__ import annotations

import pytest
from gguf import GGUFReader

from slimedge.convert import convert
from slimedge.quant.mixes import QuantSpec
from tests.embed.embed_checks import check_converted
from tests.embed.embed_factory import SENTENCES, cached_embedder


@pytest.mark.slow
@pytest.mark.parametrize("ftype,floor", [("F32", 0.9999), ("F16", 0.9999), ("Q8_0", 0.998)])
def test_qwen3_embedding_equals_sentence_transformers(tmp_path, ftype, floor):
    src = cached_embedder(family="qwen3", pooling="lasttoken")
    out = tmp_path / f"qwen3-{ftype}.gguf"
    llm = check_converted(src, out, ftype, floor)
    assert llm.tokenize(SENTENCES[0].encode())[-1] == llm.token_eos()


def test_qwen3_embedding_metadata(tmp_path):
    src = cached_embedder(family="qwen3", pooling="lasttoken")
    out = tmp_path / "q.gguf"
    convert(src, out, QuantSpec("F16"))
    r = GGUFReader(out)
    assert r.fields["general.architecture"].contents() == "qwen3"
    assert r.fields["qwen3.pooling_type"].contents() == 3  # LAST
    assert "qwen3.attention.causal" not in r.fields  # llama.cpp's default: causal
    assert r.fields["tokenizer.ggml.add_eos_token"].contents() is True
    names = {t.name for t in r.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names and "blk.1.attn_k_norm.weight" in names


def test_qwen3_embedding_keeps_its_kv_cache_in_the_estimate(tmp_path):
    from slimedge.memory import estimate, shape_from_gguf
    from slimedge.targets import load_target

    out = tmp_path / "q.gguf"
    convert(cached_embedder(family="qwen3", pooling="lasttoken"), out, QuantSpec("F16"))
    tgt = load_target("cpu")
    assert estimate(shape_from_gguf(out), tgt.runtime, hardware=tgt.hardware).kv_ram > 0  # causal: llama.cpp caches
