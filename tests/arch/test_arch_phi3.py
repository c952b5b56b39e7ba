"""slimedge.arch.phi3: fused qkv / gate_up tensors kept whole, rope dimensions, long-rope factors and keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tests.arch.arch_kit import HEAD_DIM, N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB, FakeSource, config, kv_dict, out_by_name, random_weights
from gguf import MODEL_ARCH, MODEL_TENSORS, GGUFValueType

from slimedge.arch import get_arch
from slimedge.arch.phi3 import Phi3
from slimedge.errors import SlimedgeError

QKV_ROWS = (N_HEAD + 2 * N_HEAD_KV) * HEAD_DIM


def phi3_shapes(lm_head: bool = True) -> dict[str, tuple]:
    shapes = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.norm.weight": (N_EMBD,)}
    if lm_head:
        shapes["lm_head.weight"] = (N_VOCAB, N_EMBD)
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (N_EMBD,), p + "post_attention_layernorm.weight": (N_EMBD,),
                       p + "self_attn.qkv_proj.weight": (QKV_ROWS, N_EMBD),
                       p + "self_attn.o_proj.weight": (N_EMBD, N_HEAD * HEAD_DIM),
                       p + "mlp.gate_up_proj.weight": (2 * N_FF, N_EMBD), p + "mlp.down_proj.weight": (N_EMBD, N_FF)})
    return shapes


LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [1.0 + i / 4 for i in range(4)],
            "short_factor": [1.0 + i / 16 for i in range(4)], "original_max_position_embeddings": 32}


def test_fused_names_in_file_order():
    names = [t.name for t in get_arch(config("phi3")).tensors(FakeSource(random_weights(phi3_shapes())))]
    block = ["attn_norm.weight", "attn_qkv.weight", "attn_output.weight", "ffn_norm.weight", "ffn_up.weight",
             "ffn_down.weight"]
    assert names == (["token_embd.weight"] + [f"blk.{i}.{n}" for i in range(N_LAYER) for n in block]
                     + ["output_norm.weight", "output.weight"])
    assert {mt for _, mt, _ in Phi3.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.PHI3])
    assert all(req for _, _, req in Phi3.TENSORS)


def test_fused_tensors_pass_through_unsplit():
    """llama.cpp's phi3 graph takes qkv (q, k, v rows) and gate_up (gate rows first) as they are."""
    weights = random_weights(phi3_shapes())
    out = out_by_name(get_arch(config("phi3")), FakeSource(weights))
    qkv, up = out["blk.1.attn_qkv.weight"], out["blk.1.ffn_up.weight"]
    assert qkv.shape == (QKV_ROWS, N_EMBD) and up.shape == (2 * N_FF, N_EMBD)
    np.testing.assert_array_equal(qkv.load(), weights["model.layers.1.self_attn.qkv_proj.weight"])
    np.testing.assert_array_equal(up.load(), weights["model.layers.1.mlp.gate_up_proj.weight"])
    np.testing.assert_array_equal(up.load_rows(N_FF, 2 * N_FF), weights["model.layers.1.mlp.gate_up_proj.weight"][N_FF:])


@pytest.mark.parametrize("hf, rows", [("self_attn.qkv_proj.weight", N_HEAD * HEAD_DIM),
                                      ("mlp.gate_up_proj.weight", N_FF)])
def test_unfused_shape_is_refused(hf, rows):
    shapes = phi3_shapes()
    shapes[f"model.layers.0.{hf}"] = (rows, N_EMBD)
    with pytest.raises(SlimedgeError, match=f"model.layers.0.{hf} has shape .* but config.json implies"):
        get_arch(config("phi3")).tensors(FakeSource(random_weights(shapes)))


def test_metadata_keys():
    kv = kv_dict(get_arch(config("phi3", sliding_window=64, original_max_position_embeddings=32)))
    U32 = GGUFValueType.UINT32
    assert kv["phi3.rope.scaling.original_context_length"] == (32, U32)
    assert kv["phi3.rope.dimension_count"] == (HEAD_DIM, U32)
    assert kv["phi3.attention.sliding_window"] == (64, U32)
    assert kv["phi3.feed_forward_length"][0] == N_FF  # the unfused size: ffn_up holds 2x that
    assert "phi3.rope.scaling.attn_factor" not in kv
    kv = kv_dict(get_arch(config("phi3")))
    assert kv["phi3.attention.sliding_window"][0] == 0 and kv["phi3.rope.scaling.original_context_length"][0] == 128


def test_no_rope_scaling_type_keys_even_when_configured():
    kv = kv_dict(get_arch(config("phi3", rope_scaling={"type": "linear", "factor": 2.0})))
    assert not [k for k in kv if k.startswith("phi3.rope.scaling.type") or k.endswith("scaling.factor")]


def test_partial_rotary_factor_sets_rope_dimensions():
    assert get_arch(config("phi3", partial_rotary_factor=0.5)).rope_dims == HEAD_DIM // 2
    assert get_arch(config("phi3")).rope_dims == HEAD_DIM


def test_longrope_factors_become_tensors_and_attention_factor():
    cfg = config("phi3", rope_parameters=LONGROPE)
    arch = get_arch(cfg)
    out = arch.tensors(FakeSource(random_weights(phi3_shapes())))
    assert [t.name for t in out[:2]] == ["rope_factors_long.weight", "rope_factors_short.weight"]
    np.testing.assert_array_equal(out[0].load(), np.asarray(LONGROPE["long_factor"], np.float32))
    np.testing.assert_array_equal(out[1].load(), np.asarray(LONGROPE["short_factor"], np.float32))
    kv = kv_dict(arch)
    scale = 128 / 32
    assert kv["phi3.rope.scaling.attn_factor"][0] == pytest.approx(math.sqrt(1 + math.log(scale) / math.log(32)))
    assert kv["phi3.rope.scaling.original_context_length"][0] == 32
    assert kv["phi3.rope.freq_base"][0] == 10000.0


def test_longrope_attention_factor_given_explicitly_wins():
    kv = kv_dict(get_arch(config("phi3", rope_parameters={**LONGROPE, "attention_factor": 1.25})))
    assert kv["phi3.rope.scaling.attn_factor"][0] == 1.25


def test_longrope_factor_lengths_must_match_rope_dimensions():
    bad = {**LONGROPE, "short_factor": [1.0, 1.0]}
    with pytest.raises(SlimedgeError, match="long_factor/short_factor must both have 4 entries"):
        get_arch(config("phi3", rope_parameters=bad)).tensors(FakeSource(random_weights(phi3_shapes())))
