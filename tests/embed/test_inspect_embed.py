"""``slimedge inspect`` says a GGUF is an embedding model (pooling, normalization) — and not when it is not."""

from __future__ import annotations

import json

from click.testing import CliRunner

from slimedge.cli import main
from slimedge.convert import convert
from slimedge.quant.mixes import QuantSpec
from tests.embed.embed_factory import cached_embedder, make_embedder


def _inspect(path, *args):
    r = CliRunner().invoke(main, ["inspect", str(path), *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_inspect_shows_an_embedding_model(tmp_path):
    out = tmp_path / "e.gguf"
    convert(cached_embedder(family="bert", pooling="cls", normalize=False), out, QuantSpec("F16"))
    d = json.loads(_inspect(out, "--json"))
    assert d["kind"] == "embedding" and d["embedding"] == {"pooling": "cls", "normalize": False}
    assert "kind: embedding model (cls pooling, vectors not normalized)" in _inspect(out)


def test_a_decoder_without_pooling_is_a_model(tmp_path):
    src = make_embedder(tmp_path / "q", family="qwen3", pooling="lasttoken")
    (src / "modules.json").unlink()  # a bare Qwen3Model without sentence-transformers files: no pooling written
    out = tmp_path / "q.gguf"
    convert(src, out, QuantSpec("F16"))
    d = json.loads(_inspect(out, "--json"))
    assert d["kind"] == "model" and "embedding" not in d
