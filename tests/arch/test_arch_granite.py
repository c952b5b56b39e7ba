"""slimedge.arch.granite: Llama's table and permutation, the four multipliers as llama.cpp's scale keys."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from tests.arch.arch_kit import HEAD_DIM, FakeSource, config, kv_dict, llama_like_shapes, out_by_name, random_weights
from gguf import MODEL_ARCH, MODEL_TENSORS, GGUFValueType

from slimedge.arch import get_arch
from slimedge.arch.granite import Granite
from slimedge.arch.llama import permute_rope_rows

F32 = GGUFValueType.FLOAT32


def granite_config(**kw) -> dict:
    return config("llama", architectures=["GraniteForCausalLM"], **kw)


def test_multipliers_become_scale_keys():
    kv = kv_dict(get_arch(granite_config(embedding_multiplier=12.0, residual_multiplier=0.22,
                                         attention_multiplier=0.0078125, logits_scaling=8.0)))
    assert kv["granite.embedding_scale"] == (12.0, F32)
    assert kv["granite.residual_scale"] == (pytest.approx(0.22), F32)
    assert kv["granite.attention.scale"] == (0.0078125, F32)
    assert kv["granite.logit_scale"] == (8.0, F32)
    assert kv["granite.rope.dimension_count"][0] == HEAD_DIM


def test_absent_multipliers_are_transformers_defaults():
    """transformers' Granite scales attention by attention_multiplier (default 1.0), not 1/sqrt(head_dim)."""
    kv = kv_dict(get_arch(granite_config()))
    for key in ("embedding_scale", "residual_scale", "attention.scale", "logit_scale"):
        assert kv[f"granite.{key}"] == (1.0, F32)


def test_llama_names_and_permutation():
    weights = random_weights(llama_like_shapes(biases=True))
    out = out_by_name(get_arch(granite_config(attention_bias=True)), FakeSource(weights))
    assert {mt for _, mt, _ in Granite.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.GRANITE])
    k = weights["model.layers.1.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(out["blk.1.attn_k.weight"].load(), permute_rope_rows(k, k.shape[0] // HEAD_DIM))
    kb = weights["model.layers.1.self_attn.k_proj.bias"]
    np.testing.assert_array_equal(out["blk.1.attn_k.bias"].load(), permute_rope_rows(kb, kb.shape[0] // HEAD_DIM))


def test_head_dim_in_config_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        arch = get_arch(granite_config(head_dim=2 * HEAD_DIM))
    assert arch.hp.head_dim == HEAD_DIM and "head_dim 16 is ignored" in caplog.text
    assert "granite.attention.key_length" not in kv_dict(arch)
