"""slimedge.arch.gemma4: metadata of the E2B/E4B layouts (two head shapes, shared KV, double-wide MLP, per-layer
embeddings), the proportional-rope factors, k_eq_v, the one-line refusals, the KV estimate's per-layer widths, and
the "gemma4" tokenizer read from tokenizer.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSORS, TokenType
from tests.arch.arch_kit import FakeSource, kv_dict, out_by_name, random_weights

from slimedge.arch import get_arch
from slimedge.arch.gemma4 import Gemma4
from slimedge.errors import SlimedgeError
from slimedge.memory import kv_bytes_per_layer, padded_v_width, shape_from_model_info


def e2b(n_layer: int = 35, n_shared: int = 20, **over) -> dict:
    """An E2B-layout text config (35 layers as llama.cpp sizes E2B; 4 sliding + 1 full; 20 layers sharing KV)."""
    cfg = dict(architectures=["Gemma4ForConditionalGeneration"], vocab_size=262144, hidden_size=1536,
               intermediate_size=6144, num_hidden_layers=n_layer, num_attention_heads=8, num_key_value_heads=1,
               head_dim=256, global_head_dim=512, max_position_embeddings=131072, rms_norm_eps=1e-6,
               sliding_window=512, final_logit_softcapping=30.0, hidden_size_per_layer_input=256,
               vocab_size_per_layer_input=262144, num_kv_shared_layers=n_shared, use_double_wide_mlp=True,
               layer_types=["full_attention" if i % 5 == 4 else "sliding_attention" for i in range(n_layer)],
               rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                                   "rope_theta": 1000000.0}})
    cfg.update(over)
    return cfg


def test_e2b_metadata_as_llama_cpp_reads_it():
    arch = get_arch(e2b())
    kv = {k: v for k, (v, _) in kv_dict(arch).items()}
    assert isinstance(arch, Gemma4) and arch.arch == "gemma4"
    assert kv["gemma4.attention.shared_kv_layers"] == 20 and kv["gemma4.embedding_length_per_layer_input"] == 256
    assert kv["gemma4.feed_forward_length"] == [6144] * 15 + [12288] * 20  # double-wide on the shared layers
    assert (kv["gemma4.attention.key_length"], kv["gemma4.attention.key_length_swa"]) == (512, 256)
    assert (kv["gemma4.attention.value_length"], kv["gemma4.attention.value_length_swa"]) == (512, 256)
    assert (kv["gemma4.rope.dimension_count"], kv["gemma4.rope.dimension_count_swa"]) == (512, 256)
    assert (kv["gemma4.rope.freq_base"], kv["gemma4.rope.freq_base_swa"]) == (1e6, 1e4)
    assert kv["gemma4.attention.sliding_window_pattern"] == [i % 5 != 4 for i in range(35)]
    assert kv["gemma4.attention.head_count_kv"] == [1] * 35 and kv["gemma4.final_logit_softcapping"] == 30.0
    assert not [k for k in kv if "rope.scaling" in k]
    (name, factors), = arch.extra_tensors()  # proportional rope: 64 of 256 pairs rotate
    assert name == "rope_freqs.weight" and factors.tolist() == [1.0] * 64 + [np.float32(1e30)] * 192


def test_kv_estimate_per_layer_widths_and_shared_layers():
    info = get_arch(e2b()).model_info()
    assert info.n_head_kv_layers == (1,) * 15 + (0,) * 20 and (info.key_length, info.key_length_swa) == (512, 256)
    shape = shape_from_model_info(info, [])
    full, swa = kv_bytes_per_layer(shape, 1024, layer=4), kv_bytes_per_layer(shape, 1024, layer=0)
    assert (full, swa) == (1024 * (512 + 512) * 2, 1024 * (256 + 256) * 2)
    assert padded_v_width(shape) == 512  # without flash attention llama.cpp pads every V row to the widest
    assert kv_bytes_per_layer(shape, 1024, layer=0, v_pad=512) == 1024 * (256 + 512) * 2
    assert kv_bytes_per_layer(shape, 1024, layer=20) == 0


def test_no_softcap_is_written_as_zero_and_k_eq_v_full_layers_need_no_v():
    cfg = e2b(4, 0, layer_types=["sliding_attention", "full_attention"] * 2, final_logit_softcapping=None,
              attention_k_eq_v=True, num_global_key_value_heads=2, hidden_size_per_layer_input=0, hidden_size=32,
              intermediate_size=48, head_dim=16, global_head_dim=32, num_attention_heads=2, vocab_size=64)
    arch = get_arch(cfg)
    kv = {k: v for k, (v, _) in kv_dict(arch).items()}
    assert kv["gemma4.final_logit_softcapping"] == 0.0 and kv["gemma4.attention.head_count_kv"] == [1, 2, 1, 2]
    assert kv["gemma4.feed_forward_length"] == 48 and kv["gemma4.embedding_length_per_layer_input"] == 0
    shapes = {"model.embed_tokens.weight": (64, 32), "model.norm.weight": (32,)}
    for i, (hd, kvh) in enumerate([(16, 1), (32, 2), (16, 1), (32, 2)]):
        p = f"model.layers.{i}."
        shapes.update({p + n: (32,) for n in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                              "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight")})
        shapes.update({p + "self_attn.q_proj.weight": (2 * hd, 32), p + "self_attn.k_proj.weight": (kvh * hd, 32),
                       p + "self_attn.o_proj.weight": (32, 2 * hd), p + "self_attn.q_norm.weight": (hd,),
                       p + "self_attn.k_norm.weight": (hd,), p + "mlp.gate_proj.weight": (48, 32),
                       p + "mlp.up_proj.weight": (48, 32), p + "mlp.down_proj.weight": (32, 48),
                       p + "layer_scalar": (1,)})
        if i % 2 == 0:
            shapes[p + "self_attn.v_proj.weight"] = (kvh * hd, 32)
    w = random_weights(shapes)
    out = out_by_name(arch, FakeSource(w))
    assert "blk.1.attn_v.weight" not in out and out["blk.0.attn_v.weight"].shape == (16, 32)
    assert np.array_equal(out["blk.3.layer_output_scale.weight"].load(), w["model.layers.3.layer_scalar"])
    assert np.array_equal(out["blk.0.ffn_norm.weight"].load(), w["model.layers.0.pre_feedforward_layernorm.weight"])
    assert {mt for _, mt, _ in Gemma4.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.GEMMA4])
    del w["model.layers.2.self_attn.v_proj.weight"]  # a sliding layer needs its v_proj even with k_eq_v
    with pytest.raises(SlimedgeError, match="missing tensor model.layers.2.self_attn.v_proj.weight"):
        arch.tensors(FakeSource(w))


@pytest.mark.parametrize("over, what", [
    (dict(enable_moe_block=True), "num_experts"), (dict(attention_bias=True), "attention_bias"),
    (dict(use_bidirectional_attention="all"), "use_bidirectional_attention"),
    (dict(layer_types=["sliding_attention"] * 34 + ["full_attention"]), "layer_types"),
    (dict(rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 4.0}}), "rope type"),
])
def test_refusals_are_one_line(over, what):
    with pytest.raises(SlimedgeError) as err:
        get_arch(e2b(**over))
    assert what in str(err.value) and "\n" not in str(err.value)


def test_gemma4_tokenizer_json_becomes_llama_cpp_gemma4(tmp_path):
    """Gemma 4 ships a SentencePiece-style tokenizer.json: written as llama.cpp's "gemma4" BPE (its merges, no
    space prefix), with the chat-format markers USER_DEFINED so llama.cpp renders them."""
    from slimedge.vocab import load_vocab

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<|turn>": 4, "<turn|>": 5, "<|channel>": 6,
             "<channel|>": 7, "▁": 8, "h": 9, "i": 10, "hi": 11, "▁hi": 12}
    tok = {"version": "1.0", "added_tokens": [{"id": i, "content": t, "special": True, "single_word": False,
                                               "lstrip": False, "rstrip": False, "normalized": False}
                                              for t, i in vocab.items() if i < 8],
           "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}, "pre_tokenizer": None,
           "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "vocab": vocab,
                     "merges": [["h", "i"], ["▁", "hi"]]}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    v = load_vocab(tmp_path, {"architectures": ["Gemma4ForConditionalGeneration"]}, 13)
    assert (v.model, v.pre, v.add_space_prefix) == ("gemma4", "gemma4", False)
    assert v.merges == ["h i", "▁ hi"]
    assert v.types[6] == v.types[7] == TokenType.USER_DEFINED and v.types[4] == TokenType.CONTROL
    other = load_vocab(tmp_path, {"architectures": ["Gemma3ForCausalLM"]}, 13)
    assert other.model == "llama" and other.merges is None  # other families keep the SentencePiece reading
