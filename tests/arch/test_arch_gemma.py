"""slimedge.arch.gemma: names, the +1 norm transform, the q scale, required tensors, metadata keys."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from tests.arch.arch_kit import HEAD_DIM, N_EMBD, N_LAYER, FakeSource, config, kv_dict, llama_like_shapes, out_by_name, random_weights
from gguf import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS

from slimedge.arch import get_arch
from slimedge.arch.gemma import Gemma2, Gemma3
from slimedge.errors import SlimedgeError

NORMS = ("post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def gemma_config(name: str, **over) -> dict:
    base = dict(architectures=[name], head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=4)
    if name == "Gemma2ForCausalLM":
        base.update(tie_word_embeddings=True, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    return config("llama", **{**base, **over})


def gemma_shapes(qk_norm: bool, lm_head: bool = False, n_layer: int = N_LAYER) -> dict[str, tuple]:
    shapes = llama_like_shapes(n_layer=n_layer, lm_head=lm_head)
    for i in range(n_layer):
        p = f"model.layers.{i}."
        shapes.update({p + n + ".weight": (N_EMBD,) for n in NORMS})
        if qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (HEAD_DIM,), p + "self_attn.k_norm.weight": (HEAD_DIM,)})
    return shapes


BLOCK2 = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm", "ffn_norm",
          "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"]
BLOCK3 = BLOCK2[:3] + ["attn_q_norm", "attn_k_norm"] + BLOCK2[3:]


def test_gemma2_names_and_tied_output(caplog):
    arch = get_arch(gemma_config("Gemma2ForCausalLM"))
    with caplog.at_level(logging.WARNING):
        names = [t.name for t in arch.tensors(FakeSource(random_weights(gemma_shapes(False, lm_head=True))))]
    assert not caplog.records
    assert names == (["token_embd.weight"] + [f"blk.{i}.{n}.weight" for i in range(N_LAYER) for n in BLOCK2]
                     + ["output_norm.weight"])  # a stored lm_head is the embedding: llama.cpp reuses token_embd
    # OUTPUT only names the lm_head.weight that is dropped (llama.cpp's gemma2 has no output tensor)
    assert {mt for _, mt, _ in Gemma2.TENSORS} - {MODEL_TENSOR.OUTPUT} <= set(MODEL_TENSORS[MODEL_ARCH.GEMMA2])


def test_gemma3_names_untied():
    arch = get_arch(gemma_config("Gemma3ForCausalLM"))
    names = [t.name for t in arch.tensors(FakeSource(random_weights(gemma_shapes(True, lm_head=True))))]
    assert names == (["token_embd.weight"] + [f"blk.{i}.{n}.weight" for i in range(N_LAYER) for n in BLOCK3]
                     + ["output_norm.weight", "output.weight"])
    assert {mt for _, mt, _ in Gemma3.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.GEMMA3])


def test_norms_get_plus_one_and_other_weights_do_not():
    weights = random_weights(gemma_shapes(True))
    out = out_by_name(get_arch(gemma_config("Gemma3ForCausalLM", tie_word_embeddings=True)), FakeSource(weights))
    for gguf, hf in [("blk.1.attn_norm.weight", "model.layers.1.input_layernorm.weight"),
                     ("blk.1.post_attention_norm.weight", "model.layers.1.post_attention_layernorm.weight"),
                     ("blk.0.ffn_norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"),
                     ("blk.0.post_ffw_norm.weight", "model.layers.0.post_feedforward_layernorm.weight"),
                     ("blk.0.attn_k_norm.weight", "model.layers.0.self_attn.k_norm.weight"),
                     ("blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight"),
                     ("output_norm.weight", "model.norm.weight")]:
        np.testing.assert_allclose(out[gguf].load(), weights[hf] + 1, rtol=1e-6, err_msg=gguf)
    for gguf, hf in [("token_embd.weight", "model.embed_tokens.weight"),
                     ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                     ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight")]:
        np.testing.assert_array_equal(out[gguf].load(), weights[hf])  # no rope permutation, no scale


@pytest.mark.parametrize("name, tensor, hf, qk", [
    ("Gemma2ForCausalLM", "blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", False),
    ("Gemma3ForCausalLM", "blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight", True)])
def test_query_pre_attn_scalar_is_folded_into_q(name, tensor, hf, qk):
    """HF scales scores by qpas**-0.5, llama.cpp by head_dim**-0.5: the ratio goes into q (after q_norm's +1)."""
    weights = random_weights(gemma_shapes(qk))
    out = out_by_name(get_arch(gemma_config(name, query_pre_attn_scalar=2 * HEAD_DIM, tie_word_embeddings=True)),
                      FakeSource(weights))
    plus = 1 if qk else 0
    np.testing.assert_allclose(out[tensor].load(), (weights[hf] + plus) * 0.5 ** 0.5, rtol=1e-6)
    # llama.cpp's 27B sizes (by layer count) scale by (n_embd / n_head)**-0.5 instead: 46 / 62 layers
    big = get_arch(gemma_config(name, num_hidden_layers=46 if not qk else 62, query_pre_attn_scalar=N_EMBD // 4))
    assert big.q_scale() == pytest.approx(1.0)


def test_missing_post_norm_is_an_error():
    shapes = gemma_shapes(False)
    del shapes["model.layers.1.post_feedforward_layernorm.weight"]
    with pytest.raises(SlimedgeError, match="missing tensor model.layers.1.post_feedforward_layernorm.weight"):
        get_arch(gemma_config("Gemma2ForCausalLM")).tensors(FakeSource(random_weights(shapes)))


def test_gemma2_untied_is_refused():
    with pytest.raises(SlimedgeError, match="tie_word_embeddings is false"):
        get_arch(gemma_config("Gemma2ForCausalLM", tie_word_embeddings=False))


def test_gemma2_metadata():
    kv = kv_dict(get_arch(gemma_config("Gemma2ForCausalLM")))
    assert kv["gemma2.attn_logit_softcapping"][0] == 50.0 and kv["gemma2.final_logit_softcapping"][0] == 30.0
    assert kv["gemma2.attention.sliding_window"][0] == 4
    assert kv["gemma2.attention.key_length"][0] == HEAD_DIM and kv["gemma2.attention.value_length"][0] == HEAD_DIM
    assert "gemma2.attention.sliding_window_pattern" not in kv  # llama.cpp's default: every 2nd layer global
    kv = kv_dict(get_arch(gemma_config("Gemma2ForCausalLM", attn_logit_softcapping=None, sliding_window=None)))
    assert kv["gemma2.attn_logit_softcapping"][0] >= 1e6  # "no cap" (llama.cpp always caps; 0 is NaN)
    assert kv["gemma2.attention.sliding_window_pattern"][0] == [False] * N_LAYER


def test_gemma3_metadata_both_config_styles():
    new = gemma_config("Gemma3ForCausalLM", num_hidden_layers=7, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}})
    old = gemma_config("Gemma3ForCausalLM", num_hidden_layers=7, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                       rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=6)
    for cfg in (new, old):
        arch = get_arch(cfg)
        kv = kv_dict(arch)
        assert kv["gemma3.rope.freq_base"][0] == 1e6 and kv["gemma3.rope.freq_base_swa"][0] == 1e4
        assert kv["gemma3.rope.scaling.type"][0] == "linear" and kv["gemma3.rope.scaling.factor"][0] == 8.0
        assert kv["gemma3.attention.sliding_window"][0] == 4 and "gemma3.final_logit_softcapping" not in kv
        assert "gemma3.attention.sliding_window_pattern" not in kv  # the default: layer 5 global
        assert arch.swa_layers == (True,) * 5 + (False, True)
        info = arch.model_info()
        assert info.n_swa == 4 and info.swa_layers == arch.swa_layers


def test_gemma3_layer_types_off_the_default_pattern_are_written():
    arch = get_arch(gemma_config("Gemma3ForCausalLM", layer_types=["sliding_attention", "full_attention"],
                                 final_logit_softcapping=30.0))
    kv = kv_dict(arch)
    assert kv["gemma3.attention.sliding_window_pattern"][0] == [True, False]
    assert kv["gemma3.final_logit_softcapping"][0] == 30.0
    kv = kv_dict(get_arch(gemma_config("Gemma3ForCausalLM", sliding_window=None)))
    assert not [k for k in kv if "sliding_window" in k or "freq_base_swa" in k]


def test_multimodal_names_lose_the_wrapper_and_the_vision_tower_goes_to_the_mmproj(caplog):
    weights = {("language_model." + k): v for k, v in random_weights(gemma_shapes(True, lm_head=True)).items()}
    weights.update(random_weights({"vision_tower.vision_model.embeddings.patch_embedding.weight": (8, 3),
                                   "multi_modal_projector.mm_soft_emb_norm.weight": (8,)}))
    arch = get_arch(gemma_config("Gemma3ForConditionalGeneration"))
    with caplog.at_level(logging.WARNING):
        names = [t.name for t in arch.tensors(FakeSource(weights))]
    assert names[0] == "token_embd.weight" and names[-1] == "output.weight" and len(names) == 3 + N_LAYER * 13
    # no warning: the vision tower is the mmproj's (slimedge.arch.vision.gemma3)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # transformers >= 4.52 layout: model.language_model.layers.N
    newer = {k.replace("language_model.model.", "model.language_model."): v for k, v in weights.items()}
    assert [t.name for t in arch.tensors(FakeSource(newer))] == names
