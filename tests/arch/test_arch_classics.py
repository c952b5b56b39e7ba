"""slimedge.arch: the LayerNorm classics — StableLM, StarCoder 2, Phi-2, GPT-NeoX, GPT-2 — tables, LayerNorm
and rope keys, GPT-NeoX's per-head qkv regrouping, GPT-2's Conv1D transposition, refusals (no llama.cpp)."""

from __future__ import annotations

import numpy as np
import pytest

from slimedge.arch import get_arch
from slimedge.errors import SlimedgeError
from tests.arch.arch_kit import N_EMBD, N_FF, N_HEAD, N_LAYER, N_VOCAB, FakeSource, kv_dict, out_by_name, random_weights

D = N_EMBD // N_HEAD


def base_cfg(name: str, **kw) -> dict:
    cfg = dict(architectures=[name], vocab_size=N_VOCAB, hidden_size=N_EMBD, intermediate_size=N_FF,
               num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD, max_position_embeddings=128, layer_norm_eps=1e-5)
    cfg.update(kw)
    return cfg


def neox_shapes() -> dict[str, tuple]:
    shapes = {"gpt_neox.embed_in.weight": (N_VOCAB, N_EMBD), "embed_out.weight": (N_VOCAB, N_EMBD),
              "gpt_neox.final_layer_norm.weight": (N_EMBD,), "gpt_neox.final_layer_norm.bias": (N_EMBD,)}
    for i in range(N_LAYER):
        p = f"gpt_neox.layers.{i}."
        for name, shape in (("input_layernorm", (N_EMBD,)), ("post_attention_layernorm", (N_EMBD,)),
                            ("attention.query_key_value", (3 * N_EMBD, N_EMBD)), ("attention.dense", (N_EMBD, N_EMBD)),
                            ("mlp.dense_h_to_4h", (N_FF, N_EMBD)), ("mlp.dense_4h_to_h", (N_EMBD, N_FF))):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = shape, shape[:1]
        shapes[p + "attention.bias"] = (1, 1, 8, 8)  # an old checkpoint's causal-mask buffer
    return shapes


def test_gptneox_reads_rotary_pct_as_shipped_and_writes_layernorm_keys():
    shipped = get_arch(base_cfg("GPTNeoXForCausalLM", rotary_pct=0.25, rotary_emb_base=10000,
                                use_parallel_residual=False))
    kv = kv_dict(shipped)
    assert kv["gptneox.rope.dimension_count"][0] == D // 4 and kv["gptneox.use_parallel_residual"][0] is False
    assert kv["gptneox.attention.layer_norm_epsilon"][0] == 1e-5
    assert "gptneox.attention.layer_norm_rms_epsilon" not in kv
    saved = get_arch(base_cfg("GPTNeoXForCausalLM", rope_parameters={"partial_rotary_factor": 0.5, "rope_theta": 1e4}))
    assert kv_dict(saved)["gptneox.rope.dimension_count"][0] == D // 2  # transformers 5's spelling
    assert kv_dict(get_arch(base_cfg("GPTNeoXForCausalLM")))["gptneox.rope.dimension_count"][0] == D // 4


def test_gptneox_qkv_regrouped_from_per_head_to_q_k_v():
    weights = random_weights(neox_shapes())
    out = out_by_name(get_arch(base_cfg("GPTNeoXForCausalLM")), FakeSource(weights))
    w = weights["gpt_neox.layers.0.attention.query_key_value.weight"]
    got = out["blk.0.attn_qkv.weight"].load()
    for h in range(N_HEAD):
        for part in range(3):  # q, k, v of head h: rows [h, part] in HF, [part, h] in llama.cpp
            np.testing.assert_array_equal(got[(part * N_HEAD + h) * D:(part * N_HEAD + h + 1) * D],
                                          w[(h * 3 + part) * D:(h * 3 + part + 1) * D])
    b = weights["gpt_neox.layers.1.attention.query_key_value.bias"]
    np.testing.assert_array_equal(out["blk.1.attn_qkv.bias"].load()[N_HEAD * D:N_HEAD * D + D], b[D:2 * D])
    assert out["blk.0.attn_qkv.weight"].load_rows is None  # regrouping needs the whole tensor
    assert "output.weight" in out and not any("attention.bias" in t.origin for t in out.values())


def test_gptneox_reads_transformers_5_lm_head_as_embed_out():
    weights = random_weights(neox_shapes())
    weights["lm_head.weight"] = weights.pop("embed_out.weight")  # a state dict of transformers 5's loaded model
    out = out_by_name(get_arch(base_cfg("GPTNeoXForCausalLM")), FakeSource(weights))
    np.testing.assert_array_equal(out["output.weight"].load(), weights["lm_head.weight"])


def gpt2_shapes(prefix: str = "transformer.") -> dict[str, tuple]:
    shapes = {prefix + "wte.weight": (N_VOCAB, N_EMBD), prefix + "wpe.weight": (128, N_EMBD),
              prefix + "ln_f.weight": (N_EMBD,), prefix + "ln_f.bias": (N_EMBD,)}
    for i in range(N_LAYER):
        p = f"{prefix}h.{i}."
        for name, shape in (("ln_1", (N_EMBD,)), ("ln_2", (N_EMBD,)), ("attn.c_attn", (N_EMBD, 3 * N_EMBD)),
                            ("attn.c_proj", (N_EMBD, N_EMBD)), ("mlp.c_fc", (N_EMBD, N_FF)), ("mlp.c_proj", (N_FF, N_EMBD))):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = shape, shape[-1:]
        shapes[p + "attn.bias"] = (1, 1, 128, 128)
    return shapes


@pytest.mark.parametrize("prefix", ["transformer.", ""])  # saved by transformers / as the Hub's gpt2 stores it
def test_gpt2_conv1d_weights_transposed_positions_kept(prefix):
    weights = random_weights(gpt2_shapes(prefix))
    arch = get_arch(dict(architectures=["GPT2LMHeadModel"], vocab_size=N_VOCAB, n_embd=N_EMBD, n_layer=N_LAYER,
                         n_head=N_HEAD, n_positions=128, n_inner=N_FF, layer_norm_epsilon=1e-5))
    out = out_by_name(arch, FakeSource(weights))
    assert out["blk.0.ffn_up.weight"].shape == (N_FF, N_EMBD)
    np.testing.assert_array_equal(out["blk.0.ffn_up.weight"].load(), weights[prefix + "h.0.mlp.c_fc.weight"].T)
    np.testing.assert_array_equal(out["blk.1.attn_qkv.weight"].load(), weights[prefix + "h.1.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(out["position_embd.weight"].load(), weights[prefix + "wpe.weight"])
    assert "output.weight" not in out and len(out) == 4 + 12 * N_LAYER  # tied; mask buffers dropped
    kv = kv_dict(arch)
    assert kv["gpt2.context_length"][0] == 128 and kv["gpt2.feed_forward_length"][0] == N_FF
    assert not any(".rope." in key for key in kv)


def test_gpt2_n_inner_defaults_to_four_times_width_and_refusals():
    arch = get_arch(dict(architectures=["GPT2LMHeadModel"], vocab_size=N_VOCAB, n_embd=N_EMBD, n_layer=N_LAYER,
                         n_head=N_HEAD, n_positions=128, n_inner=None, layer_norm_epsilon=1e-5))
    assert arch.hp.n_ff == 4 * N_EMBD
    with pytest.raises(SlimedgeError, match="scale_attn_by_inverse_layer_idx"):
        get_arch(dict(architectures=["GPT2LMHeadModel"], vocab_size=N_VOCAB, n_embd=N_EMBD, n_layer=N_LAYER,
                      n_head=N_HEAD, n_positions=128, layer_norm_epsilon=1e-5, scale_attn_by_inverse_layer_idx=True))


def test_stablelm_starcoder2_phi_keys_and_refusals():
    kv = kv_dict(get_arch(base_cfg("StableLmForCausalLM", partial_rotary_factor=0.25, num_key_value_heads=2)))
    assert kv["stablelm.rope.dimension_count"][0] == D // 4 and kv["stablelm.attention.head_count_kv"][0] == 2
    kv = kv_dict(get_arch(base_cfg("Starcoder2ForCausalLM", norm_epsilon=1e-5, layer_norm_eps=None)))
    assert kv["starcoder2.rope.dimension_count"][0] == D and kv["starcoder2.attention.layer_norm_epsilon"][0] == 1e-5
    kv = kv_dict(get_arch(base_cfg("PhiForCausalLM", partial_rotary_factor=0.4)))
    assert kv["phi2.rope.dimension_count"][0] == int(0.4 * D)
    for name, key, msg in (("StableLmForCausalLM", "qk_layernorm", "qk_layernorm=true"),
                           ("PhiForCausalLM", "qk_layernorm", "qk_layernorm=true"),
                           ("StableLmForCausalLM", "tie_word_embeddings", "needs its own output.weight")):
        with pytest.raises(SlimedgeError, match=msg):
            get_arch(base_cfg(name, **{key: True}))
    with pytest.raises(SlimedgeError, match="missing 'layer_norm_eps'"):
        get_arch(base_cfg("PhiForCausalLM", layer_norm_eps=None))
    with pytest.raises(SlimedgeError, match="takes hidden / heads"):
        get_arch(base_cfg("StableLmForCausalLM", head_dim=2 * D))


def test_phi_output_bias_and_starcoder2_required_biases():
    shapes = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "lm_head.weight": (N_VOCAB, N_EMBD),
              "lm_head.bias": (N_VOCAB,), "model.final_layernorm.weight": (N_EMBD,), "model.final_layernorm.bias": (N_EMBD,)}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        for name, shape in (("input_layernorm", (N_EMBD,)), ("self_attn.q_proj", (N_EMBD, N_EMBD)),
                            ("self_attn.k_proj", (N_EMBD, N_EMBD)), ("self_attn.v_proj", (N_EMBD, N_EMBD)),
                            ("self_attn.dense", (N_EMBD, N_EMBD)), ("mlp.fc1", (N_FF, N_EMBD)), ("mlp.fc2", (N_EMBD, N_FF))):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = shape, shape[:1]
    out = out_by_name(get_arch(base_cfg("PhiForCausalLM")), FakeSource(random_weights(shapes)))
    assert list(out)[-2:] == ["output.weight", "output.bias"] and out["output.bias"].shape == (N_VOCAB,)
    del shapes["model.layers.1.mlp.fc2.bias"]
    with pytest.raises(SlimedgeError, match="missing tensor model.layers.1.mlp.fc2.bias"):
        get_arch(base_cfg("PhiForCausalLM")).tensors(FakeSource(random_weights(shapes)))
