"""slimedge.arch.lfm2: conv/attention layers from layer_types, conv weight squeezed, per-layer kv heads,
feed-forward size as HF computes it, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from tests.arch.arch_kit import HEAD_DIM, N_EMBD, N_HEAD, N_HEAD_KV, N_VOCAB, FakeSource, kv_dict, random_weights
from gguf import GGUFValueType

from slimedge.arch import get_arch
from slimedge.arch.lfm2 import lfm2_ff
from slimedge.errors import SlimedgeError

TYPES = ["conv", "full_attention", "conv"]
FF = 256  # lfm2_ff of intermediate_size 128 with the auto-adjust below


def config(**over) -> dict:
    cfg = dict(architectures=["Lfm2ForCausalLM"], vocab_size=N_VOCAB, hidden_size=N_EMBD, intermediate_size=128,
               num_hidden_layers=3, num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV,
               max_position_embeddings=128, norm_eps=1e-5, conv_L_cache=3, layer_types=TYPES,
               block_auto_adjust_ff_dim=True, block_ffn_dim_multiplier=1.0, block_multiple_of=256)
    cfg.update(over)
    return cfg


def shapes(types=TYPES) -> dict:
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    s = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.embedding_norm.weight": (N_EMBD,)}
    for i, t in enumerate(types):
        p = f"model.layers.{i}."
        s.update({p + "operator_norm.weight": (N_EMBD,), p + "ffn_norm.weight": (N_EMBD,),
                  p + "feed_forward.w1.weight": (FF, N_EMBD), p + "feed_forward.w3.weight": (FF, N_EMBD),
                  p + "feed_forward.w2.weight": (N_EMBD, FF)})
        if t == "conv":
            s.update({p + "conv.conv.weight": (N_EMBD, 1, 3), p + "conv.in_proj.weight": (3 * N_EMBD, N_EMBD),
                      p + "conv.out_proj.weight": (N_EMBD, N_EMBD)})
        else:
            s.update({p + "self_attn.q_proj.weight": (q, N_EMBD), p + "self_attn.k_proj.weight": (kv, N_EMBD),
                      p + "self_attn.v_proj.weight": (kv, N_EMBD), p + "self_attn.out_proj.weight": (N_EMBD, q),
                      p + "self_attn.q_layernorm.weight": (HEAD_DIM,), p + "self_attn.k_layernorm.weight": (HEAD_DIM,)})
    return s


def test_names_per_layer_kind_and_conv_squeeze():
    w = random_weights(shapes())
    out = {t.name: t for t in get_arch(config()).tensors(FakeSource(w))}
    assert out["blk.0.shortconv.conv.weight"].shape == (N_EMBD, 3)
    np.testing.assert_array_equal(out["blk.2.shortconv.conv.weight"].load(), w["model.layers.2.conv.conv.weight"][:, 0])
    np.testing.assert_array_equal(out["blk.0.shortconv.conv.weight"].load_rows(3, 7),
                                  w["model.layers.0.conv.conv.weight"][3:7, 0])
    np.testing.assert_array_equal(out["blk.1.attn_q.weight"].load(), w["model.layers.1.self_attn.q_proj.weight"])
    assert {n for n in out if n.startswith("blk.1.")} == {f"blk.1.{x}.weight" for x in (
        "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm",
        "ffn_gate", "ffn_up", "ffn_down")}
    assert {n for n in out if n.startswith("blk.0.")} == {f"blk.0.{x}.weight" for x in (
        "attn_norm", "shortconv.conv", "shortconv.in_proj", "shortconv.out_proj", "ffn_norm", "ffn_gate", "ffn_up",
        "ffn_down")}
    np.testing.assert_array_equal(out["blk.0.ffn_gate.weight"].load(), w["model.layers.0.feed_forward.w1.weight"])
    np.testing.assert_array_equal(out["blk.0.ffn_up.weight"].load(), w["model.layers.0.feed_forward.w3.weight"])
    assert "token_embd_norm.weight" in out and "output.weight" not in out  # tied by default


def test_metadata_per_layer_kv_heads_and_ff():
    arch = get_arch(config())
    kv = kv_dict(arch)
    assert kv["lfm2.attention.head_count_kv"] == ([0, N_HEAD_KV, 0], GGUFValueType.ARRAY)
    assert kv["lfm2.shortconv.l_cache"][0] == 3 and kv["lfm2.feed_forward_length"][0] == FF
    assert kv["lfm2.attention.layer_norm_rms_epsilon"][0] == pytest.approx(1e-5)
    info = arch.model_info()
    assert info.n_head_kv == 0 and info.n_head_kv_layers == (0, N_HEAD_KV, 0) and info.n_ff == FF


def test_ff_size_as_hf_computes_it():
    assert lfm2_ff(dict(intermediate_size=12288, block_auto_adjust_ff_dim=True, block_ffn_dim_multiplier=1.0,
                        block_multiple_of=256)) == 8192  # LFM2-1.2B
    assert lfm2_ff(dict(intermediate_size=100, block_auto_adjust_ff_dim=False)) == 100
    assert lfm2_ff(dict(intermediate_size=1, block_ff_dim=6656, block_auto_adjust_ff_dim=True,
                        block_ffn_dim_multiplier=1.0, block_multiple_of=256)) == 4608  # LFM2-350M


def test_old_full_attn_idxs_and_missing_layer_tensor():
    arch = get_arch(config(layer_types=None, full_attn_idxs=[1]))
    assert arch.head_count_kv == [0, N_HEAD_KV, 0]
    w = random_weights(shapes())
    del w["model.layers.2.conv.in_proj.weight"]
    with pytest.raises(SlimedgeError, match=r"missing tensor model\.layers\.2\.conv\.in_proj\.weight.*a convolution "
                                            r"layer"):
        arch.tensors(FakeSource(w))


def test_refusals():
    with pytest.raises(SlimedgeError, match="conv_bias"):
        get_arch(config(conv_bias=True))
    with pytest.raises(SlimedgeError, match="layer_types"):
        get_arch(config(layer_types=["conv", "mamba", "conv"]))
    with pytest.raises(SlimedgeError, match="layer_types"):
        get_arch(config(layer_types=None))
