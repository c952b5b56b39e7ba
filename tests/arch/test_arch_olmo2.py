"""slimedge.arch.olmo2: post-norms only, whole-projection q/k norms, no permutation, tied -> output stored twice."""

from __future__ import annotations

import numpy as np
import pytest
from tests.arch.arch_kit import HEAD_DIM, N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB, FakeSource, config, out_by_name, random_weights
from gguf import MODEL_ARCH, MODEL_TENSORS

from slimedge.arch import get_arch
from slimedge.arch.olmo2 import Olmo2
from slimedge.errors import SlimedgeError

Q, KV = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM


def olmo_config(**kw) -> dict:
    return config("llama", architectures=["Olmo2ForCausalLM"], **kw)


def olmo_shapes(lm_head: bool = True) -> dict[str, tuple]:
    shapes = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.norm.weight": (N_EMBD,)}
    if lm_head:
        shapes["lm_head.weight"] = (N_VOCAB, N_EMBD)
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (Q, N_EMBD), p + "self_attn.k_proj.weight": (KV, N_EMBD),
            p + "self_attn.v_proj.weight": (KV, N_EMBD), p + "self_attn.o_proj.weight": (N_EMBD, Q),
            p + "self_attn.q_norm.weight": (Q,), p + "self_attn.k_norm.weight": (KV,),
            p + "post_attention_layernorm.weight": (N_EMBD,), p + "post_feedforward_layernorm.weight": (N_EMBD,),
            p + "mlp.gate_proj.weight": (48, N_EMBD), p + "mlp.up_proj.weight": (48, N_EMBD),
            p + "mlp.down_proj.weight": (N_EMBD, 48)})
    return shapes


def test_names_in_file_order():
    names = [t.name for t in get_arch(olmo_config()).tensors(FakeSource(random_weights(olmo_shapes())))]
    block = ["attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_q_norm.weight", "attn_k_norm.weight",
             "attn_output.weight", "post_attention_norm.weight", "ffn_gate.weight", "ffn_up.weight",
             "ffn_down.weight", "post_ffw_norm.weight"]
    assert names == (["token_embd.weight"] + [f"blk.{i}.{n}" for i in range(N_LAYER) for n in block]
                     + ["output_norm.weight", "output.weight"])
    assert {mt for _, mt, _ in Olmo2.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.OLMO2])


def test_values_pass_through_unpermuted():
    weights = random_weights(olmo_shapes())
    out = out_by_name(get_arch(olmo_config()), FakeSource(weights))
    for name, hf in (("blk.0.attn_q.weight", "self_attn.q_proj.weight"), ("blk.0.attn_k_norm.weight", "self_attn.k_norm.weight"),
                     ("blk.0.post_ffw_norm.weight", "post_feedforward_layernorm.weight")):
        np.testing.assert_array_equal(out[name].load(), weights[f"model.layers.0.{hf}"])


def test_per_head_qk_norm_is_refused():
    shapes = olmo_shapes()
    shapes["model.layers.1.self_attn.q_norm.weight"] = (HEAD_DIM,)  # Qwen3 style
    with pytest.raises(SlimedgeError, match="q_norm.weight has shape \\[8\\] but config.json implies \\[32\\]"):
        get_arch(olmo_config()).tensors(FakeSource(random_weights(shapes)))


def test_tied_embedding_is_written_as_output_too():
    weights = random_weights(olmo_shapes(lm_head=False))
    out = get_arch(olmo_config(tie_word_embeddings=True)).tensors(FakeSource(weights))
    names = [t.name for t in out]
    assert names[-2:] == ["output_norm.weight", "output.weight"]
    np.testing.assert_array_equal(out[-1].load(), weights["model.embed_tokens.weight"])
    np.testing.assert_array_equal(out[-1].load_rows(3, 7), weights["model.embed_tokens.weight"][3:7])


def test_unsupported_shapes_refused():
    with pytest.raises(SlimedgeError, match="head_dim = hidden_size / heads"):
        get_arch(olmo_config(head_dim=2 * HEAD_DIM))
    with pytest.raises(SlimedgeError, match="sliding_window is not supported"):
        get_arch(olmo_config(sliding_window=64))
