"""A float GGUF as conversion source: tensor references, hyper-parameters read once, per-layer head counts.

The source GGUFs are slimedge's own F32 conversion of a tiny Llama, copied with changed metadata
(tests/gguf_edit.py) into forms llama.cpp allows: head_count_kv as one value per layer.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.factory import cached_hf_model
from gguf import GGUFReader, GGUFValueType
from tests.gguf_edit import edit_gguf

from slimedge.convert import convert, plan
from slimedge.errors import SlimedgeError
from slimedge.quant.mixes import QuantSpec
from slimedge.source import GGUFSource, TensorRef, is_gguf

U32 = GGUFValueType.UINT32


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf-src") / "f32.gguf"
    return convert(cached_hf_model(arch="llama"), out, QuantSpec("F32")).out


def test_tensor_refs_share_the_base_and_read_whole_or_rows(f32_gguf):
    src = GGUFSource(f32_gguf)
    stored = {t.name: np.asarray(t.data) for t in GGUFReader(f32_gguf).tensors}
    ref = src.tensors["blk.0.attn_q.weight"]
    assert isinstance(ref, TensorRef) and ref.dtype == "F32" and ref.qtype.name == "F32"
    assert ref.where == "blk.0.attn_q.weight in f32.gguf" and ref.n_rows == ref.shape[0]
    np.testing.assert_array_equal(ref.load(), stored[ref.name])
    np.testing.assert_array_equal(ref.load_rows(3, 9), stored[ref.name][3:9])
    with pytest.raises(ValueError, match=r"rows \[0, 999\) outside"):
        ref.load_rows(0, 999)


def test_is_gguf(f32_gguf, tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not gguf")
    assert is_gguf(f32_gguf) and not is_gguf(tmp_path) and not is_gguf(tmp_path / "x.gguf")
    assert is_gguf(tmp_path / "missing.gguf") and not is_gguf(tmp_path / "missing")


def test_model_info_from_the_gguf(f32_gguf):
    m = GGUFSource(f32_gguf).model_info()
    assert (m.arch, m.n_layer, m.n_head, m.n_head_kv, m.n_embd, m.n_ff) == ("llama", 2, 4, 2, 64, 128)
    assert m.n_head_kv_layers == () and plan(f32_gguf).model == m


def _llama_scores(path, tokens):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, n_batch=32, n_threads=2, logits_all=True, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


@pytest.mark.slow
def test_per_layer_head_count_kv_requantizes_and_loads_in_llama_cpp(f32_gguf, tmp_path):
    per_layer = edit_gguf(f32_gguf, tmp_path / "per-layer.gguf",
                          set={"llama.attention.head_count_kv": ([2, 2], GGUFValueType.ARRAY, U32)})
    assert GGUFReader(per_layer).fields["llama.attention.head_count_kv"].contents() == [2, 2]
    assert GGUFSource(per_layer).model_info().n_head_kv_layers == (2, 2)
    got = convert(per_layer, tmp_path / "q4km-per-layer.gguf", QuantSpec("Q4_K_M"))
    want = convert(f32_gguf, tmp_path / "q4km.gguf", QuantSpec("Q4_K_M"))
    assert [t.qtype for t in got.plan.tensors] == [t.qtype for t in want.plan.tensors]
    out = GGUFReader(got.out)
    assert out.fields["llama.attention.head_count_kv"].contents() == [2, 2]  # carried over as it was
    tokens = [1, 17, 300, 42, 999, 5]
    np.testing.assert_array_equal(_llama_scores(got.out, tokens), _llama_scores(want.out, tokens))


def test_missing_block_count_is_one_line_naming_file_and_key(f32_gguf, tmp_path):
    bad = edit_gguf(f32_gguf, tmp_path / "no-blocks.gguf", drop={"llama.block_count"})
    with pytest.raises(SlimedgeError) as e:
        plan(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: lacks llama.block_count") and "\n" not in msg


def test_per_layer_list_of_the_wrong_length_is_refused(f32_gguf, tmp_path):
    bad = edit_gguf(f32_gguf, tmp_path / "short.gguf",
                    set={"llama.attention.head_count": ([4, 4, 4], GGUFValueType.ARRAY, U32)})
    with pytest.raises(SlimedgeError, match=r"short.gguf: llama.attention.head_count has 3 per-layer values for 2 "
                                            r"layers"):
        plan(bad)
