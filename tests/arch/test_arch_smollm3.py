"""slimedge.arch.smollm3: Llama's table and q/k permutation, llama.cpp's fixed no-rope pattern checked."""

from __future__ import annotations

import numpy as np
import pytest
from tests.arch.arch_kit import HEAD_DIM, N_LAYER, FakeSource, config, kv_dict, llama_like_shapes, out_by_name, random_weights
from gguf import MODEL_ARCH, MODEL_TENSORS

from slimedge.arch import get_arch
from slimedge.arch.llama import permute_rope_rows
from slimedge.arch.smollm3 import SmolLM3, rope_layers
from slimedge.errors import SlimedgeError


def smol_config(**kw) -> dict:
    return config("llama", architectures=["SmolLM3ForCausalLM"], **kw)


def test_llama_names_and_permuted_qk():
    weights = random_weights(llama_like_shapes())
    arch = get_arch(smol_config())
    assert arch.arch == "smollm3" and isinstance(arch, SmolLM3)
    assert {mt for _, mt, _ in SmolLM3.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.SMOLLM3])
    out = out_by_name(arch, FakeSource(weights))
    assert len(out) == 3 + N_LAYER * 9
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(out["blk.0.attn_q.weight"].load(), permute_rope_rows(q, q.shape[0] // HEAD_DIM))
    assert out["blk.0.attn_k.weight"].row_group == HEAD_DIM
    np.testing.assert_array_equal(out["blk.0.attn_v.weight"].load(), weights["model.layers.0.self_attn.v_proj.weight"])
    assert kv_dict(arch)["smollm3.rope.dimension_count"][0] == HEAD_DIM


def test_rope_layers_from_list_or_interval():
    assert rope_layers({}, 8) == [1, 1, 1, 0, 1, 1, 1, 0]
    assert rope_layers({"no_rope_layer_interval": 2}, 4) == [1, 0, 1, 0]
    assert rope_layers({"no_rope_layers": [1, 1, 0]}, 3) == [1, 1, 0]


def test_llama_cpp_pattern_is_accepted_and_others_refused():
    get_arch(smol_config(num_hidden_layers=8, no_rope_layers=[1, 1, 1, 0, 1, 1, 1, 0]))
    get_arch(smol_config(num_hidden_layers=2))  # no layer skips rope: still llama.cpp's rule
    with pytest.raises(SlimedgeError, match=r"no_rope_layers \[1, 0\] is not llama.cpp's fixed pattern \[1, 1\]"):
        get_arch(smol_config(no_rope_layers=[1, 0]))
    with pytest.raises(SlimedgeError, match="fixed pattern"):
        get_arch(smol_config(num_hidden_layers=4, no_rope_layer_interval=2))
    with pytest.raises(SlimedgeError, match="use_sliding_window=true is not supported"):
        get_arch(smol_config(use_sliding_window=True, sliding_window=32))
