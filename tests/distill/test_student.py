"""Student derivation from the teacher config, evenly spaced layer mapping, init from teacher weights."""

from __future__ import annotations

import json

import pytest
import torch
from tests.factory import cached_hf_model

from slimedge.distill.config import DistillConfig
from slimedge.distill.student import build_student, layer_map, student_config
from slimedge.errors import SlimedgeError


def test_layer_map_evenly_spaced_with_ends():
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(2, 4) == [0, 3]
    assert layer_map(3, 12) == [0, 6, 11]          # round(5.5) -> 6 (banker's rounding gives 6 too)
    assert layer_map(4, 22) == [0, 7, 14, 21]
    assert layer_map(1, 8) == [7]


@pytest.fixture(scope="module")
def teacher():
    from transformers import AutoConfig, AutoModelForCausalLM

    d = cached_hf_model(arch="llama", num_hidden_layers=4, seed=1)
    return d, AutoConfig.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d)


def test_config_derivation(teacher):
    _, tcfg, _ = teacher
    c = student_config(tcfg, layers=2)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (2, 64, 4, 2)
    assert c.vocab_size == tcfg.vocab_size and c.model_type == tcfg.model_type
    c = student_config(tcfg, layers=3, hidden=32, intermediate=96, heads=2, kv_heads=1)
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == \
        (32, 96, 2, 1, 16)
    with pytest.raises(SlimedgeError, match="multiple of --kv-heads"):
        student_config(tcfg, heads=4, kv_heads=3)


def test_init_copies_mapped_layers(teacher):
    d, tcfg, tmodel = teacher
    student, choice = build_student(tcfg, DistillConfig(teacher=str(d), layers=2), teacher_dir=str(d))
    assert choice.layer_map == [0, 3] and not choice.random
    ts, ss = tmodel.state_dict(), student.state_dict()
    for name, p in ss.items():
        src = name.replace("layers.1.", "layers.3.")
        torch.testing.assert_close(p, ts[src], rtol=0, atol=0)
    assert "init from teacher" in choice.text and "[0, 3]" in choice.text


def test_partial_and_random_init(teacher):
    d, tcfg, tmodel = teacher
    student, choice = build_student(tcfg, DistillConfig(teacher=str(d), layers=2, intermediate=96),
                                    teacher_dir=str(d))
    assert "model.embed_tokens.weight" in choice.copied and "lm_head.weight" in choice.copied
    assert "model.layers.1.mlp.up_proj.weight" in choice.random
    assert "model.layers.1.self_attn.q_proj.weight" in choice.copied
    assert "partly from teacher" in choice.text
    torch.testing.assert_close(student.state_dict()["model.norm.weight"], tmodel.state_dict()["model.norm.weight"])
    student, choice = build_student(tcfg, DistillConfig(teacher=str(d), layers=2, init="random"),
                                    teacher_dir=str(d))
    assert not choice.copied and "random init" in choice.text
    assert not torch.equal(student.state_dict()["model.embed_tokens.weight"],
                           tmodel.state_dict()["model.embed_tokens.weight"])
    with pytest.raises(SlimedgeError, match="--init teacher"):
        build_student(tcfg, DistillConfig(teacher=str(d), hidden=32, init="teacher"), teacher_dir=str(d))


def test_student_config_file_and_vocab_mismatch(teacher, tmp_path):
    d, tcfg, _ = teacher
    good = tcfg.to_dict() | {"num_hidden_layers": 1}
    (tmp_path / "s.json").write_text(json.dumps(good))
    assert student_config(tcfg, student_config_path=str(tmp_path / "s.json")).num_hidden_layers == 1
    (tmp_path / "bad.json").write_text(json.dumps(good | {"vocab_size": tcfg.vocab_size + 7}))
    with pytest.raises(SlimedgeError, match="vocab_size"):
        student_config(tcfg, student_config_path=str(tmp_path / "bad.json"))


def test_tied_teacher_gives_tied_student():
    from transformers import AutoConfig

    d = cached_hf_model(arch="qwen2", tied=True)
    tcfg = AutoConfig.from_pretrained(d)
    student, choice = build_student(tcfg, DistillConfig(teacher=str(d), layers=1), teacher_dir=str(d))
    assert student.lm_head.weight is student.model.embed_tokens.weight
    assert not choice.random and choice.layer_map == [1]
