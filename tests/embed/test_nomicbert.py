"""Nomic BERT (``NomicBertModel``, nomic-embed-text's shape): rope + SwiGLU post-norm encoder in llama.cpp.

Slow: a tiny random-init NomicBertModel (transformers' layout) with the WordPiece tokenizer and mean
pooling: llama.cpp's embeddings equal SentenceTransformer.encode (cosine ≥ 0.9999 at F32/F16, ≥ 0.998 at
Q8_0), token ids equal (transformers saves the Hub's tensor names: fused Wqkv, fc11/fc12/fc2, norm1/norm2,
emb_ln); the same folder with the Hub's remote-code config.json (``n_embd``-style keys) converts to the same
embeddings. Fast: refusals.
"""

from __future__ import annotations

import json
import shutil

import pytest

from slimedge.convert import convert
from slimedge.errors import SlimedgeError
from slimedge.quant.mixes import QuantSpec
from tests.embed.embed_checks import check_converted, cosines, gguf_embeddings, load_gguf, st_reference
from tests.embed.embed_factory import cached_embedder, make_embedder


@pytest.mark.slow
@pytest.mark.parametrize("ftype,floor", [("F32", 0.9999), ("F16", 0.9999), ("Q8_0", 0.998)])
def test_nomicbert_equals_sentence_transformers(tmp_path, ftype, floor):
    src = cached_embedder(family="nomicbert", pooling="mean")
    out = tmp_path / f"nomic-{ftype}.gguf"
    check_converted(src, out, ftype, floor)


def _hub_config(src, dst):
    """The folder with the Hub's remote-code config.json (``n_embd``-style keys; transformers saves the Hub's
    tensor names already: fused Wqkv, fc11/fc12/fc2, norm1/norm2, emb_ln)."""
    shutil.copytree(src, dst)
    cfg = json.loads((src / "config.json").read_text())
    hub = {"architectures": ["NomicBertModel"], "model_type": "nomic_bert", "n_embd": cfg["hidden_size"],
           "n_layer": cfg["num_hidden_layers"], "n_head": cfg["num_attention_heads"],
           "n_inner": cfg["intermediate_size"],
           "n_positions": cfg["max_position_embeddings"], "vocab_size": cfg["vocab_size"], "type_vocab_size": 2,
           "layer_norm_epsilon": cfg["layer_norm_eps"], "rotary_emb_base": cfg["rope_parameters"]["rope_theta"],
           "activation_function": "swiglu", "causal": False, "prenorm": False, "qkv_proj_bias": False,
           "mlp_fc1_bias": False, "mlp_fc2_bias": False, "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False,
           "rotary_emb_scale_base": None, "pad_token_id": 0}
    (dst / "config.json").write_text(json.dumps(hub))
    return dst


@pytest.mark.slow
def test_nomicbert_hub_config_converts_the_same(tmp_path):
    src = cached_embedder(family="nomicbert", pooling="mean")
    hub = _hub_config(src, tmp_path / "hub")
    out = tmp_path / "hub.gguf"
    convert(hub, out, QuantSpec("F32"))
    ref, _ = st_reference(src)
    assert cosines(gguf_embeddings(load_gguf(out)), ref).min() >= 0.9999


def test_nomicbert_refuses_moe_and_biases(tmp_path):
    src = make_embedder(tmp_path / "n", family="nomicbert")
    cfg = json.loads((src / "config.json").read_text())
    for extra, msg in (({"moe_every_n_layers": 2}, "mixture-of-experts layers"),
                       ({"qkv_proj_bias": True}, "qkv_proj_bias=true is not supported")):
        (src / "config.json").write_text(json.dumps({**cfg, **extra}))
        with pytest.raises(SlimedgeError, match=msg):
            convert(src, tmp_path / "x.gguf")
