"""slimedge.arch.gemma3n: the E2B/E4B configs' metadata, the AltUp stacking, the PLE padding, the shared-KV
stand-ins, the multimodal wrapper, and the one-line refusals of what llama.cpp's gemma3n hard-codes."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSORS
from tests.arch.arch_kit import FakeSource, kv_dict, out_by_name, random_weights

from slimedge.arch import get_arch
from slimedge.arch.gemma3n import Gemma3n
from slimedge.errors import SlimedgeError


def e2b(n_layer: int = 30, n_shared: int = 10, **over) -> dict:
    """Gemma 3n E2B's text config as the checkpoint ships it (E4B: 35 layers, 15 shared, hidden 2560)."""
    cfg = dict(architectures=["Gemma3nForConditionalGeneration"], vocab_size=262400,
               vocab_size_per_layer_input=262144, hidden_size=2048, intermediate_size=[8192] * n_layer,
               num_hidden_layers=n_layer, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
               max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
               sliding_window=512, final_logit_softcapping=30.0, hidden_size_per_layer_input=256, laurel_rank=64,
               altup_num_inputs=4, altup_active_idx=0, altup_correct_scale=True, num_kv_shared_layers=n_shared,
               activation_sparsity_pattern=[0.95] * 10 + [0.0] * (n_layer - 10),
               layer_types=["full_attention" if i % 5 == 4 else "sliding_attention" for i in range(n_layer)])
    cfg.update(over)
    return cfg


def test_e2b_and_e4b_metadata_as_llama_cpp_reads_it():
    for n_layer, n_shared in ((30, 10), (35, 15)):
        arch = get_arch(e2b(n_layer, n_shared))
        kv = {k: v for k, (v, _) in kv_dict(arch).items()}
        assert arch.arch == "gemma3n" and isinstance(arch, Gemma3n)
        assert kv["gemma3n.attention.shared_kv_layers"] == n_shared
        assert kv["gemma3n.embedding_length_per_layer_input"] == 256 and kv["gemma3n.altup.num_inputs"] == 4
        assert kv["gemma3n.altup.active_idx"] == 0 and kv["gemma3n.final_logit_softcapping"] == 30.0
        assert kv["gemma3n.feed_forward_length"] == [8192] * n_layer
        assert kv["gemma3n.attention.sliding_window"] == 512
        assert kv["gemma3n.attention.sliding_window_pattern"] == [i % 5 != 4 for i in range(n_layer)]
        assert kv["gemma3n.rope.freq_base"] == 1e6 and kv["gemma3n.rope.freq_base_swa"] == 1e4
        scale = kv["gemma3n.activation_sparsity_scale"]
        assert scale[:10] == pytest.approx([1.6448536] * 10) and all(math.isinf(s) and s < 0 for s in scale[10:])
        info = arch.model_info()  # the shared layers keep no KV cache: llama.cpp keeps it for the first 20
        assert info.n_head_kv_layers == (2,) * 20 + (0,) * n_shared


@pytest.mark.parametrize("over, what", [
    (dict(laurel_rank=32), "laurel_rank"), (dict(altup_num_inputs=2), "altup_num_inputs"),
    (dict(altup_active_idx=1), "altup_active_idx"), (dict(hidden_size_per_layer_input=128), "per_layer_input"),
    (dict(final_logit_softcapping=50.0), "final_logit_softcapping"),
    (dict(num_kv_shared_layers=5), "num_kv_shared_layers"),
    (dict(activation_sparsity_pattern=[0.0] * 30), "activation_sparsity_pattern"),
    (dict(layer_types=["sliding_attention"] * 29 + ["full_attention"]), "layer_types"),
])
def test_refuses_what_llama_cpp_gemma3n_hard_codes(over, what):
    with pytest.raises(SlimedgeError) as err:
        get_arch(e2b(**over))
    assert what in str(err.value) and "\n" not in str(err.value)


N_EMBD, PLE, HEAD, FF, VOCAB, PLE_VOCAB = 32, 256, 16, 48, 40, 36


def tiny_shapes(n_layer: int, shared: range = range(0)) -> dict[str, tuple]:
    """A Gemma 3n checkpoint as transformers 5 saves it (shared-KV layers without k/v/k_norm)."""
    s = {"model.embed_tokens.weight": (VOCAB, N_EMBD), "model.norm.weight": (N_EMBD,),
         "model.embed_tokens_per_layer.weight": (PLE_VOCAB, n_layer * PLE),
         "model.per_layer_model_projection.weight": (n_layer * PLE, N_EMBD),
         "model.per_layer_projection_norm.weight": (PLE,)}
    s.update({f"model.{k}.{i}.weight": (N_EMBD, N_EMBD) for k in ("altup_projections", "altup_unembed_projections")
              for i in range(3)})
    for i in range(n_layer):
        p = f"model.layers.{i}."
        s.update({p + n: (N_EMBD,) for n in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                             "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight",
                                             "post_per_layer_input_norm.weight", "altup.correct_output_scale",
                                             "altup.router_norm.weight", "laurel.post_laurel_norm.weight")})
        s.update({p + "self_attn.q_proj.weight": (2 * HEAD, N_EMBD), p + "self_attn.o_proj.weight": (N_EMBD, 2 * HEAD),
                  p + "self_attn.q_norm.weight": (HEAD,), p + "mlp.gate_proj.weight": (FF, N_EMBD),
                  p + "mlp.up_proj.weight": (FF, N_EMBD), p + "mlp.down_proj.weight": (N_EMBD, FF),
                  p + "per_layer_input_gate.weight": (PLE, N_EMBD), p + "per_layer_projection.weight": (N_EMBD, PLE),
                  p + "altup.correction_coefs.weight": (4, 4), p + "altup.prediction_coefs.weight": (16, 4),
                  p + "altup.modality_router.weight": (4, N_EMBD), p + "laurel.linear_left.weight": (64, N_EMBD),
                  p + "laurel.linear_right.weight": (N_EMBD, 64)})
        if i not in shared:
            s.update({p + "self_attn.k_proj.weight": (HEAD, N_EMBD), p + "self_attn.v_proj.weight": (HEAD, N_EMBD),
                      p + "self_attn.k_norm.weight": (HEAD,)})
    return s


def tiny(n_layer: int, n_shared: int = 0, **over) -> dict:
    cfg = e2b(n_layer, n_shared, vocab_size=VOCAB, vocab_size_per_layer_input=PLE_VOCAB, hidden_size=N_EMBD,
              intermediate_size=FF, num_attention_heads=2, num_key_value_heads=1, head_dim=HEAD,
              activation_sparsity_pattern=[0.95] * min(10, n_layer) + [0.0] * max(0, n_layer - 10))
    cfg.update(over)
    return cfg


def test_tensors_altup_stacked_ple_padded_norms_unchanged():
    arch = get_arch(tiny(2, architectures=["Gemma3nForCausalLM"]))
    w = random_weights(tiny_shapes(2))
    out = out_by_name(arch, FakeSource(w))
    names = list(out)
    assert names[:6] == ["token_embd.weight", "per_layer_token_embd.weight", "per_layer_model_proj.weight",
                         "per_layer_proj_norm.weight", "altup_proj.weight", "altup_unembd_proj.weight"]
    assert names[-1] == "output_norm.weight" and "output.weight" not in out  # tied by default
    block = [n[len("blk.0."):] for n in names if n.startswith("blk.0.")]
    assert block == ["attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_q_norm.weight",
                     "attn_k_norm.weight", "attn_output.weight", "post_attention_norm.weight", "ffn_norm.weight",
                     "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", "post_ffw_norm.weight", "inp_gate.weight",
                     "proj.weight", "post_norm.weight", "altup_correct_coef.weight", "altup_correct_scale.weight",
                     "altup_predict_coef.weight", "altup_router.weight", "altup_router_norm.weight",
                     "laurel_l.weight", "laurel_r.weight", "laurel_post_norm.weight"]
    assert {mt for _, mt, _ in Gemma3n.TENSORS} <= set(MODEL_TENSORS[MODEL_ARCH.GEMMA3N])
    stacked = np.stack([w[f"model.altup_projections.{i}.weight"] for i in range(3)])
    assert np.array_equal(out["altup_proj.weight"].load(), stacked)
    assert np.array_equal(out["altup_proj.weight"].load_rows(20, 70), stacked.reshape(-1, N_EMBD)[20:70])
    ple = out["per_layer_token_embd.weight"]  # padded to vocab_size with row 0 (transformers' lookup)
    got, src = ple.load(), w["model.embed_tokens_per_layer.weight"]
    assert got.shape == (VOCAB, 2 * PLE) and np.array_equal(got[:PLE_VOCAB], src)
    assert all(np.array_equal(got[r], src[0]) for r in range(PLE_VOCAB, VOCAB))
    norm = w["model.layers.1.post_per_layer_input_norm.weight"]  # Gemma 3n norms are x*w: no +1
    assert np.array_equal(out["blk.1.post_norm.weight"].load(), norm)
    scale = w["model.layers.0.altup.correct_output_scale"]
    assert np.array_equal(out["blk.0.altup_correct_scale.weight"].load(), scale)


def test_shared_kv_layers_get_zero_stand_ins_llama_cpp_loads_but_never_reads():
    layers = ["full_attention" if i % 5 == 4 else "sliding_attention" for i in range(21)] + ["full_attention"]
    arch = get_arch(tiny(22, 2, layer_types=layers))
    out = out_by_name(arch, FakeSource(random_weights(tiny_shapes(22, shared=range(20, 22)))))
    for bid in (20, 21):
        assert out[f"blk.{bid}.attn_k.weight"].shape == (HEAD, N_EMBD)
        assert not out[f"blk.{bid}.attn_v.weight"].load().any()
        assert not out[f"blk.{bid}.attn_k_norm.weight"].load().any()
    assert out["blk.19.attn_k.weight"].load().any()
    assert kv_dict(arch)["gemma3n.attention.shared_kv_layers"][0] == 2


def test_multimodal_checkpoint_keeps_the_language_model(caplog):
    w = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
         for k, v in random_weights(tiny_shapes(2)).items()}
    w.update(random_weights({"model.vision_tower.timm_model.stem.conv.weight": (8, 3, 2, 2),
                             "model.audio_tower.conformer.0.norm.weight": (8,),
                             "model.embed_vision.embedding.weight": (4, N_EMBD)}))
    with caplog.at_level(logging.WARNING, logger="slimedge"):
        out = out_by_name(get_arch(tiny(2)), FakeSource(w))
    assert "altup_proj.weight" in out and not [n for n in out if "vision" in n or "audio" in n]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "skipping the vision and audio towers (3 tensors)" in msgs[0]
