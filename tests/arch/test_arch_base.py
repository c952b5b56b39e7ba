"""slimedge.arch.base: hyper-parameters from config.json, the generic table matcher, common metadata keys.

Runs on in-memory tensors (arch_kit.FakeSource): no files, no llama.cpp.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from tests.arch.arch_kit import (HEAD_DIM, LLAMA_BLOCK, N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB, FakeSource,
                      config, kv_dict, llama_like_shapes, random_weights)
from gguf import MODEL_TENSOR, GGUFValueType

from slimedge.arch import HParams, get_arch, gguf_name, supported_architectures
from slimedge.errors import SlimedgeError


def test_supported_architectures_are_the_tables():
    # the families' own tests pin their names; here: every table is listed, sorted, once
    names = supported_architectures()
    assert names == sorted(set(names))
    assert set(names) >= {"LLaMAForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM",
                          "Qwen2ForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM", "GraniteForCausalLM",
                          "Olmo2ForCausalLM"}


@pytest.mark.parametrize("hf, gguf_arch", [("llama", "llama"), ("mistral", "llama"), ("qwen2", "qwen2"),
                                           ("phi3", "phi3")])
def test_get_arch_maps_hf_class_to_gguf_architecture(hf, gguf_arch):
    arch = get_arch(config(hf))
    assert arch.arch == gguf_arch and arch.hf_arch == config(hf)["architectures"][0]


def test_get_arch_errors_name_the_file_and_list_supported():
    with pytest.raises(SlimedgeError, match=r"m/config.json: architecture BloomForCausalLM is not supported; "
                                            r"supported: .*LlamaForCausalLM"):
        get_arch(config(architectures=["BloomForCausalLM"]), "m/config.json")
    with pytest.raises(SlimedgeError, match="no 'architectures' entry"):
        get_arch({k: v for k, v in config().items() if k != "architectures"})


def test_hparams_defaults():
    cfg = config()
    del cfg["num_key_value_heads"], cfg["rope_theta"]
    hp = HParams.from_config(cfg, "LlamaForCausalLM")
    assert (hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_ff, hp.n_head) == (N_VOCAB, N_EMBD, N_LAYER, N_FF, N_HEAD)
    assert hp.n_head_kv == N_HEAD  # no GQA stated: one kv head per query head
    assert hp.head_dim == N_EMBD // N_HEAD and hp.rope_theta == 10000.0 and hp.tied is False


def test_hparams_rope_parameters_win_over_rope_theta():
    hp = HParams.from_config(config(rope_theta=1.0, rope_parameters={"rope_theta": 5e5, "type": "linear",
                                                                     "factor": 2.0}), "X")
    assert hp.rope_theta == 5e5 and hp.rope["rope_type"] == "linear"


@pytest.mark.parametrize("key", ["vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                                 "num_attention_heads", "max_position_embeddings", "rms_norm_eps"])
def test_hparams_missing_key_is_one_line_naming_it(key):
    cfg = config()
    del cfg[key]
    with pytest.raises(SlimedgeError, match=f"config.json: missing '{key}', which X needs"):
        HParams.from_config(cfg, "X")


def test_hparams_inconsistent_heads():
    with pytest.raises(SlimedgeError, match="inconsistent sizes"):
        HParams.from_config(config(num_key_value_heads=3), "X")
    with pytest.raises(SlimedgeError, match="bad value"):
        HParams.from_config(config(hidden_size="wide"), "X")


def test_gguf_name_uses_gguf_package_names():
    assert gguf_name(MODEL_TENSOR.ATTN_Q, "weight", 3) == "blk.3.attn_q.weight"
    assert gguf_name(MODEL_TENSOR.TOKEN_EMBD, "weight") == "token_embd.weight"
    assert gguf_name(MODEL_TENSOR.FFN_DOWN, "bias", 0) == "blk.0.ffn_down.bias"


def test_common_metadata_keys_and_types():
    kv = kv_dict(get_arch(config("qwen2")))  # qwen2 adds nothing of its own
    U32, F32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    assert kv == {
        "qwen2.context_length": (128, U32), "qwen2.embedding_length": (N_EMBD, U32),
        "qwen2.block_count": (N_LAYER, U32), "qwen2.feed_forward_length": (N_FF, U32),
        "qwen2.attention.head_count": (N_HEAD, U32), "qwen2.attention.head_count_kv": (N_HEAD_KV, U32),
        "qwen2.attention.layer_norm_rms_epsilon": (1e-5, F32), "qwen2.rope.freq_base": (10000.0, F32),
        "qwen2.vocab_size": (N_VOCAB, U32)}


def test_key_and_value_length_only_when_head_dim_is_not_embd_over_heads():
    kv = kv_dict(get_arch(config("qwen2", head_dim=16)))
    assert kv["qwen2.attention.key_length"][0] == kv["qwen2.attention.value_length"][0] == 16


def test_rope_scaling_metadata_linear_and_yarn():
    kv = kv_dict(get_arch(config("qwen2", rope_scaling={"type": "linear", "factor": 4.0})))
    assert kv["qwen2.rope.scaling.type"][0] == "linear" and kv["qwen2.rope.scaling.factor"][0] == 4.0
    kv = kv_dict(get_arch(config("qwen2", rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32,
                                                        "original_max_position_embeddings": 32})))
    assert kv["qwen2.rope.scaling.type"][0] == "yarn"
    assert kv["qwen2.rope.scaling.original_context_length"][0] == 32
    assert kv["qwen2.rope.scaling.yarn_beta_fast"][0] == 32.0
    assert "qwen2.rope.scaling.type" not in kv_dict(get_arch(config("qwen2")))


def test_model_info_carries_the_hyper_parameters():
    m = get_arch(config()).model_info()
    assert (m.arch, m.n_layer, m.n_head, m.n_head_kv, m.n_expert) == ("llama", N_LAYER, N_HEAD, N_HEAD_KV, 0)
    assert (m.n_embd, m.n_ff, m.n_vocab, m.key_length, m.value_length, m.n_ctx_train) == (
        N_EMBD, N_FF, N_VOCAB, HEAD_DIM, HEAD_DIM, 128)
    assert (m.max_head, m.max_head_kv, m.max_ff) == (N_HEAD, N_HEAD_KV, N_FF)


# ---- the generic matcher (through the qwen2 table, which has no transform) ---------------------------

def _qwen2_source(**kw):
    return FakeSource(random_weights(llama_like_shapes(biases=True, **kw)))


def test_tensors_in_file_order_globals_blocks_rest():
    names = [t.name for t in get_arch(config("qwen2")).tensors(_qwen2_source())]
    i = LLAMA_BLOCK.index("attn_v.weight") + 1  # the table lists the q/k/v biases after the q/k/v weights
    block = LLAMA_BLOCK[:i] + ["attn_q.bias", "attn_k.bias", "attn_v.bias"] + LLAMA_BLOCK[i:]
    assert names == (["token_embd.weight"] + [f"blk.{i}.{n}" for i in range(N_LAYER) for n in block]
                     + ["output_norm.weight", "output.weight"])


def test_tensors_read_nothing_until_loaded():
    src = _qwen2_source()
    out = {t.name: t for t in get_arch(config("qwen2")).tensors(src)}
    t = out["blk.1.attn_v.bias"]
    assert t.origin == "model.layers.1.self_attn.v_proj.bias in fake.safetensors"
    np.testing.assert_array_equal(t.load(), src.tensors["model.layers.1.self_attn.v_proj.bias"].data)
    assert t.shape == (N_HEAD_KV * HEAD_DIM,)


def test_missing_required_tensor_names_it():
    src = _qwen2_source()
    del src.tensors["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(SlimedgeError, match="fake-model: missing tensor model.layers.1.mlp.down_proj.weight, "
                                            "which Qwen2ForCausalLM needs"):
        get_arch(config("qwen2")).tensors(src)


def test_missing_lm_head_hints_at_tying():
    with pytest.raises(SlimedgeError, match="missing tensor lm_head.weight.*tie_word_embeddings"):
        get_arch(config("qwen2")).tensors(_qwen2_source(lm_head=False))


@pytest.mark.parametrize("tie", [True, None])
def test_tied_embeddings_write_no_output(tie):
    cfg = config("qwen2", tie_word_embeddings=tie)
    if tie is None:
        del cfg["tie_word_embeddings"]  # not stated: tied exactly when lm_head.weight is absent
    names = [t.name for t in get_arch(cfg).tensors(_qwen2_source(lm_head=False))]
    assert "output.weight" not in names and "token_embd.weight" in names


def test_stated_tie_drops_a_stored_lm_head_silently(caplog):
    with caplog.at_level(logging.WARNING):
        names = [t.name for t in get_arch(config("qwen2", tie_word_embeddings=True)).tensors(_qwen2_source())]
    assert "output.weight" not in names and "skipping" not in caplog.text


def test_shape_that_contradicts_config_is_refused():
    src = _qwen2_source()
    ref = src.tensors["model.layers.0.self_attn.k_proj.weight"]
    ref.shape = (N_HEAD * HEAD_DIM, N_EMBD)
    with pytest.raises(SlimedgeError, match=r"model.layers.0.self_attn.k_proj.weight has shape \[32, 32\] but "
                                            r"config.json implies \[16, 32\]"):
        get_arch(config("qwen2")).tensors(src)


def test_unused_tensors_warned_and_rotary_buffers_ignored(caplog):
    shapes = llama_like_shapes(biases=True)
    shapes.update({"model.layers.0.self_attn.rotary_emb.inv_freq": (4,), "vision.proj.weight": (2, 2)})
    with caplog.at_level(logging.WARNING):
        get_arch(config("qwen2")).tensors(FakeSource(random_weights(shapes)))
    assert "skipping 1 tensor(s) Qwen2ForCausalLM does not use: vision.proj.weight" in caplog.text


def test_row_group_default_streams_any_rows():
    out = {t.name: t for t in get_arch(config("qwen2")).tensors(_qwen2_source())}
    t = out["blk.0.ffn_up.weight"]
    assert t.row_group == 1 and t.load_rows is not None
    np.testing.assert_array_equal(t.load_rows(3, 7), t.load()[3:7])
    assert out["output_norm.weight"].row_group == 0  # vectors are loaded whole


def test_transform_without_row_group_is_loaded_whole():
    from slimedge.arch.base import Arch

    class Doubling(Arch):  # not registered: no hf_names
        gguf_arch = get_arch(config("qwen2")).gguf_arch
        TENSORS = get_arch(config("qwen2")).TENSORS

        def transform(self, name, x):
            return 2 * x

    arch = Doubling(config("qwen2"), "Doubling")
    src = _qwen2_source()
    out = {t.name: t for t in arch.tensors(src)}
    assert out["blk.0.ffn_up.weight"].row_group == 0 and out["blk.0.ffn_up.weight"].load_rows is None
    np.testing.assert_array_equal(out["blk.0.ffn_up.weight"].load(),
                                  2 * src.tensors["model.layers.0.mlp.up_proj.weight"].data)


def test_a_second_registration_of_an_architecture_name_is_refused():
    from gguf import MODEL_ARCH

    from slimedge.arch import Arch, get_arch

    get_arch({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
              "num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 32, "max_position_embeddings": 64,
              "rms_norm_eps": 1e-5})
    with pytest.raises(RuntimeError, match="LlamaForCausalLM is registered twice"):
        class Impostor(Arch):  # noqa: F841  (defining it is the registration)
            hf_names = ("LlamaForCausalLM",)
            gguf_arch = MODEL_ARCH.LLAMA


def test_families_register_themselves_without_a_list():
    """Every module in slimedge/arch that defines an Arch subclass with hf_names is found by discovery alone."""
    import importlib
    import pkgutil

    import slimedge.arch as pkg
    from slimedge.arch import Arch, supported_architectures

    names = set(supported_architectures())
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"slimedge.arch.{mod.name}")
        for obj in vars(m).values():
            if isinstance(obj, type) and issubclass(obj, Arch) and obj.__module__ == m.__name__:
                assert set(obj.hf_names) <= names, (mod.name, obj.hf_names)
