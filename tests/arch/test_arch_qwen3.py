"""slimedge.arch.qwen3: Llama's names, optional biases, per-head q/k norms, head_dim != hidden/heads, no permutation."""

from __future__ import annotations

import numpy as np
import pytest
from tests.arch.arch_kit import N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER, FakeSource, config, kv_dict, out_by_name, random_weights
from gguf import MODEL_ARCH, MODEL_TENSORS, GGUFValueType

from slimedge.arch import get_arch
from slimedge.arch.qwen3 import QK_NORM_TENSORS, Qwen3
from slimedge.errors import SlimedgeError

HEAD_DIM = 16  # != N_EMBD // N_HEAD (8), as in Qwen3-0.6B (1024 / 16 heads, head_dim 128)


def qwen3_config(**kw) -> dict:
    return config("llama", architectures=["Qwen3ForCausalLM"], head_dim=HEAD_DIM, **kw)


def qwen3_shapes(lm_head: bool = True) -> dict[str, tuple]:
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    shapes = {"model.embed_tokens.weight": (64, N_EMBD), "model.norm.weight": (N_EMBD,)}
    if lm_head:
        shapes["lm_head.weight"] = (64, N_EMBD)
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (N_EMBD,), p + "post_attention_layernorm.weight": (N_EMBD,),
            p + "self_attn.q_proj.weight": (q, N_EMBD), p + "self_attn.k_proj.weight": (kv, N_EMBD),
            p + "self_attn.v_proj.weight": (kv, N_EMBD), p + "self_attn.o_proj.weight": (N_EMBD, q),
            p + "self_attn.q_norm.weight": (HEAD_DIM,), p + "self_attn.k_norm.weight": (HEAD_DIM,),
            p + "mlp.gate_proj.weight": (48, N_EMBD), p + "mlp.up_proj.weight": (48, N_EMBD),
            p + "mlp.down_proj.weight": (N_EMBD, 48)})
    return shapes


def test_names_in_file_order_with_qk_norms():
    names = [t.name for t in get_arch(qwen3_config()).tensors(FakeSource(random_weights(qwen3_shapes())))]
    block = ["attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_q_norm.weight", "attn_k_norm.weight",
             "attn_v.weight", "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
             "ffn_down.weight"]
    assert names == (["token_embd.weight"] + [f"blk.{i}.{n}" for i in range(N_LAYER) for n in block]
                     + ["output_norm.weight", "output.weight"])
    assert {mt for _, mt, _ in Qwen3.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.QWEN3])
    assert all(req for _, _, req in QK_NORM_TENSORS)
    assert not any(req for hf, _, req in Qwen3.TENSORS if hf.endswith(".bias"))


def test_no_permutation_and_norms_pass_through():
    weights = random_weights(qwen3_shapes())
    out = out_by_name(get_arch(qwen3_config()), FakeSource(weights))
    for name, hf in (("blk.1.attn_q.weight", "self_attn.q_proj.weight"), ("blk.1.attn_k.weight", "self_attn.k_proj.weight"),
                     ("blk.1.attn_q_norm.weight", "self_attn.q_norm.weight"),
                     ("blk.1.attn_k_norm.weight", "self_attn.k_norm.weight")):
        np.testing.assert_array_equal(out[name].load(), weights[f"model.layers.1.{hf}"])
    assert out["blk.0.attn_q.weight"].shape == (N_HEAD * HEAD_DIM, N_EMBD) and out["blk.0.attn_q.weight"].row_group == 1


def test_head_dim_goes_to_key_and_value_length():
    arch = get_arch(qwen3_config())
    kv = kv_dict(arch)
    assert kv["qwen3.attention.key_length"] == (HEAD_DIM, GGUFValueType.UINT32)
    assert kv["qwen3.attention.value_length"] == (HEAD_DIM, GGUFValueType.UINT32)
    assert "qwen3.rope.dimension_count" not in kv
    info = arch.model_info()
    assert (info.arch, info.key_length, info.value_length) == ("qwen3", HEAD_DIM, HEAD_DIM)


def test_missing_or_misshapen_qk_norm_is_refused():
    weights = random_weights(qwen3_shapes())
    del weights["model.layers.1.self_attn.k_norm.weight"]
    with pytest.raises(SlimedgeError, match="missing tensor model.layers.1.self_attn.k_norm.weight, which Qwen3"):
        get_arch(qwen3_config()).tensors(FakeSource(weights))
    shapes = qwen3_shapes()
    shapes["model.layers.0.self_attn.q_norm.weight"] = (N_HEAD * HEAD_DIM,)  # whole-projection (OLMo 2 style)
    with pytest.raises(SlimedgeError, match="q_norm.weight has shape .* but config.json implies \\[16\\]"):
        get_arch(qwen3_config()).tensors(FakeSource(random_weights(shapes)))


def test_tied_has_no_output_and_sliding_window_is_refused():
    out = get_arch(qwen3_config(tie_word_embeddings=True)).tensors(FakeSource(random_weights(qwen3_shapes(False))))
    assert "output.weight" not in [t.name for t in out]
    get_arch(qwen3_config(use_sliding_window=False, sliding_window=4096))  # the real configs: off
    with pytest.raises(SlimedgeError, match="use_sliding_window=true is not supported"):
        get_arch(qwen3_config(use_sliding_window=True, sliding_window=64))
