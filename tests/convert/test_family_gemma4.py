"""Gemma 4 end to end through llama.cpp.

The E2B-style model (tests/factory.py "gemma4"): sliding (head 256) and full (head 512, proportional rope over a
quarter of it) layers alternating with a window of 8 < the 25 sample tokens, 256 per-layer-embedding dims, the
last two layers reusing the KV of layers 2 and 3 with a double-wide MLP, a final soft-cap of 30, and Gemma 4's
tokenizer.json (llama.cpp's "gemma4" BPE). The 31B-style model: attention_k_eq_v (no v_proj on full layers; K is
V), its own kv-head count on full layers, no per-layer embeddings, no soft-cap (0 is written: llama.cpp would
cap at 30 otherwise).

Tolerances: the plain transformers reference lacks ggml's float16 GELU table (see
tests/convert/test_family_gemma.py); tests/convert/gemma_ref.py puts it in for the tight check. The factory scales
the random q/k norm weights by head_dim^-1/4 (Gemma 4 attends with scale 1 over normed q and k: with weights ~1
the scores would be ~sqrt(head_dim) and the attention near-hard, flipping under any rounding).
"""

from __future__ import annotations

import pytest
from tests.convert.gemma_ref import reference_logits, tune_refusal
from tests.factory import cached_hf_model
from tests.family_checks import (check_generation_stops, check_logits, check_mixes, check_tokenization, convert,
                                 eog_ids)

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each

# plain reference (ggml's f16 GELU table not in it): measured f32 1.5e-3 / 1.4e-3 (E2B- / 31B-style), f16 6e-3,
# bf16 3.4e-2, q8_0 0.11: check_logits' defaults hold for the types other than f32
GELU_TOL = {"f32": 1e-2}
TIGHT = 2e-3  # with ggml's GELU in the reference: measured 8.1e-4 (E2B-style), 2.9e-4 (31B-style)
E2B = dict(arch="gemma4", kquant=True)
# 26B-A4B-style: every layer a dense MLP beside 4 experts (top 2) of 256 rows, k_eq_v, no per-layer embeddings
MOE = dict(arch="gemma4", kquant=True, num_hidden_layers=4, num_kv_shared_layers=0, attention_k_eq_v=True,
           num_global_key_value_heads=1, hidden_size_per_layer_input=0, use_double_wide_mlp=False,
           layer_types=["sliding_attention", "full_attention"] * 2, enable_moe_block=True, num_experts=4,
           top_k_experts=2, moe_intermediate_size=256)
K_EQ_V = dict(arch="gemma4", kquant=True, num_hidden_layers=4, num_kv_shared_layers=0, attention_k_eq_v=True,
              num_global_key_value_heads=2, hidden_size_per_layer_input=0, use_double_wide_mlp=False,
              final_logit_softcapping=None, layer_types=["sliding_attention", "full_attention"] * 2)


def _tight(hf, gguf) -> float:
    from tests.convert.convert_util import llama_logits, rel_err, sample_tokens

    tokens = sample_tokens(int(read_info(gguf).metadata["gemma4.vocab_size"]), bos=2)
    return rel_err(llama_logits(gguf, tokens), reference_logits(hf, tokens))


def test_gemma4_e2b_style_end_to_end(tmp_path):
    hf = cached_hf_model(**E2B)
    errs = check_logits(hf, tmp_path, tol=GELU_TOL)
    f32 = tmp_path / "model-f32.gguf"
    assert _tight(hf, f32) < TIGHT, errs
    m = read_info(f32).metadata
    assert m["gemma4.attention.shared_kv_layers"] == 2 and m["gemma4.embedding_length_per_layer_input"] == 256
    assert list(m["gemma4.feed_forward_length"]) == [512] * 4 + [1024] * 2  # double-wide on the shared layers
    assert (m["gemma4.attention.key_length"], m["gemma4.attention.key_length_swa"]) == (512, 256)
    assert (m["gemma4.rope.dimension_count"], m["gemma4.rope.dimension_count_swa"]) == (512, 256)
    assert m["tokenizer.ggml.model"] == "gemma4" and m["tokenizer.ggml.add_space_prefix"] is False
    names = {t.name: t for t in read_info(f32).tensors}
    assert "blk.4.attn_k.weight" not in names and names["per_layer_token_embd.weight"].shape[-1] == 6 * 256
    check_tokenization(hf, f32, samples=_samples())
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["per_layer_token_embd.weight"] != "F32"
    assert eog_ids(hf) == {1, 7}
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), {1, 7})


def test_gemma4_k_eq_v_31b_style(tmp_path):
    hf = cached_hf_model(**K_EQ_V)
    check_logits(hf, tmp_path, types=("f32",), tol=GELU_TOL)
    f32 = tmp_path / "model-f32.gguf"
    assert _tight(hf, f32) < TIGHT
    m = read_info(f32).metadata
    assert list(m["gemma4.attention.head_count_kv"]) == [1, 2, 1, 2] and m["gemma4.final_logit_softcapping"] == 0
    names = {t.name for t in read_info(f32).tensors}
    assert "blk.0.attn_v.weight" in names and "blk.1.attn_v.weight" not in names


def test_gemma4_kv_cache_estimate_matches_llama_cpp(tmp_path):
    """Per-layer key lengths (256 sliding / 512 full), the shared layers' missing caches and — without flash
    attention — the V cache padded to the widest layer: the bytes llama.cpp logs for its two caches."""
    import re
    import subprocess
    import sys

    from slimedge.memory import MiB, kv_bytes_per_layer, layer_cells, padded_v_width, shape_from_gguf

    f16 = convert(cached_hf_model(**E2B), tmp_path / "g4.gguf", "F16")
    shape = shape_from_gguf(f16)
    assert shape.n_head_kv_layers == (1, 1, 1, 1, 0, 0) and padded_v_width(shape) == 512
    for fa in (False, True):
        code = (f"import llama_cpp; llama_cpp.Llama(model_path={str(f16)!r}, n_ctx=1024, n_batch=256, n_ubatch=256, "
                f"n_threads=1, swa_full=False, flash_attn={fa}, verbose=True)")
        log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
        got = sum(float(x) for x in re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", log)) * MiB
        v_pad = 0 if fa else padded_v_width(shape)
        want = sum(kv_bytes_per_layer(shape, layer_cells(shape, i, 1024, 256, False), "f16", "f16", i, v_pad)
                   for i in range(shape.n_layer))
        assert got == pytest.approx(want, rel=1e-3), (fa, got, want, log[-1500:])


def _samples():
    from tests.family_checks import SAMPLES

    return SAMPLES + ["  two  spaces", "\n\n\nnewlines\n", "a\n\nb"]


def test_gemma4_tune_refuses_in_one_line(tmp_path):
    msg = tune_refusal(cached_hf_model(**E2B), tmp_path)
    assert "embedding scaled at run time" in msg and "\n" not in msg, msg


def test_gemma4_multimodal_checkpoint_converts_the_language_model(tmp_path, caplog):
    """Gemma4ForConditionalGeneration (model.language_model.*, a vision tower and its embedder): the text tower's
    file, the same logits as the multimodal model's on text."""
    import logging

    hf = cached_hf_model(arch="gemma4_mm", kquant=True)
    with caplog.at_level(logging.INFO, logger="slimedge"):
        check_logits(hf, tmp_path, types=("f32",), tol=GELU_TOL, options=("--no-mmproj",))  # text model only
    vision = [r for r in caplog.records if "vision tower" in r.getMessage()]
    # logged, not warned: the vision tower is the mmproj's (slimedge.arch.vision.gemma4v)
    assert vision and all(r.levelno == logging.INFO and "mmproj" in r.getMessage() for r in vision)
    f32 = tmp_path / "model-f32.gguf"
    assert _tight(hf, f32) < TIGHT
    names = {t.name for t in read_info(f32).tensors}
    assert "per_layer_token_embd.weight" in names and not [n for n in names if "vision" in n or n.startswith("v.")]


def test_gemma4_moe_26b_a4b_style(tmp_path):
    """The MoE layout (router with its scale, fused gate_up experts, per-expert scale on down, three more norms):
    logits for the float types, every mix against llama_model_quantize. Q8_0's logits are left to check_mixes'
    byte equality: llama.cpp also rounds activations to 8 bits there, and on a random 4-expert router that flips
    the top-2 choice at a few positions (measured max 1.04 of the spread there, 0.06-0.09 elsewhere)."""
    hf = cached_hf_model(**MOE)
    errs = check_logits(hf, tmp_path, types=("f32", "f16", "bf16"), tol=GELU_TOL)  # measured 1e-3, 4e-3, 2.6e-2
    f32 = tmp_path / "model-f32.gguf"
    assert _tight(hf, f32) < TIGHT, errs
    m = read_info(f32).metadata
    assert (m["gemma4.expert_count"], m["gemma4.expert_used_count"], m["gemma4.expert_feed_forward_length"]) == \
        (4, 2, 256)
    shapes = {t.name: tuple(t.shape) for t in read_info(f32).tensors}
    assert shapes["blk.0.ffn_gate_up_exps.weight"] == (4, 512, 256) and shapes["blk.0.ffn_down_exps.scale"] == (4,)
    assert shapes["blk.0.ffn_gate_inp.scale"] == (256,) and "blk.3.post_ffw_norm_2.weight" in shapes
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.ffn_gate_inp.weight"] == "F32"
