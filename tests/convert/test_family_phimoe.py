"""PhiMoE (Phi-3.5-MoE) end to end. llama.cpp computes this family differently from transformers: its
phimoe graph (Phi-3's) normalizes with RMSNorm plus bias where transformers uses LayerNorm, and routes by a
softmax over the renormalized top-2 where transformers uses PhiMoE's "sparsemixer". So logits parity is with
what llama.cpp's own converter writes for the same checkpoint (same tensor bytes, same keys, identical
llama.cpp logits), and the test shows transformers' outputs really differ. Then tokenization, every mix vs
llama_model_quantize and end of generation as for every family."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimedge.gguf_info import read_info
from tests.convert.convert_util import hf_logits, llama_logits, rel_err
from tests.convert.reference_checks import check_as_converter
from tests.factory import cached_hf_model, copy_model
from tests.family_checks import MIXES, TOL, check_generation_stops, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # runs llama.cpp's converter, every mix and llama.cpp on each


def test_phimoe_as_llama_cpps_converter_writes_it(tmp_path):
    # 16 heads of 16 over hidden 256 (the factory's long/short rope factors are for head_dim 16)
    hf = copy_model(cached_hf_model(arch="phimoe", kquant=True, intermediate_size=256, num_attention_heads=16,
                                    num_key_value_heads=4), tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["architectures"] == ["PhimoeForCausalLM"]  # transformers 5's name; the Hub's config says:
    cfg["architectures"] = ["PhiMoEForCausalLM"]  # (the converter knows only this one)
    (hf / "config.json").write_text(json.dumps(cfg))
    f32 = convert(hf, tmp_path / "model-f32.gguf", "f32")
    tokens, got = check_as_converter(hf, f32, tmp_path, pre="default")
    assert rel_err(got, hf_logits(hf, tokens)) > 0.1  # llama.cpp's graph is not transformers' (see above)
    f16 = llama_logits(convert(hf, tmp_path / "model-f16.gguf", "f16"), tokens)
    assert rel_err(f16, got) < TOL["f16"]
    m = read_info(f32).metadata
    assert (m["phimoe.expert_count"], m["phimoe.expert_used_count"]) == (4, 2)
    assert {t.name for t in read_info(f32).tensors} >= {"output.bias", "output_norm.bias", "blk.0.attn_norm.bias",
                                                         "rope_factors_long.weight", "blk.1.attn_output.bias"}
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, mixes=MIXES + ("MXFP4_MOE",), f32=f32)  # llama.cpp's MoE mix too
    assert types["Q4_K_M"]["output.bias"] == "F32" and types["Q4_K_M"]["blk.0.ffn_gate_inp.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
    assert np.isfinite(got).all()
