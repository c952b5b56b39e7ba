"""MXFP4 checkpoints (gpt-oss's ``*_blocks`` + ``*_scales`` experts) as sources.

The repacking against blocks built independently from element codes (ggml's block: exponent byte, then
byte j = element j | element j + 16 << 4; gpt-oss: byte i = element 2i | element 2i + 1 << 4), read as
floats against ggml's own MXFP4 ``to_float``; the gate/up row views. End to end on a tiny gpt-oss stored as
released: with ``--type MXFP4_MOE`` the experts pass through, byte-identical to what the pinned sdist's
``convert_hf_to_gguf.py`` writes for the same checkpoint, and the logits follow transformers' on the
dequantized weights as tests/convert/moe_checks.py requires of Q8_0 (median position within its
tolerance); with ``--type F32`` they are dequantized (every value equal to ggml's dequantization of
llama.cpp's MXFP4 tensors, every other tensor byte-identical) and llama.cpp's logits equal transformers'
on the dequantized weights (F32 tolerance).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from slimedge.convert import plan
from slimedge.quant.mixes import QuantSpec
from slimedge.source.fp4src import MXFP4Ref
from slimedge.source.hf import HFSource
from tests.factory import cached_hf_model
from tests.family_checks import TOL, convert
from tests.ggml_ref import ggml_dequantize
from tests.llama_src import llama_cpp_convert
from tests.source.qckpt import gguf_tensors, logits_err, moe_logits, write_mxfp4


def _stored(tmp_path, lead=(3,), rows=10, nb=4, seed=0):
    """A gpt-oss-style MXFP4 pair from random element codes, and the GGML blocks they must become."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (*lead, rows, nb, 32)).astype(np.uint8)
    scales = rng.integers(110, 140, (*lead, rows, nb)).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    ggml = np.concatenate([scales[..., None], codes[..., :16] | (codes[..., 16:] << 4)], axis=-1)
    save_file({"x.w_blocks": blocks, "x.w_scales": scales, "x.b": np.zeros(3, np.float32)},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "mxfp4"}}))
    return ggml.reshape(-1, nb * 17)


def test_blocks_repacked_to_ggml_and_read_as_ggml_dequantizes(tmp_path, backend):
    want = _stored(tmp_path)
    ref = HFSource(tmp_path).tensors["x.w"]
    assert isinstance(ref, MXFP4Ref) and ref.shape == (3, 10, 128) and ref.n_rows == 30
    assert np.array_equal(ref.raw_rows(0, 30), want)
    assert np.array_equal(ref.raw_rows(7, 19), want[7:19])
    floats = ggml_dequantize(want, "MXFP4", 128)
    buf = np.empty(30 * 128, np.float32)
    got = ref.load_rows(4, 23, buf)
    assert np.shares_memory(got, buf) and np.array_equal(got, floats[4:23])
    assert np.array_equal(ref.load(), floats.reshape(3, 10, 128))


def test_row_views_take_every_other_row_across_experts(tmp_path, backend):
    want = _stored(tmp_path)
    ref = HFSource(tmp_path).tensors["x.w"]
    up = ref.rows(1, 2)
    assert up.shape == (3, 5, 128) and up.stored_type == ref.stored_type
    assert np.array_equal(up.raw_rows(0, 15), want[1::2])
    assert np.array_equal(up.raw_rows(4, 11), want[1::2][4:11])
    assert np.array_equal(up.load_rows(3, 9), ggml_dequantize(want[1::2][3:9], "MXFP4", 128))


def test_scales_that_do_not_fit_are_named(tmp_path):
    from slimedge.errors import SlimedgeError

    save_file({"x.w_blocks": np.zeros((2, 4, 16), np.uint8), "x.w_scales": np.zeros((2, 3), np.uint8)},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "mxfp4"}}))
    with pytest.raises(SlimedgeError, match="MXFP4 tensors x.w_blocks .* do not fit"):
        HFSource(tmp_path)


YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True,
        "original_max_position_embeddings": 4096, "rope_theta": 150000.0}


@pytest.fixture(scope="module")
def gptoss(tmp_path_factory):
    return write_mxfp4(cached_hf_model(arch="gptoss", rope_parameters=YARN), tmp_path_factory.mktemp("gptoss"))


def test_mxfp4_moe_plan_passes_experts_through_and_f32_dequantizes(gptoss):
    q, _ = gptoss
    kept = {t.name for t in plan(q, QuantSpec("MXFP4_MOE")).tensors if t.passthrough}
    assert kept == {f"blk.{b}.ffn_{p}_exps.weight" for b in (0, 1) for p in ("gate", "up", "down")}
    assert not any(t.passthrough for t in plan(q, QuantSpec("F32")).tensors)
    assert "keep the checkpoint's stored blocks" in plan(q, QuantSpec("MXFP4_MOE")).table()


@pytest.mark.slow
def test_experts_identical_to_llama_cpp_converter_and_f32_logits(gptoss, tmp_path):
    q, deq = gptoss
    theirs = gguf_tensors(llama_cpp_convert(q, tmp_path / "theirs.gguf", pre="gpt-4o"))
    moe = gguf_tensors(convert(q, tmp_path / "moe.gguf", "MXFP4_MOE"))
    experts = [n for n, (t, _, _) in theirs.items() if t == "MXFP4"]
    assert len(experts) == 6
    for name in experts:
        assert moe[name] == theirs[name], name
    f32 = gguf_tensors(convert(q, tmp_path / "f32.gguf", "F32"))
    assert sorted(f32) == sorted(theirs)
    for name, (typ, shape, data) in theirs.items():
        if name in experts:  # ours dequantized: ggml's own dequantization of llama.cpp's blocks
            rows = np.frombuffer(data, np.uint8).reshape(-1, shape[0] // 32 * 17)
            assert f32[name][0] == "F32" and f32[name][2] == ggml_dequantize(rows, "MXFP4", shape[0]).tobytes()
        else:
            assert f32[name] == (typ, shape, data), name
    assert logits_err(q, deq, tmp_path / "f32b.gguf", "F32") < 2e-5
    # passed through, llama.cpp multiplies the MXFP4 experts with Q8_0 activations and the mix makes the rest
    # Q8_0: the MoE criterion of tests/convert/moe_checks.py with the harness's Q8_0 tolerance
    median, top1 = moe_logits(q, deq, tmp_path / "moe2.gguf", "MXFP4_MOE")
    assert median < TOL["q8_0"] and top1 >= 0.75, (median, top1)
