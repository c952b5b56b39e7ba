"""slimedge.arch.qwen2: Llama's names, q/k/v biases required, no q/k permutation (neox rope in llama.cpp)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.arch.arch_kit import N_LAYER, FakeSource, config, kv_dict, llama_like_shapes, out_by_name, random_weights
from gguf import MODEL_ARCH, MODEL_TENSORS

from slimedge.arch import get_arch
from slimedge.arch.qwen2 import Qwen2
from slimedge.errors import SlimedgeError


def test_names_are_llamas_with_qkv_biases():
    out = get_arch(config("qwen2")).tensors(FakeSource(random_weights(llama_like_shapes(biases=True))))
    got = {t.origin.split(" in ")[0]: t.name for t in out}
    for i in range(N_LAYER):
        for hf, g in (("self_attn.q_proj.bias", "attn_q.bias"), ("self_attn.k_proj.bias", "attn_k.bias"),
                      ("self_attn.v_proj.bias", "attn_v.bias"), ("self_attn.q_proj.weight", "attn_q.weight"),
                      ("mlp.down_proj.weight", "ffn_down.weight")):
            assert got[f"model.layers.{i}.{hf}"] == f"blk.{i}.{g}"
    assert got["model.embed_tokens.weight"] == "token_embd.weight" and got["lm_head.weight"] == "output.weight"
    assert len(got) == 3 + N_LAYER * 12


def test_required_biases_and_known_tensors():
    required = {hf for hf, _, req in Qwen2.TENSORS if req and hf.endswith(".bias")}
    assert required == {"model.layers.{bid}.self_attn.q_proj.bias", "model.layers.{bid}.self_attn.k_proj.bias",
                        "model.layers.{bid}.self_attn.v_proj.bias"}
    assert {mt for _, mt, _ in Qwen2.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.QWEN2])


def test_missing_qkv_bias_is_refused():
    weights = random_weights(llama_like_shapes(biases=True))
    del weights["model.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(SlimedgeError, match="missing tensor model.layers.1.self_attn.k_proj.bias, which "
                                            "Qwen2ForCausalLM needs"):
        get_arch(config("qwen2")).tensors(FakeSource(weights))


def test_no_permutation_and_any_row_slices():
    weights = random_weights(llama_like_shapes(biases=True))
    out = out_by_name(get_arch(config("qwen2")), FakeSource(weights))
    for name, hf in (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                     ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"),
                     ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias")):
        np.testing.assert_array_equal(out[name].load(), weights[hf])
    assert out["blk.0.attn_q.weight"].row_group == 1


def test_tied_small_model_has_no_output_tensor():
    out = get_arch(config("qwen2", tie_word_embeddings=True)).tensors(
        FakeSource(random_weights(llama_like_shapes(biases=True, lm_head=False))))
    assert "output.weight" not in [t.name for t in out]


def test_metadata_has_no_rope_dimension_count():
    kv = kv_dict(get_arch(config("qwen2")))
    assert "qwen2.rope.dimension_count" not in kv and kv["qwen2.attention.head_count_kv"][0] == 2
