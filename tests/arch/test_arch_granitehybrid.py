"""slimedge.arch.granitehybrid / ssm.Mamba2: Mamba-2 and attention layers from layer_types (legacy and transformers 5
names), the mixer's llama.cpp layout (A as -exp(A_log) columns, D columns, the norm per group, dt_bias renamed,
conv squeezed), the shared MLP split, MoE and dense forms, metadata, recurrent state in ModelInfo, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType

from slimedge.arch import get_arch
from slimedge.errors import SlimedgeError
from slimedge.memory import kv_bytes_per_layer, shape_from_model_info
from tests.arch.arch_kit import FakeSource, kv_dict, random_weights

D, V, NH, NKV, E, FF, FF_SH = 32, 64, 4, 2, 4, 16, 24
MH, MD, MG, MS, MC = 4, 16, 2, 8, 4  # Mamba heads, head size, groups, state, conv taps (inner 64)
TYPES = ["mamba", "attention", "mamba"]


def config(**over) -> dict:
    cfg = dict(architectures=["GraniteMoeHybridForCausalLM"], vocab_size=V, hidden_size=D, intermediate_size=FF,
               shared_intermediate_size=FF_SH, num_hidden_layers=3, num_attention_heads=NH, num_key_value_heads=NKV,
               max_position_embeddings=128, rms_norm_eps=1e-5, layer_types=TYPES, num_local_experts=E,
               num_experts_per_tok=2, mamba_n_heads=MH, mamba_d_head=MD, mamba_n_groups=MG, mamba_d_state=MS,
               mamba_d_conv=MC, position_embedding_type="nope", embedding_multiplier=12.0, residual_multiplier=0.22,
               attention_multiplier=0.0078125, logits_scaling=6.0, tie_word_embeddings=True)
    cfg.update(over)
    return cfg


def shapes(dense: bool = False) -> dict:
    inner, conv = MH * MD, MH * MD + 2 * MG * MS
    s = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i, t in enumerate(TYPES):
        p = f"model.layers.{i}."
        s.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                  p + "shared_mlp.input_linear.weight": (2 * FF_SH, D),
                  p + "shared_mlp.output_linear.weight": (D, FF_SH)})
        if not dense:
            s.update({p + "block_sparse_moe.router.layer.weight": (E, D),
                      p + "block_sparse_moe.input_linear.weight": (E, 2 * FF, D),
                      p + "block_sparse_moe.output_linear.weight": (E, D, FF)})
        if t == "mamba":
            m = p + "mamba."
            s.update({m + "in_proj.weight": (inner + conv + MH, D), m + "conv1d.weight": (conv, 1, MC),
                      m + "conv1d.bias": (conv,), m + "dt_bias": (MH,), m + "A_log": (MH,), m + "D": (MH,),
                      m + "norm.weight": (inner,), m + "out_proj.weight": (D, inner)})
        else:
            a, hd = p + "self_attn.", D // NH
            s.update({a + "q_proj.weight": (NH * hd, D), a + "k_proj.weight": (NKV * hd, D),
                      a + "v_proj.weight": (NKV * hd, D), a + "o_proj.weight": (D, NH * hd)})
    return s


def test_mamba_layout_and_shared_mlp():
    w = random_weights(shapes())
    out = {t.name: t for t in get_arch(config()).tensors(FakeSource(w))}
    m = "model.layers.0.mamba."
    assert {n for n in out if n.startswith("blk.0.ssm")} == {"blk.0.ssm_a", "blk.0.ssm_d", "blk.0.ssm_in.weight",
                                                           "blk.0.ssm_conv1d.weight", "blk.0.ssm_conv1d.bias",
                                                           "blk.0.ssm_dt.bias", "blk.0.ssm_norm.weight",
                                                           "blk.0.ssm_out.weight"}
    np.testing.assert_allclose(out["blk.0.ssm_a"].load(), -np.exp(w[m + "A_log"].astype(np.float64))[:, None],
                               rtol=1e-7)
    assert out["blk.0.ssm_a"].shape == (MH, 1) and out["blk.0.ssm_d"].shape == (MH, 1)
    np.testing.assert_array_equal(out["blk.0.ssm_d"].load(), w[m + "D"][:, None])
    np.testing.assert_array_equal(out["blk.0.ssm_norm.weight"].load(), w[m + "norm.weight"].reshape(MG, -1))
    np.testing.assert_array_equal(out["blk.0.ssm_conv1d.weight"].load(), w[m + "conv1d.weight"][:, 0])
    np.testing.assert_array_equal(out["blk.0.ssm_dt.bias"].load(), w[m + "dt_bias"])
    sh = w["model.layers.1.shared_mlp.input_linear.weight"]
    np.testing.assert_array_equal(out["blk.1.ffn_gate_shexp.weight"].load(), sh[:FF_SH])
    np.testing.assert_array_equal(out["blk.1.ffn_up_shexp.weight"].load_rows(2, 9), sh[FF_SH:][2:9])
    ex = w["model.layers.2.block_sparse_moe.input_linear.weight"]
    np.testing.assert_array_equal(out["blk.2.ffn_up_exps.weight"].load(), ex[:, FF:])
    assert "blk.1.attn_q.weight" in out and "blk.1.ssm_in.weight" not in out and "output.weight" not in out


def test_dense_form_and_metadata():
    w = random_weights(shapes(dense=True))
    arch = get_arch(config(num_local_experts=0, num_experts_per_tok=0,
                           layer_types=["linear_attention", "full_attention", "linear_attention"]))
    out = {t.name for t in arch.tensors(FakeSource(w))}
    assert {"blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"} <= out
    assert not any("exps" in n or "shexp" in n for n in out)
    kv = kv_dict(arch)
    assert kv["granitehybrid.attention.head_count_kv"] == ([0, NKV, 0], GGUFValueType.ARRAY)
    assert kv["granitehybrid.feed_forward_length"][0] == FF_SH and "granitehybrid.expert_count" not in kv
    assert {k: kv[f"granitehybrid.ssm.{k}"][0] for k in ("conv_kernel", "state_size", "group_count", "inner_size",
                                                          "time_step_rank")} == dict(
        conv_kernel=MC, state_size=MS, group_count=MG, inner_size=MH * MD, time_step_rank=MH)
    assert kv["granitehybrid.rope.scaling.finetuned"][0] is False and kv["granitehybrid.context_length"][0] == 2 ** 20
    assert kv["granitehybrid.embedding_scale"][0] == 12.0
    shape = shape_from_model_info(arch.model_info(), [])
    inner = MH * MD
    assert kv_bytes_per_layer(shape, 256, layer=0) == 4 * ((MC - 1) * (inner + 2 * MG * MS) + MS * inner)
    assert kv_bytes_per_layer(shape, 256, layer=1) == 256 * NKV * 2 * (D // NH) * 2


def test_rope_config_keeps_rope_and_context():
    kv = kv_dict(get_arch(config(position_embedding_type="rope")))
    assert kv["granitehybrid.rope.scaling.finetuned"][0] is True and kv["granitehybrid.context_length"][0] == 128
    assert kv["granitehybrid.expert_count"][0] == E
    assert kv["granitehybrid.expert_shared_feed_forward_length"][0] == FF_SH


def test_refusals():
    with pytest.raises(SlimedgeError, match="layer_types"):
        get_arch(config(layer_types=["mamba", "moe", "mamba"]))
    with pytest.raises(SlimedgeError, match="mamba_d_state"):
        get_arch(config(mamba_d_state=None))
    with pytest.raises(SlimedgeError, match="mamba_proj_bias"):
        get_arch(config(mamba_proj_bias=True))
    w = random_weights(shapes())
    del w["model.layers.2.mamba.D"]
    with pytest.raises(SlimedgeError, match=r"missing tensor model\.layers\.2\.mamba\.D.*a Mamba-2 layer"):
        get_arch(config()).tensors(FakeSource(w))
