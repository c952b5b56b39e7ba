"""slimedge.arch.lfm2moe: dense lead layers then experts (per-expert or fused), the router bias, LFM2's
per-layer kinds and metadata, LFM2's own pre-tokenizer name, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType

from slimedge.arch import get_arch
from slimedge.errors import SlimedgeError
from slimedge.vocab import pretok
from tests.arch.arch_kit import HEAD_DIM, N_EMBD, N_HEAD, N_HEAD_KV, N_VOCAB, FakeSource, kv_dict, random_weights

TYPES = ["conv", "full_attention", "conv"]
FF, FF_EXP, E = 64, 16, 4


def config(**over) -> dict:
    cfg = dict(architectures=["Lfm2MoeForCausalLM"], vocab_size=N_VOCAB, hidden_size=N_EMBD, intermediate_size=FF,
               moe_intermediate_size=FF_EXP, num_hidden_layers=3, num_attention_heads=N_HEAD,
               num_key_value_heads=N_HEAD_KV, max_position_embeddings=128, norm_eps=1e-5, conv_L_cache=3,
               layer_types=TYPES, num_dense_layers=1, num_experts=E, num_experts_per_tok=2, use_expert_bias=True,
               norm_topk_prob=True, routed_scaling_factor=1.0, tie_word_embeddings=True)
    cfg.update(over)
    return cfg


def shapes(fused: bool = False) -> dict:
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    s = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.embedding_norm.weight": (N_EMBD,)}
    for i, t in enumerate(TYPES):
        p, f = f"model.layers.{i}.", f"model.layers.{i}.feed_forward."
        s.update({p + "operator_norm.weight": (N_EMBD,), p + "ffn_norm.weight": (N_EMBD,)})
        if i == 0:
            s.update({f + "w1.weight": (FF, N_EMBD), f + "w3.weight": (FF, N_EMBD), f + "w2.weight": (N_EMBD, FF)})
        else:
            s.update({f + "gate.weight": (E, N_EMBD), f + "expert_bias": (E,)})
            if fused:
                s.update({f + "experts.gate_up_proj": (E, 2 * FF_EXP, N_EMBD),
                          f + "experts.down_proj": (E, N_EMBD, FF_EXP)})
            else:
                s.update({f + f"experts.{e}.{w}.weight": (N_EMBD, FF_EXP) if w == "w2" else (FF_EXP, N_EMBD)
                          for e in range(E) for w in ("w1", "w2", "w3")})
        if t == "conv":
            s.update({p + "conv.conv.weight": (N_EMBD, 1, 3), p + "conv.in_proj.weight": (3 * N_EMBD, N_EMBD),
                      p + "conv.out_proj.weight": (N_EMBD, N_EMBD)})
        else:
            s.update({p + "self_attn.q_proj.weight": (q, N_EMBD), p + "self_attn.k_proj.weight": (kv, N_EMBD),
                      p + "self_attn.v_proj.weight": (kv, N_EMBD), p + "self_attn.out_proj.weight": (N_EMBD, q),
                      p + "self_attn.q_layernorm.weight": (HEAD_DIM,), p + "self_attn.k_layernorm.weight": (HEAD_DIM,)})
    return s


@pytest.mark.parametrize("fused", [False, True])
def test_dense_lead_layer_then_experts(fused):
    w = random_weights(shapes(fused))
    out = {t.name: t for t in get_arch(config()).tensors(FakeSource(w))}
    assert {n for n in out if n.startswith("blk.0.ffn")} == {"blk.0.ffn_norm.weight", "blk.0.ffn_gate.weight",
                                                             "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"}
    assert {n for n in out if n.startswith("blk.2.ffn") or n.startswith("blk.2.exp")} == {
        "blk.2.ffn_norm.weight", "blk.2.ffn_gate_inp.weight", "blk.2.exp_probs_b.bias", "blk.2.ffn_gate_exps.weight",
        "blk.2.ffn_up_exps.weight", "blk.2.ffn_down_exps.weight"}
    f = "model.layers.1.feed_forward."
    if fused:
        gate, up, down = (w[f + "experts.gate_up_proj"][:, :FF_EXP], w[f + "experts.gate_up_proj"][:, FF_EXP:],
                          w[f + "experts.down_proj"])
    else:
        gate, up, down = (np.stack([w[f + f"experts.{e}.{n}.weight"] for e in range(E)]) for n in ("w1", "w3", "w2"))
    np.testing.assert_array_equal(out["blk.1.ffn_gate_exps.weight"].load(), gate)
    np.testing.assert_array_equal(out["blk.1.ffn_up_exps.weight"].load(), up)
    np.testing.assert_array_equal(out["blk.1.ffn_down_exps.weight"].load(), down)
    np.testing.assert_array_equal(out["blk.1.exp_probs_b.bias"].load(), w[f + "expert_bias"])
    assert out["blk.0.shortconv.conv.weight"].shape == (N_EMBD, 3) and "output.weight" not in out


def test_metadata():
    kv = kv_dict(get_arch(config()))
    assert kv["lfm2moe.attention.head_count_kv"] == ([0, N_HEAD_KV, 0], GGUFValueType.ARRAY)
    assert {k: kv[f"lfm2moe.{k}"][0] for k in ("expert_count", "expert_used_count", "expert_feed_forward_length",
                                                "leading_dense_block_count", "expert_gating_func",
                                                "shortconv.l_cache", "feed_forward_length")} == {
        "expert_count": E, "expert_used_count": 2, "expert_feed_forward_length": FF_EXP,
        "leading_dense_block_count": 1, "expert_gating_func": 2, "shortconv.l_cache": 3, "feed_forward_length": FF}


def test_lfm2_pre_tokenizer_name():
    # llama.cpp's converter names LFM2's tokenizer "lfm2", which llama.cpp splits exactly as "llama-bpe"
    assert pretok.family_name("llama-bpe", "lfm2") == "lfm2" == pretok.family_name("llama-bpe", "lfm2_moe")
    assert pretok.family_name("llama-bpe", "llama") == "llama-bpe" and pretok.family_name("qwen2", "lfm2") == "qwen2"


def test_refusals_and_missing_layer_tensors():
    with pytest.raises(SlimedgeError, match="use_expert_bias"):
        get_arch(config(use_expert_bias=False))
    with pytest.raises(SlimedgeError, match="num_dense_layers 9"):
        get_arch(config(num_dense_layers=9))
    w = random_weights(shapes())
    del w["model.layers.0.feed_forward.w3.weight"]
    with pytest.raises(SlimedgeError,
                       match=r"missing tensor model\.layers\.0\.feed_forward\.w3\.weight.*a dense layer"):
        get_arch(config()).tensors(FakeSource(w))
    w = random_weights(shapes())
    del w["model.layers.2.feed_forward.experts.3.w2.weight"]
    with pytest.raises(SlimedgeError, match=r"experts\.3\.w2\.weight"):
        get_arch(config()).tensors(FakeSource(w))
