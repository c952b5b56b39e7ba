"""XLM-RoBERTa (``XLMRobertaModel``, bge-m3's shape) embedders: positions offset, unigram tokenizer ("t5").

Slow: a tiny random-init XLMRobertaModel (pad_token_id 1, so positions start at row 2) with a SentencePiece
unigram tokenizer in fairseq order (nmt_nfkc precompiled charsmap, Metaspace, <s> … </s>); CLS and mean
pooling; llama.cpp's embeddings equal SentenceTransformer.encode (cosine ≥ 0.9999 at F32/F16, ≥ 0.998 at
Q8_0) and its token ids equal the source tokenizer's (accents, Cyrillic, CJK, double spaces); the metadata.
"""

from __future__ import annotations

import pytest
from gguf import GGUFReader

from slimedge.convert import convert
from slimedge.quant.mixes import QuantSpec
from tests.embed.embed_checks import cosines, gguf_embeddings, load_gguf, st_reference, token_ids_mismatches
from tests.embed.embed_factory import SENTENCES, cached_embedder

MORE = SENTENCES + ("double  spaces   and\ttabs", "ﬁ ligature and full-width ＡＢＣ１２３")


@pytest.mark.slow
@pytest.mark.parametrize("ftype,floor,pooling", [("F32", 0.9999, "cls"), ("F16", 0.9999, "cls"),
                                                 ("Q8_0", 0.998, "cls"), ("F32", 0.9999, "mean")])
def test_xlmroberta_equals_sentence_transformers(tmp_path, ftype, floor, pooling):
    src = cached_embedder(family="xlmroberta", pooling=pooling)
    out = tmp_path / f"xlmr-{ftype}.gguf"
    convert(src, out, QuantSpec(ftype))
    ref, st = st_reference(src, MORE)
    llm = load_gguf(out)
    cos = cosines(gguf_embeddings(llm, MORE), ref)
    assert cos.min() >= floor, cos
    assert token_ids_mismatches(st, llm, MORE) == []
    ids = llm.tokenize(SENTENCES[0].encode())
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids  # <s> … </s>, no <unk>


@pytest.mark.slow  # trains a SentencePiece unigram model (~10 s)
def test_xlmroberta_metadata(tmp_path):
    src = cached_embedder(family="xlmroberta", pooling="cls")
    out = tmp_path / "x.gguf"
    convert(src, out, QuantSpec("F16"))
    r = GGUFReader(out)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.t")}
    assert f["general.architecture"] == "bert" and f["bert.pooling_type"] == 2  # CLS
    assert f["bert.context_length"] == 128  # 130 rows - (pad 1 + 1)
    assert f["tokenizer.ggml.model"] == "t5" and f["tokenizer.ggml.remove_extra_whitespaces"] is True
    assert len(f["tokenizer.ggml.precompiled_charsmap"]) > 1000
    shapes = {t.name: list(t.shape) for t in r.tensors}
    assert shapes["position_embd.weight"] == [64, 128]
