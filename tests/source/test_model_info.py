"""ModelInfo.from_metadata: the one reading of GGUF hyper-parameters (convert, mixes, bundle), as llama.cpp's."""

from __future__ import annotations

import pytest

from slimedge.errors import SlimedgeError
from slimedge.quant.model_info import ModelInfo

BASE = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2, "llama.feed_forward_length": 128,
        "llama.context_length": 256}


def info(**changes) -> ModelInfo:
    meta = {**BASE, **{k.replace("__", "."): v for k, v in changes.items()}}
    return ModelInfo.from_metadata({k: v for k, v in meta.items() if v is not None}, where="m.gguf")


def test_scalars():
    m = info()
    assert (m.arch, m.n_layer, m.n_head, m.n_head_kv, m.n_expert, m.n_embd, m.n_ff, m.n_ctx_train) == (
        "llama", 2, 4, 2, 0, 64, 128, 256)
    assert m.key_length == m.value_length == 16 and m.n_vocab == 0
    assert (m.n_head_layers, m.n_head_kv_layers, m.n_ff_layers) == ((), (), ())


def test_defaults_as_llama_cpp():
    m = info(llama__attention__head_count_kv=None)
    assert m.n_head_kv == 4  # head_count_kv defaults to head_count
    m = info(llama__attention__head_count=None, llama__attention__head_count_kv=None)
    assert m.n_head == m.n_head_kv == 1
    assert info(**{"tokenizer.ggml.tokens": ["a", "b", "c"]}).n_vocab == 3
    assert info(llama__vocab_size=7, **{"tokenizer.ggml.tokens": ["a"]}).n_vocab == 7
    assert info(llama__attention__key_length=32).key_length == 32
    assert info(general__architecture=b"llama").arch == "llama"  # GGUFSource keeps strings as bytes


def test_per_layer_lists_layer_zero_for_the_mix_and_max_for_sizing():
    m = info(llama__attention__head_count_kv=[1, 2], llama__feed_forward_length=[96, 128])
    assert (m.n_head_kv, m.max_head_kv, m.n_head_kv_layers) == (1, 2, (1, 2))
    assert (m.n_ff, m.max_ff, m.n_ff_layers) == (96, 128, (96, 128))
    m = info(llama__attention__head_count=[8, 4], llama__attention__head_count_kv=None)
    assert (m.n_head, m.max_head, m.n_head_kv_layers) == (8, 8, (8, 4))  # kv defaults to heads, layer by layer
    assert m.key_length == 64 // 8


def test_missing_block_count_names_file_and_key():
    with pytest.raises(SlimedgeError) as e:
        info(llama__block_count=None)
    assert str(e.value).startswith("m.gguf: lacks llama.block_count") and "\n" not in str(e.value)
    with pytest.raises(SlimedgeError, match="m.gguf: no general.architecture key"):
        info(general__architecture=None)


@pytest.mark.parametrize("key, value, match", [
    ("llama__attention__head_count_kv", [2, 2, 2], "has 3 per-layer values for 2 layers"),
    ("llama__attention__head_count", "four", "llama.attention.head_count is 'four', expected a count"),
    ("llama__block_count", [2, 2], "llama.block_count is \\[2, 2\\], expected a count"),
    ("llama__attention__head_count_kv", [2, -1], "is -1, expected a count"),
])
def test_bad_values_are_one_line(key, value, match):
    with pytest.raises(SlimedgeError, match=f"^m.gguf: .*{match}"):
        info(**{key: value})
