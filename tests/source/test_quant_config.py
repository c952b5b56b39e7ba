"""Which ``quantization_config`` a checkpoint may carry: FP8, MXFP4 and NVFP4 are read; any other method
(GPTQ, AWQ, bitsandbytes, ...) is one line naming the method and pointing at the float checkpoint."""

from __future__ import annotations

import json

import pytest
import numpy as np
from safetensors.numpy import save_file

from slimedge.errors import SlimedgeError
from slimedge.source.hf import HFSource
from slimedge.source.quantized import Scheme, quantization_of


@pytest.mark.parametrize("qc", [
    {"quant_method": "gptq", "bits": 4, "group_size": 128},
    {"quant_method": "awq", "bits": 4, "version": "gemm"},
    {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    {"quant_method": "compressed-tensors", "format": "pack-quantized",
     "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int"}}}},
    {"quant_method": "modelopt", "quant_algo": "W4A8_AWQ"},
])
def test_other_methods_refused_in_one_line(tmp_path, qc):
    save_file({"w": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "quantization_config": qc}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SlimedgeError) as e:
        HFSource(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and f"quant_method is '{qc['quant_method']}" in msg
    assert "config.json" in msg and "float (BF16/F16) checkpoint" in msg


def test_schemes_read(tmp_path):
    q = lambda qc: quantization_of({"quantization_config": qc}, tmp_path)  # noqa: E731
    assert quantization_of({}, tmp_path) is None
    assert q({"quant_method": "fp8", "weight_block_size": [128, 128]}) == Scheme("fp8", (128, 128))
    assert q({"quant_method": "mxfp4"}) == Scheme("mxfp4")
    assert q({"quant_method": "modelopt", "quant_algo": "NVFP4"}) == Scheme("nvfp4")
    assert q({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "config_groups": {}}) == \
        Scheme("nvfp4", compressed=True)
    assert q({"quant_method": "compressed-tensors", "format": "float-quantized",
              "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}}}) == Scheme("fp8")
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "group_size": 16}}))
    assert quantization_of({}, tmp_path) == Scheme("nvfp4")  # ModelOpt's own file, without a config entry
