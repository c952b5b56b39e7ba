"""Students of each dense family: built from a teacher of that family (mapped layers, the family's extra
norms copied, its config extras kept), distilled for a couple of steps and converted — llama.cpp's logits
of the student equal transformers'.

Gemma 2 / 3 students take three of the teacher's layers (0, 2 and the last): their sliding/global layer types
follow the mapped teacher layers (a pattern unlike llama.cpp's default for three layers, so the converter
writes it out), and the F32 tolerance is Gemma's (tests/convert/convert_util.py): llama.cpp's CPU GELU goes
through a float16 table, so the plain comparison gets GELU_TOL and the one with that rounding put into the
transformers reference gets GELU_TIGHT."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from tests.convert.convert_util import GELU_TIGHT, GELU_TOL, gelu_f32_err
from tests.factory import cached_hf_model
from tests.family_checks import check_logits

from slimedge.cli import main
from slimedge.distill.config import DistillConfig
from slimedge.distill.student import build_student
from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # distills and runs llama.cpp

_SANDWICH = ("input_layernorm.weight", "post_attention_layernorm.weight", "pre_feedforward_layernorm.weight",
             "post_feedforward_layernorm.weight")

# family -> (teacher overrides, student layers, the family's extra tensors of one layer, config keys kept)
FAMILIES = {
    "qwen3": ({"num_hidden_layers": 4}, 2, ("self_attn.q_norm.weight", "self_attn.k_norm.weight"), ("head_dim",)),
    "smollm3": ({"num_hidden_layers": 8}, 4, (), ("no_rope_layer_interval",)),
    "granite": ({"num_hidden_layers": 4}, 2, (), ("embedding_multiplier", "residual_multiplier",
                                                  "attention_multiplier", "logits_scaling")),
    "olmo2": ({"num_hidden_layers": 4}, 2, ("self_attn.q_norm.weight", "self_attn.k_norm.weight",
                                            "post_attention_layernorm.weight", "post_feedforward_layernorm.weight"), ()),
    # the factory's Gemma 2 soft-caps attention and final logits (the distill loss chains through the cap)
    "gemma2": ({"num_hidden_layers": 4}, 3, _SANDWICH,
               ("head_dim", "sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping",
                "final_logit_softcapping")),
    "gemma3": ({}, 3, _SANDWICH + ("self_attn.q_norm.weight", "self_attn.k_norm.weight"),
               ("head_dim", "sliding_window", "query_pre_attn_scalar", "rope_parameters")),
    # the dense families of issue 18 (OLMo 3 keeps its mapped layers' sliding/full kinds)
    "olmo3": ({}, 2, ("self_attn.q_norm.weight", "self_attn.k_norm.weight", "post_attention_layernorm.weight",
                      "post_feedforward_layernorm.weight"), ("sliding_window", "rope_parameters")),
    "ministral3": ({"num_hidden_layers": 4}, 2, (), ("head_dim", "rope_parameters")),
    "exaone4": ({"num_hidden_layers": 4, "layer_types": ["full_attention"] * 4}, 2,
                ("self_attn.q_norm.weight", "self_attn.k_norm.weight"), ()),
    "ernie4_5": ({"num_hidden_layers": 4}, 2, (), ("head_dim",)),
    "stablelm": ({"num_hidden_layers": 4}, 2, ("self_attn.q_proj.bias",), ("rope_parameters",)),
    "starcoder2": ({"num_hidden_layers": 4}, 2, ("self_attn.q_proj.bias",), ("sliding_window",)),
    # GPT-NeoX (gpt_neox.layers.N, head "embed_out" in the checkpoint) and GPT-2 (transformer.h.N): their
    # block tensors are checked through LAYER_TENSOR below
    "gptneox": ({"num_hidden_layers": 4}, 2, (), ("use_parallel_residual",)),
    "gpt2": ({"num_hidden_layers": 4}, 2, (), ("activation_function",)),
}
# family -> largest F32 error (relative to the logits' std) of llama.cpp vs transformers (GELU families: the
# float16 GELU table, as tests/convert/test_family_classics.py measures)
F32_TOL = {"gemma2": GELU_TOL["f32"], "gemma3": GELU_TOL["f32"], "starcoder2": 3e-3,
           "gptneox": 3e-3, "gpt2": 3e-3}
# family -> a block tensor of student layer {i} (for the families whose blocks are not model.layers.N)
LAYER_TENSOR = {"gptneox": "gpt_neox.layers.{i}.attention.query_key_value.weight",
                "gpt2": "transformer.h.{i}.attn.c_attn.weight"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_student_of_family_builds_distills_and_converts(family, tmp_path, corpus_file):
    from transformers import AutoConfig
    from safetensors.torch import load_file

    overrides, n_s, extras, keys = FAMILIES[family]
    teacher = cached_hf_model(arch=family, seed=2, **overrides)
    tcfg = AutoConfig.from_pretrained(teacher)
    student, choice = build_student(tcfg, DistillConfig(teacher=str(teacher), layers=n_s), teacher_dir=str(teacher))
    assert not choice.random and choice.layer_map[-1] == tcfg.num_hidden_layers - 1
    tw, sw = load_file(teacher / "model.safetensors"), student.state_dict()
    for i, j in enumerate(choice.layer_map):
        for name in extras:
            torch.testing.assert_close(sw[f"model.layers.{i}.{name}"], tw[f"model.layers.{j}.{name}"], rtol=0, atol=0)
    for key in keys:
        assert getattr(choice.config, key) == getattr(tcfg, key), key
    if family in LAYER_TENSOR:
        fmt = LAYER_TENSOR[family]
        for i, j in enumerate(choice.layer_map):
            torch.testing.assert_close(sw[fmt.format(i=i)], tw[fmt.format(i=j)], rtol=0, atol=0)
    if family == "gptneox":  # the head comes from the checkpoint's embed_out
        torch.testing.assert_close(sw["embed_out.weight" if "embed_out.weight" in sw else "lm_head.weight"],
                                   tw["embed_out.weight"], rtol=0, atol=0)
    if family == "smollm3":  # llama.cpp's fixed pattern for the student's own depth: layer 3 skips rope
        assert choice.config.no_rope_layers == [1, 1, 1, 0]
    if family.startswith("gemma"):  # each layer slides or not as its teacher layer did; the last is global
        assert choice.layer_map == [0, 2, tcfg.num_hidden_layers - 1]
        assert choice.config.layer_types == [tcfg.layer_types[j] for j in choice.layer_map]
        assert choice.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]

    out = tmp_path / "student"
    res = CliRunner().invoke(main, ["distill"] + [str(a) for a in ("--teacher", teacher, "--data", corpus_file,
                                                                   "-o", out, "--layers", n_s, "--steps", 2,
                                                                   "--seq-len", 32, "--batch-size", 4,
                                                                   "--chunk-size", 32, "--quiet")])
    assert res.exit_code == 0, res.output
    assert AutoConfig.from_pretrained(out).num_hidden_layers == n_s  # GPT-2 saves it as n_layer
    tol = F32_TOL.get(family, 2e-5)
    assert check_logits(out, tmp_path, types=("f32",), tol={"f32": tol})["f32"] < tol
    if family.startswith("gemma"):
        f32 = tmp_path / "model-f32.gguf"
        m = read_info(f32).metadata
        assert list(m[f"{family}.attention.sliding_window_pattern"]) == [True, True, False]
        assert m[f"{family}.block_count"] == n_s and m[f"{family}.attention.sliding_window"] == 8
        assert gelu_f32_err(out, f32) < GELU_TIGHT


def test_gemma3_student_without_a_global_layer_is_warned_about(caplog):
    """Gemma 3 1B's 26 layers are global at 5, 11, 17, 23: a 3-layer student maps 0, 12, 25 — all sliding."""
    import logging

    from transformers import Gemma3TextConfig

    tcfg = Gemma3TextConfig(num_hidden_layers=26, sliding_window=512, vocab_size=1000, hidden_size=64,
                            intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    with caplog.at_level(logging.WARNING, logger="slimedge"):
        cfg4 = build_student(tcfg, DistillConfig(teacher="t", layers=4, init="random"))[1].config
        assert not caplog.records
        cfg3 = build_student(tcfg, DistillConfig(teacher="t", layers=3, init="random"))[1].config
    assert cfg3.layer_types == ["sliding_attention"] * 3
    assert cfg4.layer_types == ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    assert len(caplog.records) == 1 and "window of 512" in caplog.records[0].getMessage()


def test_phi_teacher_is_refused_in_one_line(tmp_path, corpus_file):
    """Phi-2's output head has a bias, which the distillation losses do not model: refused, naming the family."""
    teacher = cached_hf_model(arch="phi", seed=2)
    res = CliRunner().invoke(main, ["distill", "--teacher", str(teacher), "--data", str(corpus_file), "-o",
                                    str(tmp_path / "s"), "--layers", "1", "--steps", "1", "--quiet"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "a phi model's head has one" in res.output and len(res.output.strip().splitlines()) == 1, res.output
