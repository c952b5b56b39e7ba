"""``slimedge draft``: a draft distilled from the demo teacher for acceptance, converted, and measured through
llama.cpp (GGUFDraft in llama-cpp-python's draft-model hook); it beats a random-init draft of the same size;
a draft of another vocabulary is refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.distill.draft import DraftConfig, distill_config, heldout_prompts, make_draft, measure
from slimedge.errors import SlimedgeError
from tests.factory import cached_hf_model

TEACHER = "slimedge/data/demo-teacher"  # 4 layers, hidden 256, byte-level BPE of 4096 tokens
SMALL = ["--layers", "1", "--steps", "12", "--batch-size", "4", "--prompt-len", "24", "--gen-len", "40",
         "--eval-prompts", "3", "--n-gen", "40", "-t", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from slimedge.demo import corpus

    path = tmp_path_factory.mktemp("draft-data") / "train.txt"
    path.write_text(corpus.train_text()[:200_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("draft-cmd") / "draft"
    res = CliRunner().invoke(main, ["draft", TEACHER, "--data", str(data), "-o", str(out), "--quiet", *SMALL])
    assert res.exit_code == 0, res.output
    return out, res.output


def _tokens(path):
    from slimedge.gguf_info import read_info

    return list(read_info(path).metadata["tokenizer.ggml.tokens"])


def test_recipes_map_onto_distill():
    cfg = DraftConfig(target=TEACHER, data="d", output="o", steps=10, batch_size=4)
    acc = distill_config(cfg, n_layers=4, student_out="s")
    assert (acc.response, acc.do_sample, acc.loss, acc.layers) == (True, False, "fkl", 1)  # greedy continuations
    assert acc.response_samples == 40 and acc.seq_len == cfg.prompt_len + cfg.gen_len
    plain = distill_config(DraftConfig(target=TEACHER, data="d", output="o", recipe="fkl"), 4, "s")
    assert (plain.response, plain.on_policy, plain.loss) == (False, 0.0, "fkl")
    with pytest.raises(SlimedgeError, match="--recipe"):
        DraftConfig(target=TEACHER, data="d", output="o", recipe="nope").validate()


def test_measure_same_model_at_q8(tmp_path, data):
    """The target's own Q8_0 drafting for its F16: nearly every proposal kept, the output unchanged."""
    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec

    f16 = convert(TEACHER, tmp_path / "t-f16.gguf", QuantSpec("F16")).out
    q8 = convert(TEACHER, tmp_path / "t-q8.gguf", QuantSpec("Q8_0")).out
    prompts = heldout_prompts(DraftConfig(target=TEACHER, data=str(data), output="o", eval_prompts=2, prompt_len=16))
    assert len(prompts) == 2 and all(len(p) == 16 for p in prompts)
    m = measure(f16, {"Q8_0": q8}, prompts, n_gen=24, draft_max=6, threads=1)["Q8_0"]
    assert m["same_output"] and m["acceptance"] > 0.8 and m["accepted_per_step"] > 2
    assert m["target_steps"] < 2 * 24 / 2  # fewer target steps than tokens


@pytest.mark.slow
def test_distilled_draft_vocabulary_and_acceptance(distilled):
    out, text = distilled
    report = json.loads((out / "draft_report.json").read_text())
    assert set(report["measured"]) == {"Q8_0", "Q4_K_M"}
    target_tokens = None
    for name, m in report["measured"].items():
        gguf = out / m["gguf"]
        assert gguf.is_file()
        if target_tokens is None:
            from slimedge.convert import convert
            from slimedge.quant.mixes import QuantSpec

            target_tokens = _tokens(convert(TEACHER, out.parent / "t.gguf", QuantSpec("Q8_0")).out)
        assert _tokens(gguf) == target_tokens  # the target's vocabulary, token for token
        assert m["same_output"]  # greedy output with the draft is the target's
        assert 0 < m["acceptance"] <= 1 and m["proposed"] > 0
        assert f"{name}: acceptance {m['acceptance']:.1%}" in text
    assert report["distill"]["student_params"] < report["distill"]["teacher_params"]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()  # `build --draft DIR` takes it
    assert report["best"] in report["measured"] and f"fastest: {report['best']}" in text


@pytest.mark.slow
def test_trained_draft_beats_random_init(distilled, data, tmp_path):
    """A draft of the same shape with random weights (given with --draft-model) is kept far less often."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out, _ = distilled
    trained = json.loads((out / "draft_report.json").read_text())["measured"]["Q8_0"]["acceptance"]
    torch.manual_seed(0)
    rnd = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
    rnd.save_pretrained(tmp_path / "random")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(out / f, tmp_path / "random" / f)
    res = make_draft(DraftConfig(target=TEACHER, data=str(data), output=str(tmp_path / "measured"),
                                 draft_model=str(tmp_path / "random"), types=("Q8_0",), prompt_len=24,
                                 eval_prompts=3, n_gen=40, threads=1))
    base = res.report["measured"]["Q8_0"]
    assert base["same_output"]
    assert trained > base["acceptance"] + 0.2, (trained, base["acceptance"])
    assert (tmp_path / "measured" / "draft-q8_0.gguf").is_file()


def test_other_vocabulary_refused_in_one_line(data, tmp_path):
    other = cached_hf_model(arch="llama")  # a 1000-token BPE tokenizer, not the teacher's
    res = CliRunner().invoke(main, ["draft", TEACHER, "--data", str(data), "-o", str(tmp_path / "d"),
                                    "--draft-model", str(other), "--quiet"])
    assert res.exit_code != 0
    err = res.output.strip()
    assert err.startswith("Error: ") and len(err.splitlines()) == 1, err
    assert "vocabulary differs" in err and str(other) in err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_auto_mix_draft_within_q4_k_m_size(distilled, data, tmp_path):
    """--type AUTO: the draft's quality-driven mix at Q4_K_M's size (sensitivities on --data), written and
    measured like the llama.cpp types: no larger than the Q4_K_M draft, greedy output still the target's."""
    out, _ = distilled
    res = make_draft(DraftConfig(target=TEACHER, data=str(data), output=str(tmp_path / "auto"), draft_model=str(out),
                                 types=("AUTO", "Q4_K_M"), prompt_len=24, eval_prompts=2, n_gen=24, threads=1))
    m = res.report["measured"]
    assert m["AUTO"]["same_output"] and m["AUTO"]["gguf"] == "draft-auto.gguf"
    from slimedge.gguf_info import read_info

    auto, q4 = (read_info(tmp_path / "auto" / f) for f in ("draft-auto.gguf", "draft-q4_k_m.gguf"))
    # the budget is tensor data (the file also holds the mix's slimedge.mix.* description)
    assert 0 < sum(t.n_bytes for t in auto.tensors) <= sum(t.n_bytes for t in q4.tensors)
    assert m["AUTO"]["size"] > 0
    types = {t.type for t in auto.tensors}
    assert len(types) > 2  # a mix of types, not one
