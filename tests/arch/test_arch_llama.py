"""slimedge.arch.llama (and mistral, the same table): names, required tensors, q/k permutation, rope factors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tests.arch.arch_kit import (HEAD_DIM, N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB, FakeSource, config, kv_dict,
                      llama_like_shapes, out_by_name, random_weights)
from gguf import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS

from slimedge.arch import get_arch
from slimedge.arch.llama import Llama, llama3_rope_factors, permute_rope_rows
from slimedge.arch.mistral import Mistral
from slimedge.errors import SlimedgeError

# HF name in a layer -> GGUF name in a block, written out (not taken from the table under test)
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight"}
OPTIONAL_BIASES = {
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.bias": "attn_output.bias",
    "mlp.gate_proj.bias": "ffn_gate.bias", "mlp.up_proj.bias": "ffn_up.bias", "mlp.down_proj.bias": "ffn_down.bias"}
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}


def expected_mapping(biases: bool = False) -> dict[str, str]:
    m = dict(GLOBAL_NAMES)
    for i in range(N_LAYER):
        layer = {**LAYER_NAMES, **(OPTIONAL_BIASES if biases else {})}
        m.update({f"model.layers.{i}.{hf}": f"blk.{i}.{g}" for hf, g in layer.items()})
    return m


def with_biases(shapes: dict) -> dict:
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    sizes = {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": N_EMBD, "gate_proj": N_FF, "up_proj": N_FF,
             "down_proj": N_EMBD}
    for i in range(N_LAYER):
        for hf in OPTIONAL_BIASES:
            shapes[f"model.layers.{i}.{hf}"] = (sizes[hf.split(".")[1]],)
    return shapes


@pytest.mark.parametrize("cls", [Llama, Mistral])
@pytest.mark.parametrize("biases", [False, True])
def test_hf_to_gguf_names(cls, biases):
    hf = "MistralForCausalLM" if cls is Mistral else "LlamaForCausalLM"
    arch = get_arch(config(architectures=[hf]))
    assert type(arch) is cls and arch.arch == "llama"
    shapes = llama_like_shapes()
    if biases:
        shapes = with_biases(shapes)
    out = arch.tensors(FakeSource(random_weights(shapes)))
    got = {t.origin.split(" in ")[0]: t.name for t in out}
    assert got == expected_mapping(biases)
    assert all(t.shape == shapes[t.origin.split(" in ")[0]] for t in out)


def test_every_gguf_tensor_is_one_llama_cpp_knows():
    known = set(MODEL_TENSORS[MODEL_ARCH.LLAMA])
    assert {mt for _, mt, _ in Llama.TENSORS} <= known
    assert Mistral.TENSORS is Llama.TENSORS


def test_required_tensors_are_the_weights():
    required = {hf.replace("model.layers.{bid}.", "") for hf, _, req in Llama.TENSORS if req}
    assert required == set(LAYER_NAMES) | set(GLOBAL_NAMES)


@pytest.mark.parametrize("missing", ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
                                     "model.layers.1.post_attention_layernorm.weight"])
def test_missing_weight_is_refused(missing):
    weights = random_weights(llama_like_shapes())
    del weights[missing]
    with pytest.raises(SlimedgeError, match=f"missing tensor {missing}"):
        get_arch(config()).tensors(FakeSource(weights))


def test_permute_rope_rows_small_example():
    # one head of 4 rows: HF halves (0, 1 | 2, 3) -> llama.cpp pairs (0, 2), (1, 3)
    w = np.arange(4.0).reshape(4, 1)
    assert permute_rope_rows(w, 1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]
    # two heads of 6 rows each, as a formula: out[h*d + 2i + j] = in[h*d + j*d/2 + i]
    d, n = 6, 2
    w = np.arange(n * d * 3.0).reshape(n * d, 3)
    out = permute_rope_rows(w, n)
    for h in range(n):
        for i in range(d // 2):
            for j in range(2):
                np.testing.assert_array_equal(out[h * d + 2 * i + j], w[h * d + j * d // 2 + i])


def test_permute_rope_rows_has_an_inverse_and_keeps_shape():
    w = np.random.default_rng(0).standard_normal((N_HEAD * HEAD_DIM, N_EMBD)).astype(np.float32)
    p = permute_rope_rows(w, N_HEAD)
    assert p.shape == w.shape and p.dtype == w.dtype and p.flags.c_contiguous
    inverse = p.reshape(N_HEAD, HEAD_DIM // 2, 2, N_EMBD).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(inverse, w)
    assert not np.array_equal(p, w)


def _rope(x: np.ndarray, pos: int, pairs) -> np.ndarray:
    d = x.size
    y = x.copy()
    for i, (a, b) in enumerate(pairs(d)):
        theta = pos * 10000.0 ** (-2 * i / d)
        c, s = math.cos(theta), math.sin(theta)
        y[a], y[b] = x[a] * c - x[b] * s, x[a] * s + x[b] * c
    return y


def test_permutation_turns_neox_rope_into_interleaved_rope():
    """What the permutation is for: llama.cpp's interleaved rope of permuted rows = permuted HF (neox) rope."""
    def neox(d):
        return [(i, i + d // 2) for i in range(d // 2)]

    def interleaved(d):
        return [(2 * i, 2 * i + 1) for i in range(d // 2)]

    q = np.random.default_rng(1).standard_normal(HEAD_DIM)
    for pos in (1, 5):
        want = permute_rope_rows(_rope(q, pos, neox)[:, None], 1)[:, 0]
        got = _rope(permute_rope_rows(q[:, None], 1)[:, 0], pos, interleaved)
        np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("head_dim", [HEAD_DIM, 16])
def test_transform_permutes_q_and_k_per_head_only(head_dim):
    cfg = config(head_dim=head_dim)
    q, kv = N_HEAD * head_dim, N_HEAD_KV * head_dim
    shapes = llama_like_shapes()
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, N_EMBD), p + "self_attn.k_proj.weight": (kv, N_EMBD),
                       p + "self_attn.v_proj.weight": (kv, N_EMBD), p + "self_attn.o_proj.weight": (N_EMBD, q)})
    shapes["model.layers.0.self_attn.q_proj.bias"] = (q,)
    weights = random_weights(shapes)
    out = out_by_name(get_arch(cfg), FakeSource(weights))
    L0 = "model.layers.0.self_attn."
    np.testing.assert_array_equal(out["blk.0.attn_q.weight"].load(), permute_rope_rows(weights[L0 + "q_proj.weight"], N_HEAD))
    np.testing.assert_array_equal(out["blk.0.attn_k.weight"].load(),
                                  permute_rope_rows(weights[L0 + "k_proj.weight"], N_HEAD_KV))
    np.testing.assert_array_equal(out["blk.0.attn_q.bias"].load(), permute_rope_rows(weights[L0 + "q_proj.bias"], N_HEAD))
    for name, hf in (("blk.0.attn_v.weight", L0 + "v_proj.weight"), ("blk.0.attn_output.weight", L0 + "o_proj.weight"),
                     ("token_embd.weight", "model.embed_tokens.weight")):
        np.testing.assert_array_equal(out[name].load(), weights[hf])


def test_row_slices_of_whole_heads_match_the_whole_tensor():
    out = out_by_name(get_arch(config()), FakeSource(random_weights(llama_like_shapes())))
    q = out["blk.1.attn_q.weight"]
    assert q.row_group == HEAD_DIM and out["blk.1.attn_k.weight"].row_group == HEAD_DIM
    assert out["blk.1.ffn_up.weight"].row_group == 1
    whole = q.load()
    for a in range(0, N_HEAD * HEAD_DIM, HEAD_DIM):
        np.testing.assert_array_equal(q.load_rows(a, a + HEAD_DIM), whole[a:a + HEAD_DIM])


def test_metadata_adds_rope_dimension_count():
    kv = kv_dict(get_arch(config(head_dim=16)))
    assert kv["llama.rope.dimension_count"][0] == 16
    assert kv["llama.attention.key_length"][0] == 16 and kv["llama.block_count"][0] == N_LAYER
    assert kv["llama.vocab_size"][0] == N_VOCAB


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def test_llama3_rope_factors_follow_the_wavelength_bands():
    d, theta = 16, 10000.0
    got = llama3_rope_factors(LLAMA3_ROPE, d, theta)
    assert got.dtype == np.float32 and got.shape == (d // 2,)
    for i, f in enumerate(got.tolist()):
        wavelen = 2 * math.pi * theta ** (2 * i / d)
        if wavelen < 64 / 4.0:  # high frequencies: unchanged
            assert f == 1.0
        elif wavelen > 64 / 1.0:  # low frequencies: divided by the factor
            assert f == 8.0
        else:  # smooth in between
            smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
            assert f == pytest.approx(1 / ((1 - smooth) / 8.0 + smooth), rel=1e-6)
    assert got[0] == 1.0 and got[-1] == 8.0


def test_llama3_rope_becomes_a_rope_freqs_tensor_first():
    cfg = config(rope_scaling=LLAMA3_ROPE)
    out = get_arch(cfg).tensors(FakeSource(random_weights(llama_like_shapes())))
    assert out[0].name == "rope_freqs.weight" and out[0].origin == "generated from config.json"
    np.testing.assert_array_equal(out[0].load(), llama3_rope_factors(LLAMA3_ROPE, HEAD_DIM, 10000.0))
    plain = get_arch(config()).tensors(FakeSource(random_weights(llama_like_shapes())))
    assert plain[0].name == "token_embd.weight"
    assert MODEL_TENSOR.ROPE_FREQS in MODEL_TENSORS[MODEL_ARCH.LLAMA]
