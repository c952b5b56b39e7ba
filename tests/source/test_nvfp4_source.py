"""NVFP4 checkpoints (ModelOpt and compressed-tensors layouts) as sources.

Read as floats, every weight equals the checkpoint dequantized as ModelOpt defines it (E2M1 code x E4M3 scale
per 16 values x per-tensor scale), for any row range. With a float ``--type`` the NVFP4 weights pass through
as GGML NVFP4 with their per-tensor ``.scale`` / ``.input_scale`` tensors, as llama.cpp's converter writes
them: every tensor of the file (types, shapes, bytes; Llama's q/k rows reordered for rope included) equals
what the pinned sdist's ``convert_hf_to_gguf.py`` writes for the same checkpoint, and llama.cpp's logits
follow transformers' on the dequantized weights (within 0.2 of the logits' spread: llama.cpp multiplies
NVFP4 weights with Q8_0-quantized activations, measured 0.106). A quantized ``--type`` dequantizes first.
MoE (a Qwen3-MoE whose experts are NVFP4 one by one, routers float): each layer's experts pass through stacked as
one NVFP4 tensor with per-expert ``.scale`` / ``.input_scale`` vectors, byte-identical to the converter's merge,
and the logits meet tests/convert/moe_checks.py's Q8_0 criterion (median position, top-1 agreement).
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from slimedge.arch.moe import Part, StackedRef
from slimedge.source.fp4src import NVFP4Ref
from slimedge.source.hf import HFSource
from tests.factory import cached_hf_model
from tests.family_checks import TOL, convert
from tests.llama_src import llama_cpp_convert
from tests.source.qckpt import gguf_tensors, logits_err, moe_logits, write_nvfp4


@pytest.fixture(scope="module", params=[False, True], ids=["modelopt", "compressed-tensors"])
def nvfp4(request, tmp_path_factory):
    return write_nvfp4(cached_hf_model(arch="llama"), tmp_path_factory.mktemp("nvfp4"), compressed=request.param)


def test_rows_read_as_the_dequantized_weights(nvfp4, backend):
    q, deq = nvfp4
    want = load_file(deq / "model.safetensors")
    src = HFSource(q)
    refs = {n: r for n, r in src.tensors.items() if isinstance(r, NVFP4Ref)}
    assert len(refs) == 2 * 7 and set(src.tensors) == set(want)  # every linear layer; scales consumed
    for name, ref in refs.items():
        assert np.array_equal(ref.load(), want[name]), name
        buf = np.empty(ref.shape[-1] * 5, np.float32)
        assert np.array_equal(ref.load_rows(3, 8, buf), want[name][3:8]), name
    q_proj = refs["model.layers.0.self_attn.q_proj.weight"]
    extra = dict(q_proj.extra_tensors("blk.0.attn_q.weight"))
    assert set(extra) == {"blk.0.attn_q.scale", "blk.0.attn_q.input_scale"}
    assert extra["blk.0.attn_q.scale"].shape == (1,)


def test_float_type_keeps_nvfp4_and_quantized_type_dequantizes(nvfp4, tmp_path):
    q, _ = nvfp4
    kept = gguf_tensors(convert(q, tmp_path / "f16.gguf", "F16"))
    assert kept["blk.1.ffn_down.weight"][0] == "NVFP4" and kept["blk.1.ffn_down.scale"][0] == "F32"
    assert kept["token_embd.weight"][0] == "F16"
    requant = gguf_tensors(convert(q, tmp_path / "q8.gguf", "Q8_0"))
    assert requant["blk.1.ffn_down.weight"][0] == "Q8_0" and not any(n.endswith("scale") for n in requant)


@pytest.mark.slow
def test_same_file_as_llama_cpp_converter_and_logits(nvfp4, tmp_path):
    q, deq = nvfp4
    ours = gguf_tensors(convert(q, tmp_path / "ours.gguf", "F32"))
    theirs = gguf_tensors(llama_cpp_convert(q, tmp_path / "theirs.gguf"))
    assert sorted(ours) == sorted(theirs)
    assert sum(t == "NVFP4" for t, _, _ in theirs.values()) == 14
    for name, (typ, shape, data) in theirs.items():
        assert ours[name][:2] == (typ, shape) and ours[name][2] == data, name
    assert logits_err(q, deq, tmp_path / "ours2.gguf", "F32") < 0.2


# ---- MoE: per-expert NVFP4 weights stacked into one NVFP4 tensor per layer and projection ----------------------

@pytest.fixture(scope="module")
def nvfp4_moe(tmp_path_factory):
    """A tiny Qwen3-MoE (4 experts) with every linear layer NVFP4 but the routers, as ModelOpt ships MoE models."""
    return write_nvfp4(cached_hf_model(arch="qwen3moe"), tmp_path_factory.mktemp("nvfp4moe"), keep=("mlp.gate.weight",))


def test_moe_experts_pass_through_stacked(nvfp4_moe, tmp_path):
    q, _ = nvfp4_moe
    src = HFSource(q)
    kept = gguf_tensors(convert(q, tmp_path / "f16.gguf", "F16"))
    typ, shape, data = kept["blk.1.ffn_down_exps.weight"]
    experts = [src.tensors[f"model.layers.1.mlp.experts.{e}.down_proj.weight"] for e in range(4)]
    assert typ == "NVFP4" and shape == (64, 64, 4)  # GGUF order: columns, rows, experts
    assert data == b"".join(e.raw_rows(0, e.n_rows).tobytes() for e in experts)  # the stored blocks, in order
    stacked, whole = StackedRef("x", (4, 64, 64), [Part(e, 0, 64) for e in experts]), np.frombuffer(data, np.uint8)
    buf = np.empty(200 * 36, np.uint8)  # rows across expert boundaries, into a reused buffer
    got = stacked.raw_rows(30, 150, out=buf)
    assert np.shares_memory(got, buf) and np.array_equal(got, whole.reshape(256, 36)[30:150])
    for suffix, attr in ((".scale", "scale2"), (".input_scale", "input_scale")):
        t, s, raw = kept["blk.1.ffn_down_exps" + suffix]
        assert t == "F32" and s == (4,)
        assert np.array_equal(np.frombuffer(raw, np.float32), [getattr(e, attr) for e in experts])
    assert kept["blk.0.ffn_gate_inp.weight"][0] == "F32"  # the router stayed float (and F32, as llama.cpp's)
    requant = gguf_tensors(convert(q, tmp_path / "q8.gguf", "Q8_0"))
    assert requant["blk.1.ffn_down_exps.weight"][0] == "Q8_0" and not any(n.endswith("scale") for n in requant)


@pytest.mark.slow
def test_moe_same_file_as_llama_cpp_converter_and_logits(nvfp4_moe, tmp_path):
    q, deq = nvfp4_moe
    ours = gguf_tensors(convert(q, tmp_path / "ours.gguf", "F32"))
    theirs = gguf_tensors(llama_cpp_convert(q, tmp_path / "theirs.gguf", pre="qwen2"))
    assert sorted(ours) == sorted(theirs)
    assert sum(n.endswith("_exps.weight") and t == "NVFP4" for n, (t, _, _) in theirs.items()) == 2 * 3
    for name, (typ, shape, data) in theirs.items():
        assert ours[name][:2] == (typ, shape) and ours[name][2] == data, name
    median, top1 = moe_logits(q, deq, tmp_path / "ours2.gguf", "F32")  # Q8_0 activations: tests/convert/moe_checks
    assert median < TOL["q8_0"] and top1 >= 0.75, (median, top1)


@pytest.mark.slow
def test_nemotron3_moe_nvfp4_same_file_as_llama_cpp_converter_and_logits(tmp_path):
    """Nemotron 3's MoE layout (Mamba-2, MoE and attention blocks; NVIDIA ships its Nano as NVFP4): every tensor, the
    Mamba-2 projections and the stacked squared-ReLU experts NVFP4 included, as llama.cpp's converter writes it."""
    from tests.convert.test_family_nemotronh_moe import MOE

    q, deq = write_nvfp4(cached_hf_model(**MOE), tmp_path, keep=("mixer.gate.weight",))
    ours = gguf_tensors(convert(q, tmp_path / "ours.gguf", "F32"))
    theirs = gguf_tensors(llama_cpp_convert(q, tmp_path / "theirs.gguf", pre="llama-bpe"))
    assert sorted(ours) == sorted(theirs)
    nvfp4 = {n for n, (t, _, _) in theirs.items() if t == "NVFP4"}
    assert {"blk.1.ffn_up_exps.weight", "blk.3.ffn_down_exps.weight", "blk.0.ssm_in.weight"} <= nvfp4
    for name, (typ, shape, data) in theirs.items():
        assert ours[name][:2] == (typ, shape) and ours[name][2] == data, name
    median, top1 = moe_logits(q, deq, tmp_path / "ours2.gguf", "F32")
    assert median < TOL["q8_0"] and top1 >= 0.75, (median, top1)
