"""ModernBERT (``ModernBertModel``) embedders in llama.cpp against sentence-transformers.

Slow: a tiny random-init ModernBERT (no biases, GeGLU, global/local layers with an 8-token window that the
test sentences exceed, separate global/local rope bases) and a byte-level BPE framed [CLS] … [SEP];
mean and CLS pooling; cosine ≥ 0.9999 at F32/F16, ≥ 0.998 at Q8_0; token ids equal. Fast: metadata, refusal.
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
@pytest.mark.parametrize("ftype,floor,pooling", [("F32", 0.9999, "mean"), ("F16", 0.9999, "mean"),
                                                 ("Q8_0", 0.998, "mean"), ("F32", 0.9999, "cls")])
def test_modernbert_equals_sentence_transformers(tmp_path, ftype, floor, pooling):
    src = cached_embedder(family="modernbert", pooling=pooling)
    out = tmp_path / f"mb-{ftype}.gguf"
    check_converted(src, out, ftype, floor)


def test_modernbert_metadata(tmp_path):
    src = cached_embedder(family="modernbert", pooling="mean")
    out = tmp_path / "mb.gguf"
    convert(src, out, QuantSpec("F16"))
    r = GGUFReader(out)
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == "modern-bert" and f["modern-bert.pooling_type"] == 1
    assert f["modern-bert.attention.causal"] is False and f["modern-bert.attention.sliding_window"] == 8
    assert f["modern-bert.attention.sliding_window_pattern"] == [False, True, False]
    assert (f["modern-bert.rope.freq_base"], f["modern-bert.rope.freq_base_swa"]) == (160000.0, 10000.0)
    names = {t.name for t in r.tensors}
    assert "blk.0.attn_norm.weight" not in names and "blk.1.attn_norm.weight" in names


def test_modernbert_refuses_biases(tmp_path):
    src = make_embedder(tmp_path / "m", family="modernbert")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "mlp_bias": True}))
    with pytest.raises(SlimedgeError, match="mlp_bias=true is not supported"):
        convert(src, tmp_path / "x.gguf")
