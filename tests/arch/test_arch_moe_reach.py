"""The MoE families of issue 18 (Qwen2-MoE, OLMoE, Granite MoE, ERNIE 4.5 MoE, PhiMoE, gpt-oss) at table
level: names, stacked/split expert values, metadata keys, refusals. No files, no llama.cpp (seconds)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from slimedge.arch import get_arch
from slimedge.errors import SlimedgeError
from tests.arch.arch_kit import (HEAD_DIM, N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB, FakeRef, FakeSource, kv_dict,
                                 random_weights)

E, FF, SH = 4, 48, 64  # experts, expert rows, shared-expert rows
Q, KV = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM


def cfg(hf: str, **over) -> dict:
    c = dict(architectures=[hf], vocab_size=N_VOCAB, hidden_size=N_EMBD, intermediate_size=FF,
             num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV,
             max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
             num_experts_per_tok=2)
    c.update(over)
    return c


def attn(i: int, kv: int = KV, bias: bool = False) -> dict:
    p = f"model.layers.{i}."
    s = {p + "input_layernorm.weight": (N_EMBD,), p + "post_attention_layernorm.weight": (N_EMBD,),
         p + "self_attn.q_proj.weight": (Q, N_EMBD), p + "self_attn.k_proj.weight": (kv, N_EMBD),
         p + "self_attn.v_proj.weight": (kv, N_EMBD), p + "self_attn.o_proj.weight": (N_EMBD, Q)}
    if bias:
        s.update({p + "self_attn.q_proj.bias": (Q,), p + "self_attn.k_proj.bias": (kv,),
                  p + "self_attn.v_proj.bias": (kv,), p + "self_attn.o_proj.bias": (N_EMBD,)})
    return s


def experts(prefix: str, names=("gate_proj", "up_proj", "down_proj")) -> dict:
    g, u, d = names
    s = {}
    for e in range(E):
        s.update({f"{prefix}{e}.{g}.weight": (FF, N_EMBD), f"{prefix}{e}.{u}.weight": (FF, N_EMBD),
                  f"{prefix}{e}.{d}.weight": (N_EMBD, FF)})
    return s


def base(lm_head: bool = True) -> dict:
    s = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.norm.weight": (N_EMBD,)}
    return {**s, "lm_head.weight": (N_VOCAB, N_EMBD)} if lm_head else s


def convert(config: dict, shapes: dict):
    w = random_weights(shapes)
    arch = get_arch(config)
    return arch, w, {t.name: t for t in arch.tensors(FakeSource(w))}


# ---- Qwen2-MoE ------------------------------------------------------------------------------------------

def qwen2moe_shapes(lm_head: bool = True) -> dict:
    s = base(lm_head)
    for i in range(N_LAYER):
        p = f"model.layers.{i}.mlp."
        s.update({**attn(i, bias=False), f"model.layers.{i}.self_attn.q_proj.bias": (Q,),
                  p + "gate.weight": (E, N_EMBD), p + "shared_expert_gate.weight": (1, N_EMBD),
                  p + "shared_expert.gate_proj.weight": (SH, N_EMBD), p + "shared_expert.up_proj.weight": (SH, N_EMBD),
                  p + "shared_expert.down_proj.weight": (N_EMBD, SH), **experts(p + "experts.")})
    return s


QWEN2MOE = dict(num_experts=E, moe_intermediate_size=FF, shared_expert_intermediate_size=SH)


def test_qwen2moe_shared_expert_names_and_metadata():
    arch, w, out = convert(cfg("Qwen2MoeForCausalLM", **QWEN2MOE), qwen2moe_shapes())
    p = "model.layers.1.mlp."
    np.testing.assert_array_equal(out["blk.1.ffn_gate_inp_shexp.weight"].load(), w[p + "shared_expert_gate.weight"])
    np.testing.assert_array_equal(out["blk.1.ffn_down_shexp.weight"].load(), w[p + "shared_expert.down_proj.weight"])
    np.testing.assert_array_equal(out["blk.1.ffn_up_exps.weight"].load()[2], w[p + "experts.2.up_proj.weight"])
    np.testing.assert_array_equal(out["blk.0.attn_q.weight"].load(), w["model.layers.0.self_attn.q_proj.weight"])
    assert "blk.0.attn_q.bias" in out and arch.arch == "qwen2moe"
    kv = kv_dict(arch)
    assert kv["qwen2moe.expert_feed_forward_length"][0] == FF
    assert kv["qwen2moe.expert_shared_feed_forward_length"][0] == SH
    assert (kv["qwen2moe.expert_count"][0], kv["qwen2moe.expert_used_count"][0]) == (E, 2)


def test_tied_qwen2moe_and_olmoe_store_the_embedding_as_output():
    for hf, over, shapes in (("Qwen2MoeForCausalLM", QWEN2MOE, qwen2moe_shapes(lm_head=False)),
                             ("OlmoeForCausalLM", OLMOE, olmoe_shapes(lm_head=False))):
        _, w, out = convert(cfg(hf, tie_word_embeddings=True, **over), shapes)
        np.testing.assert_array_equal(out["output.weight"].load(), w["model.embed_tokens.weight"])
        assert "(tied)" in out["output.weight"].origin


def test_qwen2moe_refusals_and_warning(caplog):
    with pytest.raises(SlimedgeError, match="shared_expert_intermediate_size"):
        get_arch(cfg("Qwen2MoeForCausalLM", **{**QWEN2MOE, "shared_expert_intermediate_size": 0}))
    with pytest.raises(SlimedgeError, match="mlp_only_layers"):
        get_arch(cfg("Qwen2MoeForCausalLM", mlp_only_layers=[1], **QWEN2MOE))
    with pytest.raises(SlimedgeError, match="use_sliding_window"):
        get_arch(cfg("Qwen2MoeForCausalLM", use_sliding_window=True, sliding_window=64, **QWEN2MOE))
    with caplog.at_level(logging.WARNING):
        get_arch(cfg("Qwen2MoeForCausalLM", norm_topk_prob=True, **QWEN2MOE))
    assert "never renormalizes" in caplog.text


# ---- OLMoE ----------------------------------------------------------------------------------------------

OLMOE = dict(num_experts=E, num_key_value_heads=N_HEAD)


def olmoe_shapes(lm_head: bool = True) -> dict:
    s = base(lm_head)
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        s.update({**attn(i, kv=Q), p + "self_attn.q_norm.weight": (Q,), p + "self_attn.k_norm.weight": (Q,),
                  p + "mlp.gate.weight": (E, N_EMBD), **experts(p + "mlp.experts.")})
    return s


def test_olmoe_whole_projection_norms_and_refusals():
    arch, w, out = convert(cfg("OlmoeForCausalLM", **OLMOE), olmoe_shapes())
    np.testing.assert_array_equal(out["blk.1.attn_k_norm.weight"].load(), w["model.layers.1.self_attn.k_norm.weight"])
    assert out["blk.0.ffn_gate_exps.weight"].shape == (E, FF, N_EMBD) and arch.arch == "olmoe"
    with pytest.raises(SlimedgeError, match="no grouped-query attention"):
        get_arch(cfg("OlmoeForCausalLM", num_experts=E))
    with pytest.raises(SlimedgeError, match="clip_qkv"):
        get_arch(cfg("OlmoeForCausalLM", clip_qkv=8.0, **OLMOE))


# ---- Granite MoE ----------------------------------------------------------------------------------------

def test_granitemoe_splits_the_fused_input_linear_and_keeps_granites_keys():
    s = base()
    for i in range(N_LAYER):
        m = f"model.layers.{i}.block_sparse_moe."
        s.update({**attn(i), m + "router.layer.weight": (E, N_EMBD), m + "input_linear.weight": (E, 2 * FF, N_EMBD),
                  m + "output_linear.weight": (E, N_EMBD, FF)})
    arch, w, out = convert(cfg("GraniteMoeForCausalLM", num_local_experts=E, embedding_multiplier=12.0,
                               logits_scaling=6.0), s)
    fused = w["model.layers.1.block_sparse_moe.input_linear.weight"]
    np.testing.assert_array_equal(out["blk.1.ffn_gate_exps.weight"].load(), fused[:, :FF])
    np.testing.assert_array_equal(out["blk.1.ffn_up_exps.weight"].load(), fused[:, FF:])
    np.testing.assert_array_equal(out["blk.1.ffn_up_exps.weight"].load_rows(FF - 2, FF + 3),
                                  fused[:, FF:].reshape(-1, N_EMBD)[FF - 2:FF + 3])  # across experts
    np.testing.assert_array_equal(out["blk.0.ffn_down_exps.weight"].load(),
                                  w["model.layers.0.block_sparse_moe.output_linear.weight"])
    assert not np.array_equal(out["blk.0.attn_q.weight"].load(), w["model.layers.0.self_attn.q_proj.weight"])
    kv = kv_dict(arch)
    assert arch.arch == "granitemoe" and kv["granitemoe.embedding_scale"][0] == 12.0
    assert kv["granitemoe.logit_scale"][0] == 6.0 and kv["granitemoe.expert_count"][0] == E


def test_granitemoe_shared_expert_rows_and_key():
    s = base()
    for i in range(N_LAYER):
        m = f"model.layers.{i}.block_sparse_moe."
        s.update({**attn(i), m + "router.layer.weight": (E, N_EMBD), m + "input_linear.weight": (E, 2 * FF, N_EMBD),
                  m + "output_linear.weight": (E, N_EMBD, FF), f"model.layers.{i}.shared_mlp.input_linear.weight":
                  (2 * SH, N_EMBD), f"model.layers.{i}.shared_mlp.output_linear.weight": (N_EMBD, SH)})
    c = cfg("GraniteMoeSharedForCausalLM", num_local_experts=E, shared_intermediate_size=SH)
    arch, w, out = convert(c, s)
    fused = w["model.layers.1.shared_mlp.input_linear.weight"]
    np.testing.assert_array_equal(out["blk.1.ffn_gate_shexp.weight"].load(), fused[:SH])
    np.testing.assert_array_equal(out["blk.1.ffn_up_shexp.weight"].load_rows(2, 5), fused[SH + 2:SH + 5])
    np.testing.assert_array_equal(out["blk.0.ffn_down_shexp.weight"].load(),
                                  w["model.layers.0.shared_mlp.output_linear.weight"])
    assert arch.arch == "granitemoe" and kv_dict(arch)["granitemoe.expert_shared_feed_forward_length"][0] == SH
    with pytest.raises(SlimedgeError, match="implies"):
        convert(cfg("GraniteMoeSharedForCausalLM", num_local_experts=E, shared_intermediate_size=SH // 2), s)


# ---- ERNIE 4.5 MoE --------------------------------------------------------------------------------------

ERNIE = dict(moe_num_experts=E, moe_k=2, moe_intermediate_size=FF, moe_num_shared_experts=2, moe_layer_start_index=1,
             num_hidden_layers=3, tie_word_embeddings=True)


def ernie_shapes() -> dict:
    s = base(lm_head=False)
    for i in range(3):
        p = f"model.layers.{i}.mlp."
        s.update(attn(i))
        if i == 0:
            s.update({p + "gate_proj.weight": (FF, N_EMBD), p + "up_proj.weight": (FF, N_EMBD),
                      p + "down_proj.weight": (N_EMBD, FF)})
            continue
        s.update({p + "gate.weight": (E, N_EMBD), p + "moe_statics.e_score_correction_bias": (1, E),
                  p + "shared_experts.gate_proj.weight": (2 * FF, N_EMBD),
                  p + "shared_experts.up_proj.weight": (2 * FF, N_EMBD),
                  p + "shared_experts.down_proj.weight": (N_EMBD, 2 * FF), **experts(p + "experts.")})
    return s


def test_ernie45moe_dense_lead_layer_shared_experts_and_correction_bias():
    arch, w, out = convert(cfg("Ernie4_5_MoeForCausalLM", **ERNIE), ernie_shapes())
    assert "blk.0.ffn_gate.weight" in out and "blk.0.ffn_gate_exps.weight" not in out
    assert "blk.2.ffn_gate_exps.weight" in out and "blk.2.ffn_gate.weight" not in out
    np.testing.assert_array_equal(out["blk.1.exp_probs_b.bias"].load(),
                                  w["model.layers.1.mlp.moe_statics.e_score_correction_bias"])
    np.testing.assert_array_equal(out["blk.0.attn_q.weight"].load(), w["model.layers.0.self_attn.q_proj.weight"])
    assert out["blk.2.ffn_up_shexp.weight"].shape == (2 * FF, N_EMBD) and "output.weight" not in out
    kv = kv_dict(arch)
    assert arch.arch == "ernie4_5-moe" and kv["ernie4_5-moe.leading_dense_block_count"][0] == 1
    assert kv["ernie4_5-moe.expert_shared_count"][0] == 2
    assert kv["ernie4_5-moe.expert_shared_feed_forward_length"][0] == 2 * FF
    assert (kv["ernie4_5-moe.expert_used_count"][0], kv["ernie4_5-moe.interleave_moe_layer_step"][0]) == (2, 1)


def test_ernie45moe_refusals():
    for over, msg in (({"moe_layer_interval": 2}, "every 2"), ({"moe_layer_end_index": 1}, "1..1"),
                      ({"use_bias": True}, "use_bias")):
        with pytest.raises(SlimedgeError, match=msg):
            get_arch(cfg("Ernie4_5_MoeForCausalLM", **{**ERNIE, **over}))
    s = ernie_shapes()
    del s["model.layers.0.mlp.up_proj.weight"]
    with pytest.raises(SlimedgeError, match=r"missing tensor model\.layers\.0\.mlp\.up_proj\.weight"):
        convert(cfg("Ernie4_5_MoeForCausalLM", **ERNIE), s)
    s = ernie_shapes()
    del s["model.layers.2.mlp.shared_experts.down_proj.weight"]
    with pytest.raises(SlimedgeError, match=r"missing tensor model\.layers\.2\.mlp\.shared_experts\.down_proj"):
        convert(cfg("Ernie4_5_MoeForCausalLM", **ERNIE), s)


# ---- PhiMoE ---------------------------------------------------------------------------------------------

PHIMOE = dict(num_local_experts=E, attention_bias=True, lm_head_bias=True)


def test_phimoe_norm_and_head_biases_under_both_names():
    s = {**base(), "model.norm.bias": (N_EMBD,), "lm_head.bias": (N_VOCAB,)}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        s.update({**attn(i, bias=True), p + "input_layernorm.bias": (N_EMBD,),
                  p + "post_attention_layernorm.bias": (N_EMBD,), p + "block_sparse_moe.gate.weight": (E, N_EMBD),
                  **experts(p + "block_sparse_moe.experts.", ("w1", "w3", "w2"))})
    for hf in ("PhiMoEForCausalLM", "PhimoeForCausalLM"):  # the Hub's name and transformers 5's
        arch, w, out = convert(cfg(hf, **PHIMOE), s)
        np.testing.assert_array_equal(out["output.bias"].load(), w["lm_head.bias"])
        np.testing.assert_array_equal(out["blk.1.ffn_up_exps.weight"].load()[3],
                                      w["model.layers.1.block_sparse_moe.experts.3.w3.weight"])
        assert {"output_norm.bias", "blk.0.attn_norm.bias", "blk.1.attn_output.bias"} <= set(out)
        assert arch.arch == "phimoe" and "phimoe.expert_feed_forward_length" not in kv_dict(arch)
    with pytest.raises(SlimedgeError, match="lm_head_bias"):
        get_arch(cfg("PhimoeForCausalLM", num_local_experts=E, attention_bias=True))
    with pytest.raises(SlimedgeError, match="tie_word_embeddings"):
        get_arch(cfg("PhimoeForCausalLM", tie_word_embeddings=True, **PHIMOE))


# ---- gpt-oss --------------------------------------------------------------------------------------------

GPTOSS = dict(num_local_experts=E, head_dim=HEAD_DIM, sliding_window=16,
              layer_types=["sliding_attention", "full_attention"])


def gptoss_shapes() -> dict:
    s = base()
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        s.update({**attn(i, bias=True), p + "self_attn.sinks": (N_HEAD,), p + "mlp.router.weight": (E, N_EMBD),
                  p + "mlp.router.bias": (E,), p + "mlp.experts.gate_up_proj": (E, N_EMBD, 2 * FF),
                  p + "mlp.experts.gate_up_proj_bias": (E, 2 * FF), p + "mlp.experts.down_proj": (E, FF, N_EMBD),
                  p + "mlp.experts.down_proj_bias": (E, N_EMBD)})
    return s


def test_gptoss_float_experts_transposed_and_deinterleaved():
    arch, w, out = convert(cfg("GptOssForCausalLM", **GPTOSS), gptoss_shapes())
    x = "model.layers.1.mlp.experts."
    gu, down = w[x + "gate_up_proj"], w[x + "down_proj"]
    gate, up = gu[..., ::2].transpose(0, 2, 1), gu[..., 1::2].transpose(0, 2, 1)
    for name, want in (("ffn_gate_exps", gate), ("ffn_up_exps", up), ("ffn_down_exps", down.transpose(0, 2, 1))):
        t = out[f"blk.1.{name}.weight"]
        assert t.shape == want.shape and t.row_group == 1
        np.testing.assert_array_equal(t.load(), want)
        flat = want.reshape(-1, want.shape[-1])
        for a, b in ((0, 3), (FF - 2, FF + 5), (5, len(flat))):  # slices across experts
            np.testing.assert_array_equal(t.load_rows(a, b), flat[a:b])
    np.testing.assert_array_equal(out["blk.1.ffn_gate_exps.bias"].load(), w[x + "gate_up_proj_bias"][:, ::2])
    np.testing.assert_array_equal(out["blk.1.ffn_up_exps.bias"].load(), w[x + "gate_up_proj_bias"][:, 1::2])
    np.testing.assert_array_equal(out["blk.1.ffn_down_exps.bias"].load(), w[x + "down_proj_bias"])
    np.testing.assert_array_equal(out["blk.0.attn_sinks.weight"].load(), w["model.layers.0.self_attn.sinks"])
    assert "blk.0.post_attention_norm.weight" in out and "blk.0.ffn_gate_inp.bias" in out
    kv = kv_dict(arch)
    assert arch.arch == "gpt-oss" and kv["gpt-oss.attention.sliding_window"][0] == 16
    assert kv["gpt-oss.expert_feed_forward_length"][0] == FF and kv["gpt-oss.attention.key_length"][0] == HEAD_DIM


class _Stored(FakeRef):
    """A quantized source's reference as slimedge.source.fp4src presents it: [n_expert, rows, cols] (output
    features as rows), ``stored_type`` and ``rows(offset, step)``."""

    stored_type = GGMLQuantizationType.MXFP4

    def rows(self, offset: int, step: int) -> FakeRef:
        return FakeRef(f"{self.name}[rows {offset}::{step}]", self.data[:, offset::step])


def test_gptoss_quantized_experts_are_taken_as_rows_of_the_stored_tensor():
    w = random_weights(gptoss_shapes())
    src = FakeSource(w)
    x = "model.layers.0.mlp.experts."
    stored = {n: np.ascontiguousarray(w[x + n].transpose(0, 2, 1)) for n in ("gate_up_proj", "down_proj")}
    for n, a in stored.items():
        src.tensors[x + n] = _Stored(x + n, a)
    out = {t.name: t for t in get_arch(cfg("GptOssForCausalLM", **GPTOSS)).tensors(src)}
    np.testing.assert_array_equal(out["blk.0.ffn_gate_exps.weight"].load(), stored["gate_up_proj"][:, ::2])
    np.testing.assert_array_equal(out["blk.0.ffn_up_exps.weight"].load(), stored["gate_up_proj"][:, 1::2])
    np.testing.assert_array_equal(out["blk.0.ffn_down_exps.weight"].load(), stored["down_proj"])
    assert "rows 1::2" in out["blk.0.ffn_up_exps.weight"].origin
    # the float layer 1 reads the same values from the transposed layout
    np.testing.assert_array_equal(out["blk.1.ffn_up_exps.weight"].load(),
                                  w["model.layers.1.mlp.experts.gate_up_proj"][..., 1::2].transpose(0, 2, 1))


def test_gptoss_refusals():
    with pytest.raises(SlimedgeError, match="alternates sliding and full"):
        get_arch(cfg("GptOssForCausalLM", **{**GPTOSS, "layer_types": ["full_attention", "sliding_attention"]}))
    with pytest.raises(SlimedgeError, match="sliding_window"):
        get_arch(cfg("GptOssForCausalLM", **{**GPTOSS, "sliding_window": None}))
    with pytest.raises(SlimedgeError, match="swiglu_limit 8.0"):
        get_arch(cfg("GptOssForCausalLM", **{**GPTOSS, "swiglu_limit": 8.0}))
    c = cfg("GptOssForCausalLM", **GPTOSS, experts_per_token=4)  # the release's second spelling
    del c["num_experts_per_tok"]
    assert get_arch(c).n_expert_used == 4
    s = gptoss_shapes()
    del s["model.layers.1.mlp.experts.down_proj_bias"]
    with pytest.raises(SlimedgeError, match=r"missing tensor model\.layers\.1\.mlp\.experts\.down_proj_bias"):
        convert(cfg("GptOssForCausalLM", **GPTOSS), s)
