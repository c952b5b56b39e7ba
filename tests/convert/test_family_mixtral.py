"""Mixtral (MoE, ``llama`` in llama.cpp) end to end: logits, tokenization, every mix vs llama_model_quantize,
end of generation; the per-expert (Hub, save_pretrained) and fused (transformers in-memory) layouts give
the same GGUF; an 8-expert model gets llama.cpp's 8-expert promotions."""

from __future__ import annotations

import pytest
from tests.convert.convert_util import same_tensors
from tests.factory import cached_hf_model, copy_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids
from tests.convert.moe_checks import check_moe_logits

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_mixtral_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="mixtral", kquant=True)
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))  # the harness's tolerances, every position
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    assert info.metadata["llama.expert_count"] == 4 and info.metadata["llama.expert_used_count"] == 2
    shapes = {t.name: tuple(t.shape) for t in info.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == (4, 512, 256)  # [n_expert, n_ff, n_embd] in NumPy order
    assert shapes["blk.1.ffn_down_exps.weight"] == (4, 256, 512) and shapes["blk.1.ffn_gate_inp.weight"] == (4, 256)
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    # use_more_bits(layer, 2 layers) from the layer in the name: only the last layer's ffn_down is promoted
    assert [types["Q4_K_M"][f"blk.{i}.ffn_down_exps.weight"] for i in (0, 1)] == ["Q4_K", "Q6_K"]
    assert types["Q4_K_M"]["blk.0.ffn_gate_inp.weight"] == "F32"  # routers are never quantized
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def _fused_copy(hf, dst):
    """The model saved with transformers' in-memory names: mlp.gate, mlp.experts.gate_up_proj (3-D), ..."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") and v.ndim == 3 for k, v in sd.items()), list(sd)
    out = copy_model(hf, dst)
    for f in out.glob("*.safetensors"):
        f.unlink()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_fused_expert_layout_converts_to_the_same_file(tmp_path):
    hf = cached_hf_model(arch="mixtral")
    fused = _fused_copy(hf, tmp_path / "fused")
    a = convert(hf, tmp_path / "per-expert.gguf", "Q8_0")
    b = convert(fused, tmp_path / "fused.gguf", "Q8_0")
    types = same_tensors(a, b)
    assert types["blk.1.ffn_up_exps.weight"] == "Q8_0"


def test_eight_experts_get_llamacpps_eight_expert_rules(tmp_path):
    hf = cached_hf_model(arch="mixtral", kquant=True, num_local_experts=8, num_hidden_layers=1)
    types = check_mixes(hf, tmp_path, mixes=("Q4_K_M", "Q2_K", "Q3_K_S"))
    assert types["Q4_K_M"]["blk.0.attn_v.weight"] == "Q8_0" and types["Q4_K_M"]["blk.0.attn_k.weight"] == "Q8_0"
    assert types["Q3_K_S"]["blk.0.attn_output.weight"] == "Q5_K"
