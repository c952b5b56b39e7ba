"""The float teacher read one decoder layer at a time for ``tune --mode blockwise`` (slimedge.tune.stream).

Checked: outside :meth:`StreamedTeacher.layer` no decoder-layer weight is in memory, inside it only that layer's,
equal to what ``from_pretrained`` loads (untied and tied heads, bf16 checkpoints widened exactly, sharded ones);
the embedding and head are read only where needed; the model's own tail on the last layer's output gives the whole
model's log-probabilities bit for bit (tied heads, Granite's logit scaling); block-wise tuning with the streamed
teacher writes the same bytes and reports the same held-out KL as with the teacher loaded whole, with and without
KL steps after it, across families; a checkpoint that cannot be streamed (a name the model does not have, pickles
only) falls back to the whole teacher, saying why; the CLI's summary says the teacher was streamed.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from tests.distill.distill_kit import corpus_text
from tests.factory import cached_hf_model, make_hf_model

from slimedge.convert import convert
from slimedge.quant.mixes import QuantSpec


def _whole(hf):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()


def _open(hf):
    from transformers import AutoConfig

    from slimedge.tune.stream import open_streamed

    cfg = AutoConfig.from_pretrained(hf)
    return open_streamed(str(hf), cfg, cfg.num_hidden_layers, torch.device("cpu"))


def _real(module) -> list[str]:
    return [n for n, p in module.named_parameters() if not p.is_meta]


@pytest.mark.parametrize("kind", ["untied", "tied-bf16", "sharded"])
def test_one_layer_in_memory_at_a_time_with_from_pretrained_weights(tmp_path, kind):
    tied = kind == "tied-bf16"
    hf = make_hf_model(tmp_path / "m", tied=tied, dtype="bfloat16" if tied else "float32", num_hidden_layers=3,
                       shard_size="200KB" if kind == "sharded" else None)
    assert (hf / "model.safetensors.index.json").is_file() == (kind == "sharded")
    st, ref = _open(hf), _whole(hf)
    assert st is not None and st.streamed
    assert _real(st.model) == []  # the skeleton: no weights until asked
    want = ref.state_dict()
    with st.rest():
        rest = {n: p for n, p in st.model.state_dict().items() if ".layers." not in n}
        assert rest and all(torch.equal(p, want[n]) for n, p in rest.items())
        assert _real(st.layers) == [] and set(_real(st.model)) == {n for n, _ in st.model.named_parameters()
                                                                  if ".layers." not in n}
        assert (st.model.lm_head.weight is st.model.model.embed_tokens.weight) == tied
    assert _real(st.model) == []
    for i in range(3):
        with st.layer(i) as layer:
            assert layer is st.layers[i]
            assert {n.split(".")[0] for n in _real(st.layers)} == {str(i)} and len(_real(st.model)) == len(_real(layer))
            for n, p in layer.state_dict().items():
                assert torch.equal(p, want[f"model.layers.{i}.{n}"]), n
        assert _real(st.model) == []


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("granite", False)])
def test_tail_on_the_last_layer_output_is_the_whole_models_logprobs(tmp_path, arch, tied):
    from slimedge.tune.blockwise import _run, first_layer_input
    from slimedge.tune.teacher import TeacherLogprobs

    hf = cached_hf_model(arch=arch, tied=tied)
    st, ref = _open(hf), _whole(hf)
    x = torch.randint(0, ref.config.vocab_size, (2, 17))
    with st.rest(leave="head"):
        assert st.model.lm_head.weight.is_meta != tied  # untied: no head is read to form the first inputs
        assert not st.model.model.embed_tokens.weight.is_meta
        h, kw = first_layer_input(st.model, st.layers, x)
    for i in range(len(st.layers)):
        with st.layer(i) as layer, torch.no_grad():
            h = _run(layer, h, kw)
    with st.rest(leave="embedding"):
        assert st.model.model.embed_tokens.weight.is_meta != tied  # nor an embedding for the tail
        assert not st.model.lm_head.weight.is_meta
        got = st.logprobs(h)
    with torch.no_grad():
        want = TeacherLogprobs(ref, ref.config, False, None)(x)
    assert torch.equal(got, want)


def test_checkpoints_that_cannot_be_streamed_fall_back_saying_why(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    hf = cached_hf_model(arch="llama")
    renamed = shutil.copytree(hf, tmp_path / "renamed")
    sd = load_file(renamed / "model.safetensors")
    sd["model.final_norm.weight"] = sd.pop("model.norm.weight")
    save_file(sd, renamed / "model.safetensors", metadata={"format": "pt"})
    pickled = shutil.copytree(hf, tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save({}, pickled / "pytorch_model.bin")
    with caplog.at_level(logging.INFO, logger="slimedge.tune.stream"):
        assert _open(renamed) is None and _open(pickled) is None
    said = [r.getMessage() for r in caplog.records]
    assert any("model.norm.weight is not in the checkpoint" in m for m in said)
    assert any("pickle" in m for m in said)


@pytest.fixture(scope="module")
def q4km(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    hf = cached_hf_model(arch="llama", kquant=True)
    (d / "train.txt").write_text(corpus_text(40_000))
    convert(hf, d / "q4km.gguf", QuantSpec("Q4_K_M"), overwrite=True)
    return hf, d, d / "q4km.gguf"


@pytest.mark.parametrize("steps", [0, 2])
def test_streamed_blockwise_writes_what_the_whole_teacher_does(q4km, tmp_path, steps):
    from slimedge.tune import TuneConfig, tune

    hf, d, q = q4km
    got = {}
    for stream in (True, False):
        out = tmp_path / f"{stream}.gguf"
        r = tune(TuneConfig(gguf=str(q), teacher=str(hf), data=str(d / "train.txt"), output=str(out), seq_len=64,
                            batch_size=4, threads=1, overwrite=True, eval_blocks=6, mode="blockwise", steps=steps,
                            block_iters=8, block_samples=8, stream_teacher=stream))
        assert r.streamed == stream
        got[stream] = (out.read_bytes(), r.kl_before, r.kl_after, r.block_errors)
    assert got[True] == got[False]
    assert got[True][0] != q.read_bytes()  # tuning changed the file


def test_config_json_of_the_skeleton_is_the_teachers(q4km):
    """The skeleton is built from the teacher's own config (its attention kernel and rope tables included)."""
    hf, _, _ = q4km
    st = _open(hf)
    cfg = json.loads((hf / "config.json").read_text())
    assert st.model.config.hidden_size == cfg["hidden_size"]
    assert torch.equal(st.model.model.rotary_emb.inv_freq, _whole(hf).model.rotary_emb.inv_freq)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "phi3", "granite", "olmo2", "smollm3"])
def test_streamed_blockwise_is_the_whole_teachers_across_families(tmp_path, arch):
    """Biases (Qwen2), fused projections (Phi-3), logit scaling (Granite), post-norms (OLMo 2), no-rope layers
    (SmolLM3): the streamed teacher writes the same bytes and KL as the whole one."""
    from slimedge.tune import TuneConfig, tune

    hf = cached_hf_model(arch=arch, kquant=True)
    (tmp_path / "train.txt").write_text(corpus_text(40_000))
    q = tmp_path / "q.gguf"
    convert(hf, q, QuantSpec("Q4_K_M"), overwrite=True)
    got = []
    for stream in (True, False):
        out = tmp_path / f"{stream}.gguf"
        r = tune(TuneConfig(gguf=str(q), teacher=str(hf), data=str(tmp_path / "train.txt"), output=str(out),
                            seq_len=64, batch_size=4, threads=1, overwrite=True, eval_blocks=4, mode="blockwise",
                            steps=0, block_iters=4, block_samples=8, stream_teacher=stream))
        assert r.streamed == stream
        got.append((out.read_bytes(), r.kl_before, r.kl_after))
    assert got[0] == got[1]


def test_cli_blockwise_says_the_teacher_was_streamed(q4km, tmp_path):
    from click.testing import CliRunner

    from slimedge.cli import main

    hf, d, q = q4km
    out = tmp_path / "t.gguf"
    r = CliRunner().invoke(main, ["tune", str(q), "--teacher", str(hf), "--data", str(d / "train.txt"), "-o", str(out),
                                  "--mode", "blockwise", "--steps", "0", "--block-iters", "2", "--block-samples", "8",
                                  "--seq-len", "64", "-t", "1"])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size == q.stat().st_size
    assert r.output.strip().splitlines()[-1].endswith("teacher streamed layer by layer")
