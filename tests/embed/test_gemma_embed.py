"""EmbeddingGemma (``Gemma3TextModel``): bidirectional Gemma 3 + sentence-transformers Dense layers in llama.cpp.

Slow: a tiny random-init bidirectional Gemma3TextModel (3 layers, 2 sliding; query_pre_attn_scalar !=
head_dim so the scale folding is exercised) with mean pooling, two Dense modules (64→128→64, as
EmbeddingGemma's 768→3072→768) and Normalize; llama.cpp's embeddings equal SentenceTransformer.encode:
cosine ≥ 0.9999 at F32 and F16, ≥ 0.998 at Q8_0; also without Dense modules; the token ids are the source
tokenizer's. Fast: the metadata and the refusal of a Dense module with a bias.
"""

from __future__ import annotations

import json

import pytest
from gguf import GGUFReader

from slimedge.convert import convert
from slimedge.errors import SlimedgeError
from slimedge.quant.mixes import QuantSpec
from tests.embed.embed_checks import check_converted
from tests.embed.embed_factory import cached_embedder, make_embedder


@pytest.mark.slow
@pytest.mark.parametrize("ftype,floor,dense", [("F32", 0.9999, (128, 64)), ("F16", 0.9999, (128, 64)),
                                               ("Q8_0", 0.998, (128, 64)), ("F32", 0.9999, ())])
def test_embeddinggemma_equals_sentence_transformers(tmp_path, ftype, floor, dense):
    src = cached_embedder(family="gemma", pooling="mean", dense=dense)
    out = tmp_path / f"gemma-{ftype}.gguf"
    check_converted(src, out, ftype, floor)


def test_embeddinggemma_metadata(tmp_path):
    src = cached_embedder(family="gemma", pooling="mean", dense=(128, 64))
    out = tmp_path / "g.gguf"
    convert(src, out, QuantSpec("F16"))
    r = GGUFReader(out)
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith(("gemma-embedding.", "general.arch"))}
    assert f["general.architecture"] == "gemma-embedding" and f["gemma-embedding.pooling_type"] == 1
    assert (f["gemma-embedding.dense_2_feat_in"], f["gemma-embedding.dense_2_feat_out"]) == (64, 128)
    assert (f["gemma-embedding.dense_3_feat_in"], f["gemma-embedding.dense_3_feat_out"]) == (128, 64)
    assert f["gemma-embedding.attention.sliding_window_pattern"] == [True, True, False]
    shapes = {t.name: list(t.shape) for t in r.tensors}
    assert shapes["dense_2.weight"] == [64, 128] and shapes["dense_3.weight"] == [128, 64]  # GGUF ne order
    assert "output.weight" not in shapes


def test_embeddinggemma_refuses_dense_with_bias(tmp_path):
    src = make_embedder(tmp_path / "g", family="gemma", dense=(128, 64))
    cfg = src / "2_Dense" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "bias": True}))
    with pytest.raises(SlimedgeError, match=r"2_Dense/config.json: a Dense module with a bias or activation"):
        convert(src, tmp_path / "x.gguf")
