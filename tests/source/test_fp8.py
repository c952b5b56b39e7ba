"""FP8 checkpoints (float8_e4m3fn weights, block-wise ``weight_scale_inv``) as sources.

The byte table against torch's own float8_e4m3fn conversion; :class:`FP8Ref` row ranges (across partial
blocks and matrices) against the whole tensor dequantized by torch as llama.cpp's converter does
(``weight.float() * scale`` repeated over each block); and the end to end check: a Llama written the way
the Hub's "-FP8" checkpoints are, converted to F32, gives llama.cpp logits equal to transformers' on the
dequantized weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slimedge.errors import SlimedgeError
from slimedge.source.hf import HFSource
from slimedge.source.quantized import E4M3FN, FP8Ref
from tests.factory import cached_hf_model
from tests.source.qckpt import logits_err, write_fp8


def test_e4m3fn_table_is_torchs():
    want = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(E4M3FN), nan) and nan.sum() == 2
    assert np.array_equal(E4M3FN[~nan].view(np.uint32), want[~nan].view(np.uint32))  # -0.0 included


def _checkpoint(tmp_path, shape, block, scale_shape):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(*shape, generator=g) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(*scale_shape, generator=g) + 0.01
    save_file({"m.weight": w, "m.weight_scale_inv": s}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(
        {"quantization_config": {"quant_method": "fp8", "weight_block_size": list(block)}}))
    full = s
    for dim, size in zip((-2, -1), block):
        full = full.repeat_interleave(size, dim)
    return w.float() * full[..., :shape[-2], :shape[-1]]


@pytest.mark.parametrize("shape,block", [((300, 200), (128, 128)), ((3, 40, 70), (16, 32)), ((64, 96), (1, 96))])
def test_rows_dequantize_as_llama_cpp_does(tmp_path, shape, block):
    rows, cols = shape[-2:]
    lead = shape[:-2]
    want = _checkpoint(tmp_path, shape, block, (*lead, -(-rows // block[0]), -(-cols // block[1]))).numpy()
    ref = HFSource(tmp_path).tensors["m.weight"]
    assert isinstance(ref, FP8Ref) and ref.shape == shape and "m.weight_scale_inv" not in HFSource(tmp_path).tensors
    flat = want.reshape(-1, cols)
    assert np.array_equal(ref.load(), want)
    buf = np.full(flat.size, np.nan, np.float32)
    for a, b in [(0, 1), (5, 133), (127, 129), (ref.n_rows - 7, ref.n_rows), (39, 81)]:
        a, b = min(a, ref.n_rows - 1), min(b, ref.n_rows)
        got = ref.load_rows(a, b, buf)
        assert np.shares_memory(got, buf) and np.array_equal(got, flat[a:b]), (a, b)


def test_scale_that_does_not_fit_is_named(tmp_path):
    _checkpoint(tmp_path, (64, 64), (32, 32), (3, 2))
    with pytest.raises(SlimedgeError, match="scale m.weight_scale_inv has shape"):
        HFSource(tmp_path)


def test_fp8_weight_without_scale_is_named(tmp_path):
    save_file({"m.weight": torch.zeros(4, 4, dtype=torch.float8_e4m3fn)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(SlimedgeError, match="tensor m.weight is stored as F8_E4M3 and no scale"):
        HFSource(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("block", [(128, 128), (32, 16)])
def test_fp8_checkpoint_logits_equal_transformers_on_dequantized_weights(tmp_path, block):
    """llama q/k rows are permuted after dequantization; 128-blocks are partial on the 64-wide model."""
    fp8, deq = write_fp8(cached_hf_model(arch="llama"), tmp_path / "ckpt", block)
    assert logits_err(fp8, deq, tmp_path / "fp8.gguf", "F32") < 2e-5
