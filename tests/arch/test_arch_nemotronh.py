"""slimedge.arch.nemotronh: the block pattern (Hub string and transformers 5 list), backbone names onto the shared
Mamba-2 rows, q/k in Llama's rope order as llama.cpp's converter writes them, per-layer kv heads and feed-forward
sizes, recurrent layers for the memory estimate (MLP blocks hold no state), refusals."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType

from slimedge.arch import get_arch
from slimedge.arch.llama import permute_rope_rows
from slimedge.errors import SlimedgeError
from slimedge.memory import kv_bytes_per_layer, shape_from_model_info
from slimedge.quant.model_info import ModelInfo
from tests.arch.arch_kit import FakeSource, kv_dict, random_weights

D, V, NH, NKV, HD, FF = 32, 64, 4, 2, 8, 48
MH, MD, MG, MS, MC = 4, 16, 2, 8, 4


def config(**over) -> dict:
    cfg = dict(architectures=["NemotronHForCausalLM"], vocab_size=V, hidden_size=D, intermediate_size=FF,
               num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD, max_position_embeddings=128,
               layer_norm_epsilon=1e-5, hybrid_override_pattern="M-*", mamba_num_heads=MH, mamba_head_dim=MD,
               n_groups=MG, ssm_state_size=MS, conv_kernel=MC, mlp_hidden_act="relu2", tie_word_embeddings=False)
    cfg.update(over)
    return cfg


def shapes() -> dict:
    inner, conv = MH * MD, MH * MD + 2 * MG * MS
    b = "backbone.layers."
    s = {"backbone.embeddings.weight": (V, D), "backbone.norm_f.weight": (D,), "lm_head.weight": (V, D)}
    s.update({f"{b}{i}.norm.weight": (D,) for i in range(3)})
    s.update({b + "0.mixer." + k: v for k, v in {
        "in_proj.weight": (inner + conv + MH, D), "conv1d.weight": (conv, 1, MC), "conv1d.bias": (conv,),
        "dt_bias": (MH,), "A_log": (MH,), "D": (MH,), "norm.weight": (inner,), "out_proj.weight": (D, inner)}.items()})
    s.update({b + "1.mixer.up_proj.weight": (FF, D), b + "1.mixer.down_proj.weight": (D, FF)})
    s.update({b + "2.mixer.q_proj.weight": (NH * HD, D), b + "2.mixer.k_proj.weight": (NKV * HD, D),
              b + "2.mixer.v_proj.weight": (NKV * HD, D), b + "2.mixer.o_proj.weight": (D, NH * HD)})
    return s


def test_blocks_and_names():
    w = random_weights(shapes())
    out = {t.name: t for t in get_arch(config()).tensors(FakeSource(w))}
    assert {n for n in out if n.startswith("blk.1.")} == {"blk.1.attn_norm.weight", "blk.1.ffn_up.weight",
                                                          "blk.1.ffn_down.weight"}
    assert {"blk.0.ssm_a", "blk.0.ssm_d", "blk.0.ssm_in.weight", "blk.0.ssm_conv1d.bias"} <= set(out)
    np.testing.assert_array_equal(out["blk.2.attn_q.weight"].load(),
                                  permute_rope_rows(w["backbone.layers.2.mixer.q_proj.weight"], NH))
    np.testing.assert_array_equal(out["blk.2.attn_v.weight"].load(), w["backbone.layers.2.mixer.v_proj.weight"])
    np.testing.assert_array_equal(out["blk.0.ssm_norm.weight"].load(),
                                  w["backbone.layers.0.mixer.norm.weight"].reshape(MG, -1))
    np.testing.assert_array_equal(out["output_norm.weight"].load(), w["backbone.norm_f.weight"])


def test_metadata_and_recurrent_layers():
    arch = get_arch(config(hybrid_override_pattern=None,
                           layers_block_type=["linear_attention", "mlp", "full_attention"]))
    kv = kv_dict(arch)
    assert kv["nemotron_h.attention.head_count_kv"] == ([0, 0, NKV], GGUFValueType.ARRAY)
    assert kv["nemotron_h.feed_forward_length"] == ([0, FF, 0], GGUFValueType.ARRAY)
    assert kv["nemotron_h.attention.key_length"][0] == HD and kv["nemotron_h.block_count"][0] == 3
    assert kv["nemotron_h.attention.layer_norm_epsilon"][0] == pytest.approx(1e-5)
    info = arch.model_info()
    assert info.recurrent_layers == (True, False, False)
    # read back from GGUF metadata the way llama.cpp does: recurrent = no kv heads and no feed-forward
    meta = {"general.architecture": "nemotron_h", **{k: v for k, (v, _) in kv.items()}}
    back = ModelInfo.from_metadata(meta)
    assert back.recurrent_layers == (True, False, False) and back.ssm_inner_size == MH * MD
    shape = shape_from_model_info(back, [])
    assert [kv_bytes_per_layer(shape, 256, layer=i) for i in range(3)] == [
        4 * ((MC - 1) * (MH * MD + 2 * MG * MS) + MS * MH * MD), 0, 256 * NKV * 2 * HD * 2]


def test_refusals():
    with pytest.raises(SlimedgeError, match="both dense MLP .* and mixture-of-experts"):  # nemotron_h_moe's own
        get_arch(config(hybrid_override_pattern="M-E*"))
    with pytest.raises(SlimedgeError, match="hybrid_override_pattern"):
        get_arch(config(hybrid_override_pattern="M-X"))
    with pytest.raises(SlimedgeError, match="relu2"):
        get_arch(config(mlp_hidden_act="silu"))
    w = random_weights(shapes())
    del w["backbone.layers.1.mixer.down_proj.weight"]
    with pytest.raises(SlimedgeError, match=r"missing tensor backbone\.layers\.1\.mixer\.down_proj\.weight.*mlp block"):
        get_arch(config()).tensors(FakeSource(w))
