"""slimedge.arch.moe / mixtral / qwen3moe: expert stacking (order, row ranges, fused layout), names,
metadata, refusals; and --dry-run's listing of expert tensors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from tests.arch.arch_kit import HEAD_DIM, N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB, FakeSource, kv_dict, random_weights

from slimedge.arch import get_arch
from slimedge.arch.moe import Part, StackedRef
from slimedge.errors import SlimedgeError

N_EXP, FF = 4, 48


def moe_config(hf: str, **over) -> dict:
    cfg = dict(architectures=[hf], vocab_size=N_VOCAB, hidden_size=N_EMBD, intermediate_size=FF,
               num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV,
               max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
               num_experts_per_tok=2)
    if hf == "MixtralForCausalLM":
        cfg["num_local_experts"] = N_EXP
    else:
        cfg.update(num_experts=N_EXP, moe_intermediate_size=FF, norm_topk_prob=True, head_dim=HEAD_DIM)
    cfg.update(over)
    return cfg


def attn_shapes(qk_norm: bool = False) -> dict:
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    shapes = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.norm.weight": (N_EMBD,),
              "lm_head.weight": (N_VOCAB, N_EMBD)}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (N_EMBD,), p + "post_attention_layernorm.weight": (N_EMBD,),
                       p + "self_attn.q_proj.weight": (q, N_EMBD), p + "self_attn.k_proj.weight": (kv, N_EMBD),
                       p + "self_attn.v_proj.weight": (kv, N_EMBD), p + "self_attn.o_proj.weight": (N_EMBD, q)})
        if qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (HEAD_DIM,), p + "self_attn.k_norm.weight": (HEAD_DIM,)})
    return shapes


def mixtral_shapes() -> dict:
    shapes = attn_shapes()
    for i in range(N_LAYER):
        p = f"model.layers.{i}.block_sparse_moe."
        shapes[p + "gate.weight"] = (N_EXP, N_EMBD)
        for e in range(N_EXP):
            shapes.update({f"{p}experts.{e}.w1.weight": (FF, N_EMBD), f"{p}experts.{e}.w3.weight": (FF, N_EMBD),
                           f"{p}experts.{e}.w2.weight": (N_EMBD, FF)})
    return shapes


def qwen3moe_shapes() -> dict:
    shapes = attn_shapes(qk_norm=True)
    for i in range(N_LAYER):
        p = f"model.layers.{i}.mlp."
        shapes[p + "gate.weight"] = (N_EXP, N_EMBD)
        for e in range(N_EXP):
            shapes.update({f"{p}experts.{e}.gate_proj.weight": (FF, N_EMBD),
                           f"{p}experts.{e}.up_proj.weight": (FF, N_EMBD),
                           f"{p}experts.{e}.down_proj.weight": (N_EMBD, FF)})
    return shapes


def by_name(arch, weights):
    return {t.name: t for t in arch.tensors(FakeSource(weights))}


def test_mixtral_experts_stack_in_expert_order_and_rows_stream_across_experts():
    w = random_weights(mixtral_shapes())
    out = by_name(get_arch(moe_config("MixtralForCausalLM")), w)
    p = "model.layers.1.block_sparse_moe."
    for gguf, hf in (("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3"), ("ffn_down_exps", "w2")):
        t = out[f"blk.1.{gguf}.weight"]
        want = np.stack([w[f"{p}experts.{e}.{hf}.weight"] for e in range(N_EXP)])
        assert t.shape == want.shape and t.row_group == 1
        np.testing.assert_array_equal(t.load(), want)
        flat = want.reshape(-1, want.shape[-1])
        rows = flat.shape[0]
        for a, b in ((0, 5), (FF - 3, FF + 7), (5, rows), (rows - 1, rows)):  # slices across expert boundaries
            np.testing.assert_array_equal(t.load_rows(a, b, np.full(rows * want.shape[-1], np.nan, np.float32)),
                                          flat[a:b])
    np.testing.assert_array_equal(out["blk.0.ffn_gate_inp.weight"].load(), w["model.layers.0.block_sparse_moe.gate.weight"])
    assert out["blk.0.ffn_gate_exps.weight"].shape == (N_EXP, FF, N_EMBD)
    assert out["blk.0.ffn_down_exps.weight"].shape == (N_EXP, N_EMBD, FF)
    assert "blk.0.ffn_gate.weight" not in out and "blk.0.attn_q.weight" in out
    names = list(out)
    block = names[names.index("blk.0.attn_norm.weight"):names.index("blk.1.attn_norm.weight")]
    assert block[-4:] == ["blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
                          "blk.0.ffn_down_exps.weight"]


def test_mixtral_keeps_llamas_qk_permutation_and_metadata():
    w = random_weights(mixtral_shapes())
    arch = get_arch(moe_config("MixtralForCausalLM"))
    out = by_name(arch, w)
    q = w["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(out["blk.0.attn_q.weight"].load(), q)  # permuted for llama.cpp's rope
    kv = kv_dict(arch)
    assert arch.arch == "llama" and kv["llama.expert_count"][0] == N_EXP and kv["llama.expert_used_count"][0] == 2
    assert kv["llama.feed_forward_length"][0] == FF
    assert arch.model_info().n_expert == N_EXP


def test_fused_layout_splits_gate_and_up_per_expert():
    w = random_weights(mixtral_shapes())
    fused = {k: v for k, v in w.items() if ".experts." not in k}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        e = [(w[f"{p}block_sparse_moe.experts.{x}.w1.weight"], w[f"{p}block_sparse_moe.experts.{x}.w3.weight"],
              w[f"{p}block_sparse_moe.experts.{x}.w2.weight"]) for x in range(N_EXP)]
        fused[p + "mlp.experts.gate_up_proj"] = np.stack([np.concatenate([g, u]) for g, u, _ in e])
        fused[p + "mlp.experts.down_proj"] = np.stack([d for _, _, d in e])
        fused[p + "mlp.gate.weight"] = fused.pop(p + "block_sparse_moe.gate.weight")
    a = by_name(get_arch(moe_config("MixtralForCausalLM")), w)
    b = by_name(get_arch(moe_config("MixtralForCausalLM")), fused)
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name].load(), b[name].load(), err_msg=name)
    np.testing.assert_array_equal(b["blk.1.ffn_up_exps.weight"].load_rows(FF - 2, FF + 2),
                                  a["blk.1.ffn_up_exps.weight"].load_rows(FF - 2, FF + 2))


def test_missing_expert_is_named():
    w = random_weights(mixtral_shapes())
    del w["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    with pytest.raises(SlimedgeError, match=r"missing tensor model\.layers\.1\.block_sparse_moe\.experts\.2\.w3\.weight"
                                            r" \(expert weights of layer 1: 3 of 4 found\)"):
        get_arch(moe_config("MixtralForCausalLM")).tensors(FakeSource(w))


def test_expert_count_must_match_the_weights():
    with pytest.raises(SlimedgeError, match="ffn_gate_exps|shape"):
        get_arch(moe_config("MixtralForCausalLM", num_local_experts=3)).tensors(
            FakeSource(random_weights(mixtral_shapes())))
    with pytest.raises(SlimedgeError, match="num_local_experts"):
        get_arch(moe_config("MixtralForCausalLM", num_local_experts=None))


def test_qwen3moe_names_norms_and_metadata():
    w = random_weights(qwen3moe_shapes())
    arch = get_arch(moe_config("Qwen3MoeForCausalLM"))
    out = by_name(arch, w)
    np.testing.assert_array_equal(out["blk.0.attn_q.weight"].load(), w["model.layers.0.self_attn.q_proj.weight"])
    np.testing.assert_array_equal(out["blk.1.attn_k_norm.weight"].load(), w["model.layers.1.self_attn.k_norm.weight"])
    np.testing.assert_array_equal(out["blk.1.ffn_down_exps.weight"].load()[3],
                                  w["model.layers.1.mlp.experts.3.down_proj.weight"])
    kv = kv_dict(arch)
    assert arch.arch == "qwen3moe" and kv["qwen3moe.expert_feed_forward_length"][0] == FF
    assert (kv["qwen3moe.expert_count"][0], kv["qwen3moe.expert_used_count"][0]) == (N_EXP, 2)


def test_qwen3moe_refusals_and_warning(caplog):
    with pytest.raises(SlimedgeError, match="mlp_only_layers"):
        get_arch(moe_config("Qwen3MoeForCausalLM", mlp_only_layers=[0]))
    with pytest.raises(SlimedgeError, match="decoder_sparse_step 2"):
        get_arch(moe_config("Qwen3MoeForCausalLM", decoder_sparse_step=2))
    with caplog.at_level(logging.WARNING):
        get_arch(moe_config("Qwen3MoeForCausalLM", norm_topk_prob=False))
    assert "always renormalizes" in caplog.text


def test_stacked_ref_validates_rows():
    class R:
        name, file, shape = "x", __import__("pathlib").Path("f"), (4, 3)

        def load_rows(self, a, b, out=None):
            return np.arange(a * 3, b * 3, dtype=np.float32).reshape(b - a, 3)

    s = StackedRef("s", (2, 2, 3), [Part(R(), 2, 4), Part(R(), 0, 2)])
    np.testing.assert_array_equal(s.load().reshape(-1), np.r_[np.arange(6, 12), np.arange(0, 6)].astype(np.float32))
    with pytest.raises(ValueError):
        StackedRef("s", (3, 2, 3), [Part(R(), 0, 2)])


@pytest.mark.slow  # builds and plans a MoE model through the CLI
def test_dry_run_lists_expert_tensors(tmp_path):
    from tests.factory import cached_hf_model

    from slimedge.convert import plan
    from slimedge.quant.mixes import QuantSpec

    p = plan(cached_hf_model(arch="mixtral", kquant=True), QuantSpec("Q4_K_M"))
    t = {x.name: x for x in p.tensors}["blk.1.ffn_down_exps.weight"]
    assert t.shape == (4, 256, 512) and t.qtype.name == "Q6_K" and t.nbytes == 4 * 256 * 512 // 256 * 210
    table = p.table()
    assert "4x256x512" in table and "4 experts per MoE layer" in table
