"""slimedge.arch.nemotronhmoe: a Nemotron-H pattern with E blocks becomes llama.cpp's nemotron_h_moe (Hub string and
transformers 5 list); experts stacked in order, router and correction bias, shared expert, Nemotron 3 Super's
latent projections; per-block feed-forward widths (MoE blocks hold no recurrent state), the expert keys; refusals."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType

from slimedge.arch import get_arch
from slimedge.arch.nemotronhmoe import NemotronHMoE
from slimedge.errors import SlimedgeError
from slimedge.memory import kv_bytes_per_layer, shape_from_model_info
from slimedge.quant.model_info import ModelInfo
from tests.arch.arch_kit import FakeSource, kv_dict, random_weights
from tests.arch.test_arch_nemotronh import MC, MD, MG, MH, MS, NH, NKV, D, HD, V, config as dense_config

E, USED, FFE, FFS, LAT = 4, 2, 24, 40, 16


def config(**over) -> dict:
    cfg = dense_config(hybrid_override_pattern="ME*", n_routed_experts=E, num_experts_per_tok=USED,
                       moe_intermediate_size=FFE, moe_shared_expert_intermediate_size=FFS, n_shared_experts=1,
                       norm_topk_prob=True, routed_scaling_factor=2.5, n_group=1, topk_group=1)
    cfg.pop("intermediate_size")  # as Nemotron 3's configs may: the MoE keys say it all
    cfg.update(over)
    return cfg


def shapes(latent: int = 0) -> dict:
    inner, conv, m = MH * MD, MH * MD + 2 * MG * MS, latent or D
    b = "backbone.layers."
    s = {"backbone.embeddings.weight": (V, D), "backbone.norm_f.weight": (D,), "lm_head.weight": (V, D)}
    s.update({f"{b}{i}.norm.weight": (D,) for i in range(3)})
    s.update({b + "0.mixer." + k: v for k, v in {
        "in_proj.weight": (inner + conv + MH, D), "conv1d.weight": (conv, 1, MC), "conv1d.bias": (conv,),
        "dt_bias": (MH,), "A_log": (MH,), "D": (MH,), "norm.weight": (inner,), "out_proj.weight": (D, inner)}.items()})
    x = b + "1.mixer."
    s.update({x + "gate.weight": (E, D), x + "gate.e_score_correction_bias": (E,),
              x + "shared_experts.up_proj.weight": (FFS, D), x + "shared_experts.down_proj.weight": (D, FFS)})
    for e in range(E):
        s.update({x + f"experts.{e}.up_proj.weight": (FFE, m), x + f"experts.{e}.down_proj.weight": (m, FFE)})
    if latent:
        s.update({x + "fc1_latent_proj.weight": (latent, D), x + "fc2_latent_proj.weight": (D, latent)})
    s.update({b + "2.mixer.q_proj.weight": (NH * HD, D), b + "2.mixer.k_proj.weight": (NKV * HD, D),
              b + "2.mixer.v_proj.weight": (NKV * HD, D), b + "2.mixer.o_proj.weight": (D, NH * HD)})
    return s


def test_moe_blocks_and_names():
    w = random_weights(shapes())
    arch = get_arch(config())
    assert isinstance(arch, NemotronHMoE) and arch.arch == "nemotron_h_moe"
    out = {t.name: t for t in arch.tensors(FakeSource(w))}
    x = "backbone.layers.1.mixer."
    assert {n for n in out if n.startswith("blk.1.")} == {
        "blk.1.attn_norm.weight", "blk.1.ffn_gate_inp.weight", "blk.1.exp_probs_b.bias", "blk.1.ffn_up_exps.weight",
        "blk.1.ffn_down_exps.weight", "blk.1.ffn_up_shexp.weight", "blk.1.ffn_down_shexp.weight"}
    np.testing.assert_array_equal(out["blk.1.ffn_up_exps.weight"].load(),
                                  np.stack([w[x + f"experts.{e}.up_proj.weight"] for e in range(E)]))
    np.testing.assert_array_equal(out["blk.1.ffn_down_exps.weight"].load_rows(D, 2 * D),  # expert 1
                                  w[x + "experts.1.down_proj.weight"])
    np.testing.assert_array_equal(out["blk.1.exp_probs_b.bias"].load(), w[x + "gate.e_score_correction_bias"])
    np.testing.assert_array_equal(out["blk.1.ffn_gate_inp.weight"].load(), w[x + "gate.weight"])
    assert {"blk.0.ssm_a", "blk.2.attn_q.weight"} <= set(out)


def test_latent_experts():
    w = random_weights(shapes(latent=LAT))
    out = {t.name: t for t in get_arch(config(moe_latent_size=LAT)).tensors(FakeSource(w))}
    assert out["blk.1.ffn_latent_down.weight"].shape == (LAT, D)
    assert out["blk.1.ffn_latent_up.weight"].shape == (D, LAT)
    assert out["blk.1.ffn_up_exps.weight"].shape == (E, FFE, LAT)
    assert kv_dict(get_arch(config(moe_latent_size=LAT)))["nemotron_h_moe.moe_latent_size"][0] == LAT
    del w["backbone.layers.1.mixer.fc2_latent_proj.weight"]
    with pytest.raises(SlimedgeError, match=r"missing tensor backbone\.layers\.1\.mixer\.fc2_latent_proj\.weight"):
        get_arch(config(moe_latent_size=LAT)).tensors(FakeSource(w))


def test_metadata_and_recurrent_layers():
    arch = get_arch(config(hybrid_override_pattern=None,
                           layers_block_type=["linear_attention", "moe", "full_attention"]))
    kv = kv_dict(arch)
    assert kv["nemotron_h_moe.attention.head_count_kv"] == ([0, 0, NKV], GGUFValueType.ARRAY)
    assert kv["nemotron_h_moe.feed_forward_length"] == ([0, FFE, 0], GGUFValueType.ARRAY)
    assert {k.split(".", 1)[1]: v for k, (v, _) in kv.items() if ".expert" in k} == {
        "expert_count": E, "expert_used_count": USED, "expert_feed_forward_length": FFE,
        "expert_shared_feed_forward_length": FFS, "expert_shared_count": 1, "expert_weights_norm": True,
        "expert_weights_scale": 2.5, "expert_group_count": 1, "expert_group_used_count": 1}
    assert "nemotron_h_moe.moe_latent_size" not in kv
    info = arch.model_info()
    assert info.recurrent_layers == (True, False, False) and info.n_expert == E
    meta = {"general.architecture": "nemotron_h_moe", **{k: v for k, (v, _) in kv.items()}}
    back = ModelInfo.from_metadata(meta)
    assert back.recurrent_layers == (True, False, False)
    shape = shape_from_model_info(back, [])
    assert [kv_bytes_per_layer(shape, 256, layer=i) for i in range(3)] == [
        4 * ((MC - 1) * (MH * MD + 2 * MG * MS) + MS * MH * MD), 0, 256 * NKV * 2 * HD * 2]


def test_refusals():
    with pytest.raises(SlimedgeError, match="both dense MLP"):
        get_arch(config(hybrid_override_pattern="ME-*"))
    with pytest.raises(SlimedgeError, match="0 < topk_group < n_group"):
        get_arch(config(n_group=2, topk_group=2))
    with pytest.raises(SlimedgeError, match="n_routed_experts"):
        get_arch(config(n_routed_experts=None))
    w = random_weights(shapes())
    del w["backbone.layers.1.mixer.experts.3.down_proj.weight"]
    with pytest.raises(SlimedgeError, match=r"experts\.3\.down_proj\.weight.*3 of 4 found"):
        get_arch(config()).tensors(FakeSource(w))
    w = random_weights(shapes())
    del w["backbone.layers.1.mixer.gate.e_score_correction_bias"]
    with pytest.raises(SlimedgeError, match=r"missing tensor backbone\.layers\.1\.mixer\.gate\.e_score_correction"):
        get_arch(config()).tensors(FakeSource(w))
