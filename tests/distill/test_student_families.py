"""Students of each dense family: built from a teacher of that family (mapped layers, the family's extra
norms copied, its config extras kept), distilled for a couple of steps and converted — llama.cpp's logits
of the student equal transformers'."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from factory import cached_hf_model
from family_checks import check_logits

from slimedge.cli.distill import cli
from slimedge.distill.config import DistillConfig
from slimedge.distill.student import build_student

pytestmark = pytest.mark.slow  # distills and runs llama.cpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))  # family_checks' convert_util

# family -> (teacher overrides, student layers, the family's extra tensors of one layer, config keys kept)
FAMILIES = {
    "qwen3": ({"num_hidden_layers": 4}, 2, ("self_attn.q_norm.weight", "self_attn.k_norm.weight"), ("head_dim",)),
    "smollm3": ({"num_hidden_layers": 8}, 4, (), ("no_rope_layer_interval",)),
    "granite": ({"num_hidden_layers": 4}, 2, (), ("embedding_multiplier", "residual_multiplier",
                                                  "attention_multiplier", "logits_scaling")),
    "olmo2": ({"num_hidden_layers": 4}, 2, ("self_attn.q_norm.weight", "self_attn.k_norm.weight",
                                            "post_attention_layernorm.weight", "post_feedforward_layernorm.weight"), ()),
}


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
    if family == "smollm3":  # llama.cpp's fixed pattern for the student's own depth: layer 3 skips rope
        assert choice.config.no_rope_layers == [1, 1, 1, 0]

    out = tmp_path / "student"
    res = CliRunner().invoke(cli, [str(a) for a in ("--teacher", teacher, "--data", corpus_file, "-o", out,
                                                     "--layers", n_s, "--steps", 2, "--seq-len", 32,
                                                     "--batch-size", 4, "--chunk-size", 32, "--quiet")])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == n_s
    assert check_logits(out, tmp_path, types=("f32",))["f32"] < 2e-5
