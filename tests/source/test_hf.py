"""slimedge.source.hf reads safetensors headers itself and widens bf16/f16 exactly, without torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slimedge.errors import SlimedgeError
from slimedge.source.hf import HFSource, read_safetensors_header


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_reads_each_dtype_exactly(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(7, 33, generator=g).to(dtype), "b": torch.randn(5, generator=g).to(dtype),
               "c.bias": (torch.randn(2, 3, 4, generator=g) * 1e4).to(dtype)}
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    refs = read_safetensors_header(tmp_path / "m.safetensors")
    assert list(refs) == sorted(tensors)  # safetensors stores names sorted
    for name, t in tensors.items():
        got = refs[name].load()
        assert got.dtype == np.float32 and got.shape == tuple(t.shape)
        np.testing.assert_array_equal(got, t.float().numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_in_place_widening_into_a_reused_buffer(tmp_path, dtype):
    """2-byte values read into the upper half of the output and widened in place, over several chunks."""
    g = torch.Generator().manual_seed(1)
    big = torch.randn(3, 1_000_003, generator=g).to(dtype)  # > 2 chunks of 2**20, odd length
    small = torch.randn(5, 7, generator=g).to(dtype)
    save_file({"big": big, "small": small}, tmp_path / "m.safetensors")
    refs = read_safetensors_header(tmp_path / "m.safetensors")
    buf = np.full(4_000_000, np.nan, np.float32)
    for name, t in (("big", big), ("small", small), ("big", big)):
        got = refs[name].load(out=buf)
        assert np.shares_memory(got, buf)
        np.testing.assert_array_equal(got, t.float().numpy())


def test_index_and_consolidated(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    save_file({"x": torch.zeros(2)}, tmp_path / "model.safetensors")
    save_file({"layers.0.attention.wq.weight": torch.zeros(2)}, tmp_path / "consolidated.safetensors")
    assert list(HFSource(tmp_path).tensors) == ["x"]  # Mistral's duplicate copy is ignored
    save_file({"y": torch.zeros(3)}, tmp_path / "part-2.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x": "model.safetensors", "y": "part-2.safetensors"}}))
    assert sorted(HFSource(tmp_path).tensors) == ["x", "y"]


def test_duplicate_tensor_across_shards_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    save_file({"x": torch.zeros(2)}, tmp_path / "a.safetensors")
    save_file({"x": torch.ones(2)}, tmp_path / "b.safetensors")
    with pytest.raises(SlimedgeError, match="tensor x also appears"):
        HFSource(tmp_path)


def test_unsupported_dtype_is_named(tmp_path):
    save_file({"q": torch.zeros(4, dtype=torch.int8)}, tmp_path / "m.safetensors")
    with pytest.raises(SlimedgeError, match="tensor q has dtype I8"):
        read_safetensors_header(tmp_path / "m.safetensors")
