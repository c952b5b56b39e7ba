"""slimedge.arch: OLMo 3, Ministral 3 (and Mistral 3's text tower), EXAONE 4, ERNIE 4.5 — tables, metadata,
refusals (no files, no llama.cpp; see tests/convert/test_family_<name>.py for the end-to-end checks)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSORS

from slimedge.arch import get_arch
from slimedge.arch.exaone4 import Exaone4
from slimedge.arch.llama import permute_rope_rows
from slimedge.arch.ministral3 import Ministral3
from slimedge.arch.olmo3 import Olmo3
from slimedge.errors import SlimedgeError
from tests.arch.arch_kit import (HEAD_DIM, N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB, FakeSource, config,
                                 kv_dict, llama_like_shapes, out_by_name, random_weights)

Q, KV = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM


def cfg(name: str, **kw) -> dict:
    return config("llama", architectures=[name], **kw)


def post_norm_shapes(n_layer: int = N_LAYER, qk: tuple[int, int] = (Q, KV)) -> dict[str, tuple]:
    """An OLMo-2-style checkpoint (post-norms, q/k norms of the given lengths)."""
    shapes = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.norm.weight": (N_EMBD,),
              "lm_head.weight": (N_VOCAB, N_EMBD)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (Q, N_EMBD), p + "self_attn.k_proj.weight": (KV, N_EMBD),
            p + "self_attn.v_proj.weight": (KV, N_EMBD), p + "self_attn.o_proj.weight": (N_EMBD, Q),
            p + "self_attn.q_norm.weight": (qk[0],), p + "self_attn.k_norm.weight": (qk[1],),
            p + "post_attention_layernorm.weight": (N_EMBD,), p + "post_feedforward_layernorm.weight": (N_EMBD,),
            p + "mlp.gate_proj.weight": (N_FF, N_EMBD), p + "mlp.up_proj.weight": (N_FF, N_EMBD),
            p + "mlp.down_proj.weight": (N_EMBD, N_FF)})
    return shapes


# ---- OLMo 3 ---------------------------------------------------------------------------------------

def test_olmo3_writes_olmo2_with_window_and_default_pattern():
    arch = get_arch(cfg("Olmo3ForCausalLM", num_hidden_layers=8, sliding_window=4096))
    assert isinstance(arch, Olmo3) and arch.arch == "olmo2"
    kv = kv_dict(arch)
    assert kv["olmo2.attention.sliding_window"][0] == 4096
    assert kv["olmo2.attention.sliding_window_pattern"][0] == [True, True, True, False] * 2
    info = arch.model_info()
    assert info.n_swa == 4096 and info.swa_layers == (True, True, True, False) * 2


def test_olmo3_layer_types_and_yarn_of_the_global_layers():
    arch = get_arch(cfg("Olmo3ForCausalLM", sliding_window=16, layer_types=["full_attention", "sliding_attention"],
                        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 5e5},
                                         "full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 5e5,
                                                            "original_max_position_embeddings": 8192}}))
    kv = kv_dict(arch)
    assert kv["olmo2.attention.sliding_window_pattern"][0] == [False, True]
    assert kv["olmo2.rope.scaling.type"][0] == "yarn" and kv["olmo2.rope.freq_base"][0] == 5e5
    assert kv["olmo2.rope.scaling.original_context_length"][0] == 8192


def test_olmo3_tensors_are_olmo2s():
    weights = random_weights(post_norm_shapes())
    out = out_by_name(get_arch(cfg("Olmo3ForCausalLM", sliding_window=8)), FakeSource(weights))
    np.testing.assert_array_equal(out["blk.1.attn_q.weight"].load(), weights["model.layers.1.self_attn.q_proj.weight"])
    assert "blk.0.post_ffw_norm.weight" in out and "output.weight" in out


def test_olmo3_refusals_and_olmo2_still_refuses_a_window():
    with pytest.raises(SlimedgeError, match="layer_types has 1 entries for 2 layers"):
        get_arch(cfg("Olmo3ForCausalLM", sliding_window=8, layer_types=["full_attention"]))
    with pytest.raises(SlimedgeError, match="unscaled"):
        get_arch(cfg("Olmo3ForCausalLM", sliding_window=8, rope_parameters={
            "sliding_attention": {"rope_type": "linear", "factor": 2.0}, "full_attention": {"rope_type": "default"}}))
    with pytest.raises(SlimedgeError, match="that is OLMo 3"):
        get_arch(cfg("Olmo2ForCausalLM", sliding_window=8))


# ---- Ministral 3 / Mistral 3 ----------------------------------------------------------------------

MINISTRAL_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16384,
                  "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                  "llama_4_scaling_beta": 0.1}


def test_ministral3_metadata_yarn_log_mul_and_temperature():
    arch = get_arch(cfg("Ministral3ForCausalLM", rope_parameters=MINISTRAL_ROPE))
    assert isinstance(arch, Ministral3) and arch.arch == "mistral3"
    kv = kv_dict(arch)
    assert kv["mistral3.rope.scaling.type"][0] == "yarn"
    assert kv["mistral3.rope.scaling.original_context_length"][0] == 16384
    assert kv["mistral3.rope.scaling.yarn_log_multiplier"][0] == 1.0
    assert kv["mistral3.attention.temperature_scale"][0] == pytest.approx(0.1)
    assert kv["mistral3.rope.dimension_count"][0] == HEAD_DIM


def test_mistral3_text_tower_is_read_and_vision_skipped(caplog):
    weights = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
               for k, v in random_weights(llama_like_shapes()).items()}
    weights["model.vision_tower.transformer.layers.0.attention.q_proj.weight"] = np.zeros((4, 4), np.float32)
    weights["model.multi_modal_projector.linear_1.weight"] = np.zeros((4, 4), np.float32)
    arch = get_arch(cfg("Mistral3ForConditionalGeneration"))
    with caplog.at_level("INFO"):
        out = out_by_name(arch, FakeSource(weights))
    # no warning: the Pixtral tower is the mmproj's (slimedge.arch.vision.pixtral)
    assert "the vision tower (2 tensors) is not in the text model" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= 30] and "skipping" not in caplog.text
    want = permute_rope_rows(weights["model.language_model.layers.0.self_attn.k_proj.weight"], N_HEAD_KV)
    np.testing.assert_array_equal(out["blk.0.attn_k.weight"].load(), want)  # normal rope layout: permuted
    assert "output.weight" in out and len(out) == 2 + 9 * N_LAYER + 1


def test_ministral3_refusals():
    with pytest.raises(SlimedgeError, match="mscale 2.0 is not supported"):
        get_arch(cfg("Ministral3ForCausalLM", rope_parameters={**MINISTRAL_ROPE, "mscale": 2.0}))
    with pytest.raises(SlimedgeError, match="sliding_window is not supported"):
        get_arch(cfg("Ministral3ForCausalLM", sliding_window=4096))


# ---- EXAONE 4 -------------------------------------------------------------------------------------

def test_exaone4_table_per_head_qk_norms_unpermuted():
    weights = random_weights(post_norm_shapes(qk=(HEAD_DIM, HEAD_DIM)))
    arch = get_arch(cfg("Exaone4ForCausalLM", head_dim=HEAD_DIM))
    names = [t.name for t in arch.tensors(FakeSource(weights))]
    assert names[:12] == ["token_embd.weight"] + [f"blk.0.{n}" for n in (
        "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_q_norm.weight", "attn_k_norm.weight",
        "attn_output.weight", "post_attention_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
        "post_ffw_norm.weight")]
    out = out_by_name(arch, FakeSource(weights))
    np.testing.assert_array_equal(out["blk.0.attn_k.weight"].load(), weights["model.layers.0.self_attn.k_proj.weight"])
    assert {mt for _, mt, _ in Exaone4.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.EXAONE4])
    kv = kv_dict(arch)
    assert "exaone4.attention.sliding_window" not in kv and kv["exaone4.attention.key_length"][0] == HEAD_DIM


def test_exaone4_window_only_at_64_layers_and_llama3_rope_freqs():
    with pytest.raises(SlimedgeError, match="head_dim 16 x 4 heads != hidden_size 32"):
        get_arch(cfg("Exaone4ForCausalLM", head_dim=2 * HEAD_DIM))
    with pytest.raises(SlimedgeError, match="only with 64 layers"):
        get_arch(cfg("Exaone4ForCausalLM", sliding_window=4096, sliding_window_pattern="LLLG"))
    arch = get_arch(cfg("Exaone4ForCausalLM", num_hidden_layers=64, sliding_window=4096, sliding_window_pattern="LLLG",
                        rope_parameters={"rope_type": "llama3", "factor": 16.0, "rope_theta": 1e6,
                                         "original_max_position_embeddings": 8192}))
    kv = kv_dict(arch)
    assert kv["exaone4.attention.sliding_window_pattern"][0] == [True, True, True, False] * 16
    assert arch.model_info().n_swa == 4096
    assert [name for name, _ in arch.extra_tensors()] == ["rope_freqs.weight"]


# ---- ERNIE 4.5 ------------------------------------------------------------------------------------

def test_ernie4_5_llama_names_unpermuted_and_paddle_prefix():
    weights = random_weights(llama_like_shapes(lm_head=False))
    paddle = {("ernie." + k[len("model."):] if k.startswith("model.") else k): v for k, v in weights.items()}
    arch = get_arch(cfg("Ernie4_5_ForCausalLM", tie_word_embeddings=True, head_dim=HEAD_DIM))
    assert arch.arch == "ernie4_5"
    out = out_by_name(arch, FakeSource(paddle))
    np.testing.assert_array_equal(out["blk.1.attn_q.weight"].load(), weights["model.layers.1.self_attn.q_proj.weight"])
    assert "output.weight" not in out and kv_dict(arch)["ernie4_5.attention.key_length"][0] == HEAD_DIM


def test_ernie4_5_refuses_biases():
    with pytest.raises(SlimedgeError, match="use_bias=true is not supported"):
        get_arch(cfg("Ernie4_5ForCausalLM", use_bias=True))
