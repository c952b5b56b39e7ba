"""BERT (``BertModel``) embedders: converted GGUF equals sentence-transformers' output in llama.cpp.

Slow: a tiny random-init BERT with a locally trained WordPiece tokenizer and mean pooling + Normalize;
llama-cpp-python's pooled embeddings (pooling from the file) against SentenceTransformer.encode: cosine ≥
0.9999 at F32; F16 and Q8_0 measured at ≥ 0.9999 / ≥ 0.999 (random weights spread more than a trained
model's); the token ids equal the source tokenizer's. Fast: metadata (pooling, causal, normalize note,
tokenizer keys) and the one-line refusals.
"""

from __future__ import annotations

import json

import pytest
from gguf import GGUFReader

from slimedge.convert import convert
from slimedge.errors import SlimedgeError
from slimedge.quant.mixes import QuantSpec
from tests.embed.embed_checks import check_converted, cosines, gguf_embeddings, load_gguf, st_reference
from tests.embed.embed_factory import cached_embedder, make_embedder


def _field(reader: GGUFReader, key: str):
    f = reader.fields[key]
    return f.contents()


@pytest.mark.slow
@pytest.mark.parametrize("ftype,floor", [("F32", 0.9999), ("F16", 0.9999), ("Q8_0", 0.999)])
def test_bert_embeddings_equal_sentence_transformers(tmp_path, ftype, floor):
    src = cached_embedder(family="bert", pooling="mean")
    out = tmp_path / f"bert-{ftype}.gguf"
    check_converted(src, out, ftype, floor)


@pytest.mark.slow
def test_bert_cls_pooling(tmp_path):
    src = cached_embedder(family="bert", pooling="cls", normalize=False)
    out = tmp_path / "bert-cls.gguf"
    convert(src, out, QuantSpec("F32"))
    ref, _ = st_reference(src)
    cos = cosines(gguf_embeddings(load_gguf(out)), ref)
    assert cos.min() >= 0.9999, cos


def test_bert_metadata(tmp_path):
    src = cached_embedder(family="bert", pooling="mean")
    out = tmp_path / "bert.gguf"
    convert(src, out, QuantSpec("F16"))
    r = GGUFReader(out)
    assert _field(r, "general.architecture") == "bert"
    assert _field(r, "bert.pooling_type") == 1  # MEAN
    assert _field(r, "bert.attention.causal") is False
    assert _field(r, "slimedge.embedding.normalize") is True
    assert _field(r, "tokenizer.ggml.model") == "bert"
    assert _field(r, "tokenizer.ggml.token_type_count") == 2
    assert _field(r, "tokenizer.ggml.bos_token_id") == 2 and _field(r, "tokenizer.ggml.seperator_token_id") == 3
    tokens = _field(r, "tokenizer.ggml.tokens")
    vocab = json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]
    cont = next(t for t in vocab if t.startswith("##"))
    word = next(t for t in vocab if not t.startswith(("##", "[")) and len(t) > 2)
    assert tokens[vocab[cont]] == cont[2:] and tokens[vocab[word]] == "\u2581" + word and tokens[2] == "[CLS]"
    names = {t.name for t in r.tensors}
    assert {"token_types.weight", "position_embd.weight", "token_embd_norm.bias",
            "blk.1.layer_output_norm.weight"} <= names
    assert not any(n.startswith(("output.", "pooler")) for n in names)


def test_bert_refuses_max_pooling(tmp_path):
    src = make_embedder(tmp_path / "b", family="bert", pooling="mean")
    cfg = src / "1_Pooling" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "pooling_mode_mean_tokens": False,
                               "pooling_mode_max_tokens": True}))
    with pytest.raises(SlimedgeError, match=r"pooling_mode_max_tokens has no llama.cpp equivalent"):
        convert(src, tmp_path / "x.gguf")


def test_bert_refuses_relative_positions(tmp_path):
    src = make_embedder(tmp_path / "b", family="bert")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "position_embedding_type": "relative_key"}))
    with pytest.raises(SlimedgeError, match="position_embedding_type 'relative_key' is not supported"):
        convert(src, tmp_path / "x.gguf")
