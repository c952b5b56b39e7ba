"""Qwen2-MoE end to end: logits, tokenization, every mix vs llama_model_quantize, end of generation; the
shared expert and its sigmoid gate; a tied checkpoint gets the output tensor llama.cpp's qwen2moe requires."""

from __future__ import annotations

import pytest

from slimedge.gguf_info import read_info
from tests.convert.moe_checks import check_moe_logits
from tests.factory import cached_hf_model
from tests.family_checks import (MIXES, check_generation_stops, check_logits, check_mixes, check_tokenization,
                                 convert, eog_ids)

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_qwen2moe_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="qwen2moe", kquant=True, moe_intermediate_size=256, shared_expert_intermediate_size=512)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))  # the harness's tolerances, every position
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    m, shapes = info.metadata, {t.name: tuple(t.shape) for t in info.tensors}
    assert (m["qwen2moe.expert_count"], m["qwen2moe.expert_used_count"]) == (4, 2)
    assert (m["qwen2moe.expert_feed_forward_length"], m["qwen2moe.expert_shared_feed_forward_length"]) == (256, 512)
    assert shapes["blk.1.ffn_gate_inp_shexp.weight"] == (1, 256) and shapes["blk.1.ffn_down_shexp.weight"] == (256, 512)
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, mixes=MIXES + ("MXFP4_MOE",), f32=f32)  # llama.cpp's MoE mix too
    assert types["Q4_K_M"]["blk.0.ffn_gate_inp_shexp.weight"] == "F32"  # one row: never quantized
    assert [types["Q4_K_M"][f"blk.{i}.ffn_down_exps.weight"] for i in (0, 1)] == ["Q4_K", "Q6_K"]
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_tied_qwen2moe_stores_the_output_tensor(tmp_path):
    hf = cached_hf_model(arch="qwen2moe", tied=True)
    check_logits(hf, tmp_path, types=("f32",))
    assert "output.weight" in {t.name for t in read_info(tmp_path / "model-f32.gguf").tensors}


def test_tune_refuses_expert_tensors_in_one_line(tmp_path):
    from click.testing import CliRunner

    from slimedge.cli import main

    hf = cached_hf_model(arch="qwen2moe")
    q = convert(hf, tmp_path / "q.gguf", "Q8_0")
    (tmp_path / "data.txt").write_text("Hello world, a little text to tune on.\n" * 40)
    r = CliRunner().invoke(main, ["tune", str(q), "--teacher", str(hf), "-o", str(tmp_path / "t.gguf"), "--steps", "1",
                                  "--data", str(tmp_path / "data.txt")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "blk.0.ffn_gate_exps.weight holds a mixture of experts' weights" in r.output
    assert len(r.output.strip().splitlines()) == 1
