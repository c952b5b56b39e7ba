"""slimedge.arch.falconh1: µP multipliers folded into the weights (in_proj's z/x/B/C/dt rows each by their own
factor), the bare ffn_norm name, the mixer without its optional norm, memory (KV + state per layer), refusals."""

from __future__ import annotations

import numpy as np
import pytest

from slimedge.arch import get_arch
from slimedge.errors import SlimedgeError
from slimedge.memory import kv_bytes_per_layer, shape_from_model_info
from tests.arch.arch_kit import FakeSource, random_weights

D, V, NH, NKV, HD, FF = 32, 64, 4, 2, 8, 48
MH, MD, MG, MS, MC = 4, 16, 1, 8, 4
SSM = [1.1, 0.9, 1.2, 0.8, 1.3]


def config(**over) -> dict:
    cfg = dict(architectures=["FalconH1ForCausalLM"], vocab_size=V, hidden_size=D, intermediate_size=FF,
               num_hidden_layers=2, num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD,
               max_position_embeddings=128, rms_norm_eps=1e-5, mamba_d_ssm=MH * MD, mamba_n_heads=MH, mamba_d_head=MD,
               mamba_n_groups=MG, mamba_d_state=MS, mamba_d_conv=MC, mamba_rms_norm=False,
               lm_head_multiplier=0.5, embedding_multiplier=2.0, mlp_multipliers=[0.9, 1.1], key_multiplier=0.8,
               attention_out_multiplier=0.7, attention_in_multiplier=1.2, ssm_multipliers=SSM, ssm_in_multiplier=0.9,
               ssm_out_multiplier=1.1, tie_word_embeddings=False)
    cfg.update(over)
    return cfg


def shapes() -> dict:
    inner, conv = MH * MD, MH * MD + 2 * MG * MS
    s = {"model.embed_tokens.weight": (V, D), "model.final_layernorm.weight": (D,), "lm_head.weight": (V, D)}
    for i in range(2):
        p = f"model.layers.{i}."
        s.update({p + "input_layernorm.weight": (D,), p + "pre_ff_layernorm.weight": (D,),
                  p + "self_attn.q_proj.weight": (NH * HD, D), p + "self_attn.k_proj.weight": (NKV * HD, D),
                  p + "self_attn.v_proj.weight": (NKV * HD, D), p + "self_attn.o_proj.weight": (D, NH * HD),
                  p + "feed_forward.gate_proj.weight": (FF, D), p + "feed_forward.up_proj.weight": (FF, D),
                  p + "feed_forward.down_proj.weight": (D, FF), p + "mamba.in_proj.weight": (inner + conv + MH, D),
                  p + "mamba.conv1d.weight": (conv, 1, MC), p + "mamba.conv1d.bias": (conv,),
                  p + "mamba.dt_bias": (MH,),
                  p + "mamba.A_log": (MH,), p + "mamba.D": (MH,), p + "mamba.out_proj.weight": (D, inner)})
    return s


def test_multipliers_folded_and_names():
    w = random_weights(shapes())
    out = {t.name: t for t in get_arch(config()).tensors(FakeSource(w))}
    p = "model.layers.1."
    f32 = np.float32
    np.testing.assert_array_equal(out["token_embd.weight"].load(), w["model.embed_tokens.weight"] * f32(2.0))
    np.testing.assert_array_equal(out["output.weight"].load(), w["lm_head.weight"] * f32(0.5))
    np.testing.assert_array_equal(out["blk.1.attn_k.weight"].load(),
                                  w[p + "self_attn.k_proj.weight"] * f32(0.8) * f32(1.2))
    np.testing.assert_array_equal(out["blk.1.attn_output.weight"].load(), w[p + "self_attn.o_proj.weight"] * f32(0.7))
    np.testing.assert_array_equal(out["blk.1.ffn_gate.weight"].load(),
                                  w[p + "feed_forward.gate_proj.weight"] * f32(0.9))
    np.testing.assert_array_equal(out["blk.1.ffn_up.weight"].load(), w[p + "feed_forward.up_proj.weight"])
    np.testing.assert_array_equal(out["blk.1.ssm_out.weight"].load(), w[p + "mamba.out_proj.weight"] * f32(1.1))
    inner, gs = MH * MD, MG * MS
    row_factor = [SSM[0]] * inner + [SSM[1]] * inner + [SSM[2]] * gs + [SSM[3]] * gs + [SSM[4]] * MH
    want = (w[p + "mamba.in_proj.weight"] * f32(0.9)) * np.asarray(row_factor, np.float32)[:, None]
    np.testing.assert_array_equal(out["blk.1.ssm_in.weight"].load(), want)
    assert "blk.0.ffn_norm" in out and "blk.0.ffn_norm.weight" not in out and "blk.0.ssm_norm.weight" not in out
    assert out["blk.0.ssm_a"].shape == (MH, 1)


def test_memory_counts_kv_and_state_in_every_layer():
    shape = shape_from_model_info(get_arch(config()).model_info(), [])
    state = 4 * ((MC - 1) * (MH * MD + 2 * MG * MS) + MS * MH * MD)
    assert [kv_bytes_per_layer(shape, 256, layer=i) for i in range(2)] == [256 * NKV * 2 * HD * 2 + state] * 2


def test_refusals():
    with pytest.raises(SlimedgeError, match="mamba_norm_before_gate"):
        get_arch(config(mamba_rms_norm=True))
    with pytest.raises(SlimedgeError, match="ties its embeddings"):
        get_arch(config(tie_word_embeddings=True))
    with pytest.raises(SlimedgeError, match="5 ssm_multipliers"):
        get_arch(config(ssm_multipliers=[1.0, 1.0]))
    w = random_weights(shapes())
    del w["model.layers.1.mamba.A_log"]
    with pytest.raises(SlimedgeError, match=r"missing tensor model\.layers\.1\.mamba\.A_log"):
        get_arch(config()).tensors(FakeSource(w))
