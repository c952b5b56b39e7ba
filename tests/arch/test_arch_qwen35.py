"""slimedge.arch.qwen35 / ssm: delta-net and attention layers from layer_types, the value-head tiling (row ranges
and loaded arrays, checked against an index-by-index reference), zero-centred norms, metadata, the recurrent
state in the memory estimate, the multimodal wrapper's names, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType

from slimedge.arch import get_arch
from slimedge.errors import SlimedgeError
from slimedge.memory import kv_bytes_per_layer, shape_from_model_info
from tests.arch.arch_kit import FakeSource, kv_dict, random_weights

D, V, FF, HD, NH, NKV = 32, 64, 48, 8, 4, 2
NK, NV, DK, K = 2, 4, 8, 4  # key heads, value heads (2 per key head), head size, conv taps
TYPES = ["linear_attention", "linear_attention", "full_attention"]


def config(arch="Qwen3_5ForCausalLM", **over) -> dict:
    cfg = dict(architectures=[arch], vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=3,
               num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD, max_position_embeddings=128,
               rms_norm_eps=1e-6, rope_parameters={"rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                                    "rope_type": "default"},
               linear_num_key_heads=NK, linear_num_value_heads=NV, linear_key_head_dim=DK, linear_value_head_dim=DK,
               linear_conv_kernel_dim=K, layer_types=TYPES, tie_word_embeddings=False)
    cfg.update(over)
    return cfg


def shapes(prefix="model.", moe=False) -> dict:
    conv = 2 * NK * DK + NV * DK
    s = {prefix + "embed_tokens.weight": (V, D), prefix + "norm.weight": (D,), "lm_head.weight": (V, D)}
    for i, t in enumerate(TYPES):
        p = f"{prefix}layers.{i}."
        s.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,)})
        if moe:
            s[p + "mlp.gate.weight"] = (4, D)
            s.update({p + f"mlp.experts.{e}.{n}_proj.weight": (16, D) if n != "down" else (D, 16)
                      for e in range(4) for n in ("gate", "up", "down")})
            s.update({p + "mlp.shared_expert.gate_proj.weight": (24, D),
                      p + "mlp.shared_expert.up_proj.weight": (24, D),
                      p + "mlp.shared_expert.down_proj.weight": (D, 24), p + "mlp.shared_expert_gate.weight": (1, D)})
        else:
            s.update({p + "mlp.gate_proj.weight": (FF, D), p + "mlp.up_proj.weight": (FF, D),
                      p + "mlp.down_proj.weight": (D, FF)})
        if t == "full_attention":
            a = p + "self_attn."
            s.update({a + "q_proj.weight": (2 * NH * HD, D), a + "k_proj.weight": (NKV * HD, D),
                      a + "v_proj.weight": (NKV * HD, D), a + "o_proj.weight": (D, NH * HD),
                      a + "q_norm.weight": (HD,), a + "k_norm.weight": (HD,)})
        else:
            a = p + "linear_attn."
            s.update({a + "A_log": (NV,), a + "dt_bias": (NV,), a + "conv1d.weight": (conv, 1, K),
                      a + "in_proj_qkv.weight": (conv, D), a + "in_proj_z.weight": (NV * DK, D),
                      a + "in_proj_a.weight": (NV, D), a + "in_proj_b.weight": (NV, D), a + "norm.weight": (DK,),
                      a + "out_proj.weight": (D, NV * DK)})
    return s


def tiled_index(n_heads_v: int, head: int) -> list[int]:
    """Source index of each output index: output head j*NK + k is source head k*(NV//NK) + j."""
    r = n_heads_v // NK
    return [(k * r + j) * head + x for j in range(r) for k in range(NK) for x in range(head)]


def test_names_and_transforms_against_an_index_reference():
    w = random_weights(shapes())
    out = {t.name: t for t in get_arch(config()).tensors(FakeSource(w))}
    assert {n for n in out if n.startswith("blk.2.")} == {f"blk.2.{x}.weight" for x in (
        "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "post_attention_norm",
        "ffn_gate", "ffn_up", "ffn_down")}
    assert {n for n in out if n.startswith("blk.0.")} == {"blk.0.ssm_a", "blk.0.ssm_dt.bias"} | {
        f"blk.0.{x}.weight" for x in ("attn_norm", "ssm_conv1d", "ssm_alpha", "ssm_beta", "attn_qkv", "attn_gate",
                                      "ssm_norm", "ssm_out", "post_attention_norm", "ffn_gate", "ffn_up", "ffn_down")}
    a = "model.layers.0.linear_attn."
    qk = 2 * NK * DK
    v_rows = [qk + i for i in tiled_index(NV, DK)]
    np.testing.assert_array_equal(out["blk.0.attn_qkv.weight"].load(),
                                  w[a + "in_proj_qkv.weight"][list(range(qk)) + v_rows])
    np.testing.assert_array_equal(out["blk.0.ssm_conv1d.weight"].load(),
                                  w[a + "conv1d.weight"][list(range(qk)) + v_rows, 0])
    np.testing.assert_array_equal(out["blk.0.attn_gate.weight"].load(), w[a + "in_proj_z.weight"][tiled_index(NV, DK)])
    np.testing.assert_array_equal(out["blk.0.ssm_beta.weight"].load(), w[a + "in_proj_b.weight"][tiled_index(NV, 1)])
    np.testing.assert_array_equal(out["blk.0.ssm_out.weight"].load(), w[a + "out_proj.weight"][:, tiled_index(NV, DK)])
    np.testing.assert_array_equal(out["blk.0.ssm_dt.bias"].load(), w[a + "dt_bias"][tiled_index(NV, 1)])
    np.testing.assert_allclose(out["blk.0.ssm_a"].load(),
                               -np.exp(w[a + "A_log"].astype(np.float64))[tiled_index(NV, 1)],
                               rtol=1e-7)
    np.testing.assert_array_equal(out["blk.0.ssm_norm.weight"].load(), w[a + "norm.weight"])  # gated norm: as is
    for gguf, hf in (("blk.1.attn_norm.weight", "model.layers.1.input_layernorm.weight"),
                     ("blk.2.attn_q_norm.weight", "model.layers.2.self_attn.q_norm.weight"),
                     ("blk.2.post_attention_norm.weight", "model.layers.2.post_attention_layernorm.weight"),
                     ("output_norm.weight", "model.norm.weight")):
        np.testing.assert_array_equal(out[gguf].load(), w[hf] + np.float32(1))  # zero-centred in HF
    np.testing.assert_array_equal(out["blk.2.attn_q.weight"].load(), w["model.layers.2.self_attn.q_proj.weight"])
    for name in ("blk.0.attn_qkv.weight", "blk.0.attn_gate.weight", "blk.0.ssm_out.weight", "blk.0.ssm_conv1d.weight"):
        t, whole = out[name], out[name].load()
        assert t.load_rows is not None and t.row_group == 1
        np.testing.assert_array_equal(t.load_rows(5, 29), whole[5:29])  # a slice reads only its rows, tiled alike


def test_metadata_and_model_info():
    arch = get_arch(config())
    kv = kv_dict(arch)
    assert kv["qwen35.attention.recurrent_layers"] == ([True, True, False], GGUFValueType.ARRAY)
    assert {k: kv[f"qwen35.ssm.{k}"][0] for k in ("conv_kernel", "state_size", "group_count", "time_step_rank",
                                                    "inner_size")} == dict(conv_kernel=K, state_size=DK, group_count=NK,
                                                                           time_step_rank=NV, inner_size=NV * DK)
    assert kv["qwen35.rope.dimension_count"][0] == 2 and kv["qwen35.rope.dimension_sections"][0] == [11, 11, 10, 0]
    assert kv["qwen35.full_attention_interval"][0] == 4 and kv["qwen35.attention.key_length"][0] == HD
    info = arch.model_info()
    assert info.recurrent_layers == (True, True, False) and info.n_head_kv == NKV
    shape = shape_from_model_info(info, [])
    conv_state = (K - 1) * (2 * NK * DK + NV * DK)  # the convolution's last K-1 inputs of each channel
    assert kv_bytes_per_layer(shape, 256, layer=0) == 4 * (conv_state + NV * DK * DK)  # + one DKxDK state per head
    assert kv_bytes_per_layer(shape, 256, layer=2) == 256 * NKV * 2 * HD * 2  # the attention layer: f16 K and V


def test_moe_and_multimodal_wrapper_names():
    w = random_weights({("model.language_model." + k[6:] if k.startswith("model.") else k): v
                        for k, v in shapes(moe=True).items()})
    w["model.visual.blocks.0.attn.qkv.weight"] = np.zeros((3, 3), np.float32)
    w["mtp.fc.weight"] = np.zeros((D, 2 * D), np.float32)
    arch = get_arch(config("Qwen3_5MoeForConditionalGeneration", intermediate_size=None, num_experts=4,
                           num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24))
    out = {t.name: t for t in arch.tensors(FakeSource(w))}
    assert out["blk.1.ffn_gate_exps.weight"].shape == (4, 16, D)
    assert out["blk.1.ffn_gate_inp_shexp.weight"].shape == (1, D)
    np.testing.assert_array_equal(out["blk.2.ffn_down_shexp.weight"].load(),
                                  w["model.language_model.layers.2.mlp.shared_expert.down_proj.weight"])
    assert not any("visual" in n or "mtp" in n or "fc" in n for n in out)
    kv = kv_dict(arch)
    assert "qwen35moe.feed_forward_length" not in kv  # the config states only the experts' sizes
    assert kv["qwen35moe.expert_shared_feed_forward_length"][0] == 24 and kv["qwen35moe.expert_count"][0] == 4


def test_refusals():
    with pytest.raises(SlimedgeError, match="linear_key_head_dim 8 != linear_value_head_dim 16"):
        get_arch(config(linear_value_head_dim=16))
    with pytest.raises(SlimedgeError, match="layer_types"):
        get_arch(config(layer_types=["linear_attention", "mamba", "full_attention"]))
    with pytest.raises(SlimedgeError, match="linear_num_value_heads"):
        get_arch(config(linear_num_value_heads=None))
    w = random_weights(shapes())
    del w["model.layers.1.linear_attn.in_proj_z.weight"]
    with pytest.raises(SlimedgeError, match=r"missing tensor model\.layers\.1\.linear_attn\.in_proj_z\.weight.*"
                                            r"linear-attention layer"):
        get_arch(config()).tensors(FakeSource(w))


def test_qwen3next_splits_qkvz_per_key_head_and_keeps_value_order():
    r = NV // NK
    s = {k: v for k, v in shapes(moe=True).items() if not any(x in k for x in ("in_proj_", "mlp.experts."))}
    for i in (0, 1):
        a = f"model.layers.{i}.linear_attn."
        s.update({a + "in_proj_qkvz.weight": (NK * (2 * DK + 2 * r * DK), D), a + "in_proj_ba.weight": (2 * NV, D)})
    for i in range(3):
        s.update({f"model.layers.{i}.mlp.experts.{e}.{n}_proj.weight": (16, D) if n != "down" else (D, 16)
                  for e in range(4) for n in ("gate", "up", "down")})
    w = random_weights(s)
    arch = get_arch(config("Qwen3NextForCausalLM", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                           shared_expert_intermediate_size=24))
    out = {t.name: t for t in arch.tensors(FakeSource(w))}
    a = "model.layers.1.linear_attn."
    per_head = 2 * DK + 2 * r * DK  # one key head's block: q, k, its r value heads, their r gates
    src = w[a + "in_proj_qkvz.weight"].reshape(NK, per_head, D)
    want_qkv = np.concatenate([src[:, :DK].reshape(-1, D), src[:, DK:2 * DK].reshape(-1, D),
                               src[:, 2 * DK:2 * DK + r * DK].reshape(-1, D)])
    np.testing.assert_array_equal(out["blk.1.attn_qkv.weight"].load(), want_qkv)
    np.testing.assert_array_equal(out["blk.1.attn_qkv.weight"].load_rows(7, 40), want_qkv[7:40])
    np.testing.assert_array_equal(out["blk.1.attn_gate.weight"].load(), src[:, 2 * DK + r * DK:].reshape(-1, D))
    np.testing.assert_array_equal(out["blk.1.ssm_ba.weight"].load(), w[a + "in_proj_ba.weight"])
    np.testing.assert_array_equal(out["blk.1.ssm_out.weight"].load(), w[a + "out_proj.weight"])  # HF's head order
    assert "qwen3next.rope.dimension_sections" not in kv_dict(arch)
    with pytest.raises(SlimedgeError, match="mlp_only_layers"):
        get_arch(config("Qwen3NextForCausalLM", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                        shared_expert_intermediate_size=24, mlp_only_layers=[1]))
