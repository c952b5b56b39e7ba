"""Granite MoE end to end: logits, tokenization, every mix vs llama_model_quantize, end of generation; the
fused JetMoE expert tensors split into gate/up; Granite's multipliers; tied embeddings as released; the
shared-expert variant (GraniteMoeShared)."""

from __future__ import annotations

import pytest

from slimedge.gguf_info import read_info
from tests.convert.moe_checks import check_moe_logits
from tests.convert.reference_checks import check_as_converter
from tests.factory import cached_hf_model
from tests.family_checks import (MIXES, check_generation_stops, check_logits, check_mixes, check_tokenization,
                                 convert, eog_ids)

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_granitemoe_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="granitemoe", kquant=True, intermediate_size=256, tied=True)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))  # the harness's tolerances, every position
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    m, shapes = info.metadata, {t.name: tuple(t.shape) for t in info.tensors}
    assert (m["granitemoe.expert_count"], m["granitemoe.expert_used_count"]) == (4, 2)
    assert (m["granitemoe.embedding_scale"], m["granitemoe.logit_scale"]) == (2.0, 2.0)
    assert shapes["blk.0.ffn_up_exps.weight"] == (4, 256, 256) and "output.weight" not in shapes
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, mixes=MIXES + ("MXFP4_MOE",), f32=f32)  # llama.cpp's MoE mix too
    assert types["Q4_K_M"]["token_embd.weight"] == "Q6_K"  # tied: the embedding is the output
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_granitemoe_shared_expert_variant(tmp_path):
    """GraniteMoeShared: the shared expert's fused input_linear split into ffn_gate_shexp/ffn_up_shexp; the file
    is the one llama.cpp's converter writes (same bytes and keys) and its logits equal transformers'."""
    hf = cached_hf_model(arch="granitemoeshared", kquant=True, intermediate_size=256, shared_intermediate_size=512)
    check_logits(hf, tmp_path, types=("f32", "f16"))
    f32 = tmp_path / "model-f32.gguf"
    check_as_converter(hf, f32, tmp_path, pre="starcoder")
    m = read_info(f32).metadata
    assert m["granitemoe.expert_shared_feed_forward_length"] == 512
    types = check_mixes(hf, tmp_path, mixes=("Q4_K_M", "Q2_K"), f32=f32)
    assert types["Q4_K_M"]["blk.0.ffn_up_shexp.weight"] == "Q4_K"
