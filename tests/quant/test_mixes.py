"""slimedge.quant.mixes picks every tensor's type exactly as llama.cpp's quantizer does.

The synthetic F32 models of tests/quant/mix_models.py (the ``models`` fixture) are quantized by llama.cpp
(``llama_cpp.llama_model_quantize``); the tensor types and general.file_type of its output must equal
``choose_types`` / ``file_type`` for every mix, override and option.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.quant.mixes import MIXES, ModelInfo, QuantSpec, TensorSpec, choose_types, file_type, parse_override
from tests.convert.convert_util import llama_quantize
from tests.quant.mix_models import MODELS, check_types, ours_types

MIX_NAMES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
             "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "F32"]


# ---- every mix on every model -------------------------------------------------------------------------

@pytest.mark.parametrize("mix", MIX_NAMES)
def test_mix_matches_llama_cpp(models, tmp_path, mix):
    seen = set()
    for c in MODELS:
        dst = tmp_path / f"{c.name}-{mix}.gguf"
        llama_quantize(models[c.name], dst, MIXES[mix][0])
        ours = check_types(models[c.name], dst, QuantSpec(mix))
        seen |= set(ours.values())
    assert MIXES[mix][1].name in seen  # the mix's base type is used somewhere
    if mix not in ("F16", "BF16", "F32", "Q8_0"):
        assert "Q6_K" in seen or "Q8_0" in seen  # output / tied embeddings got their promotion


def test_mix_rules_exercised(models):
    """The models above do reach the layer-dependent rules (guards against a vacuous comparison)."""
    ours, _ = ours_types(models["llama8_gqa4"], QuantSpec("Q4_K_M"))
    assert [ours[f"blk.{i}.attn_v.weight"] for i in range(8)] == ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K",
                                                                  "Q6_K", "Q6_K"]
    assert ours["output.weight"] == "Q6_K" and ours["token_embd.weight"] == "Q4_K"
    ours, _ = ours_types(models["llama2_tied_gqa1"], QuantSpec("Q4_K_M"))
    assert ours["token_embd.weight"] == "Q6_K"  # tied: the embeddings are the output
    assert ours["blk.1.ffn_down.weight"] == "Q8_0"  # Q6_K promotion, rows of 320 -> fallback Q8_0
    assert ours["blk.0.ffn_down.weight"] == "Q5_0"  # Q4_K, rows of 320 -> fallback Q5_0
    ours, _ = ours_types(models["qwen2_odd"], QuantSpec("Q4_K_M"))
    assert ours["blk.1.ffn_down.weight"] == "F16" and ours["blk.0.attn_q.bias"] == "F32"
    ours, _ = ours_types(models["llama80_70b"], QuantSpec("Q3_K_S"))
    assert ours["blk.5.attn_v.weight"] == "Q5_K"  # the 70B rule
    ours, _ = ours_types(models["llama_moe8"], QuantSpec("Q4_K_M"))
    assert ours["blk.0.attn_k.weight"] == "Q8_0" and ours["blk.0.ffn_gate_inp.weight"] == "F32"
    ours, _ = ours_types(models["falcon16"], QuantSpec("Q4_K_M"))
    assert ours["output.weight"] == "Q8_0"  # falcon: output always Q8_0
    assert [ours[f"blk.{i}.ffn_down.weight"] for i in (0, 1, 3, 4)] == ["Q6_K", "Q5_K", "Q4_K", "Q5_K"]


# ---- options ------------------------------------------------------------------------------------------

OPTION_CASES = [
    ("output_type", "llama8_gqa4", "Q4_K_M", dict(output_tensor_type="Q8_0")),
    ("output_type_tied", "llama2_tied_gqa1", "Q3_K_M", dict(output_tensor_type="Q5_0")),
    ("embd_type", "llama8_gqa4", "Q5_K_M", dict(token_embedding_type="Q8_0")),
    ("embd_type_tied", "llama2_tied_gqa1", "Q2_K", dict(token_embedding_type="Q4_K")),
    ("both", "phi3_fused", "Q4_K_S", dict(output_tensor_type="F16", token_embedding_type="Q6_K")),
    ("pure", "llama8_gqa4", "Q4_K_M", dict(pure=True)),
    ("pure_fallback", "qwen2_odd", "Q3_K_L", dict(pure=True)),
    ("leave_output", "llama8_gqa4", "Q3_K_M", dict(quantize_output=False)),
    ("float_with_output", "llama8_gqa4", "F16", dict(output_tensor_type="Q8_0")),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_options_match_llama_cpp(models, tmp_path, case):
    _, model, mix, kw = case
    spec = QuantSpec(mix, **kw)
    params = {}
    if "output_tensor_type" in kw:
        params["output_tensor_type"] = int(T[kw["output_tensor_type"]])
    if "token_embedding_type" in kw:
        params["token_embedding_type"] = int(T[kw["token_embedding_type"]])
    if "pure" in kw:
        params["pure"] = kw["pure"]
    if "quantize_output" in kw:
        params["quantize_output_tensor"] = kw["quantize_output"]
    dst = tmp_path / "out.gguf"
    llama_quantize(models[model], dst, MIXES[mix][0], **params)
    check_types(models[model], dst, spec)


OVERRIDE_CASES = [
    ("attn_v", "llama8_gqa4", "Q4_K_M", ["attn_v=q8_0"]),
    ("first_match_wins", "llama8_gqa4", "Q3_K_M", [r"blk\.[0-3]\.ffn_down=q6_k", "ffn_down=q2_k", "ATTN_Q=Q5_0"]),
    ("embd_and_output", "llama2_tied_gqa1", "Q4_K_S", ["token_embd=q4_0", "ffn_down=q4_k"]),  # 320-row fallback
    ("counters_skip", "llama32_gqa2", "Q4_K_M", [r"blk\.(1|2|3)\.attn_v=q5_0"]),  # overridden: not counted
    ("float_mix_ignores", "llama8_gqa4", "F16", ["attn_v=q8_0"]),
    ("moe_experts", "llama_moe8", "Q3_K_M", ["exps=q4_k", "ffn_gate_inp=q8_0"]),
]


@pytest.mark.parametrize("case", OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_tensor_type_overrides_match_llama_cpp(models, tmp_path, case):
    _, model, mix, args = case
    pairs = [parse_override(a) for a in args]
    dst = tmp_path / "out.gguf"
    llama_quantize(models[model], dst, MIXES[mix][0], overrides=[(p, T[t]) for p, t in pairs])
    ours = check_types(models[model], dst, QuantSpec(mix, overrides=pairs))
    if model == "llama8_gqa4" and mix != "F16":
        assert any(v in ("Q8_0", "Q6_K", "Q2_K", "Q5_0") for k, v in ours.items() if "blk" in k)


def test_imatrix_rules_match_llama_cpp(models, tmp_path):
    """With an importance matrix: Q2_K_S is allowed and Q4_0/Q5_0 protect the first ffn_down layers."""
    src = models["llama8_gqa4"]
    info = read_info(src)
    imatrix = {t.name: np.linspace(0.5, 2.0, t.shape[-1] * (t.shape[0] if len(t.shape) == 3 else 1))
               for t in info.tensors if len(t.shape) >= 2}
    for mix in ("Q4_0", "Q5_0", "Q2_K_S"):
        dst = tmp_path / f"{mix}.gguf"
        llama_quantize(src, dst, MIXES[mix][0], imatrix=imatrix)
        ours = check_types(src, dst, QuantSpec(mix, has_imatrix=True))
        if mix == "Q4_0":
            assert ours["blk.0.ffn_down.weight"] == "Q4_1" and ours["blk.1.ffn_down.weight"] == "Q4_0"
    with pytest.raises(SlimedgeError, match="importance matrix"):
        choose_types([TensorSpec("blk.0.attn_q.weight", (256, 256))], QuantSpec("Q2_K_S"), ModelInfo("llama", 1))


# ---- parsing and errors -----------------------------------------------------------------------------

def test_names_aliases_and_errors():
    assert file_type(QuantSpec("q4_k_m")) == 15 and file_type(QuantSpec("Q4_K")) == 15
    assert file_type(QuantSpec("F32")) == 0 and file_type(QuantSpec("bf16")) == 32
    assert parse_override("Blk\\.0\\.ATTN_V=Q8_0") == ("blk\\.0\\.attn_v", "Q8_0")
    for bad in ("attn_v", "=q8_0", "attn_v=", "attn_v=q9_9", "(unclosed=q8_0"):
        with pytest.raises(SlimedgeError):
            parse_override(bad)
    with pytest.raises(SlimedgeError, match="unknown --type"):
        file_type(QuantSpec("Q7_K"))
    moe = ModelInfo("llama", 2, 8, 2, n_expert=8)
    with pytest.raises(SlimedgeError, match="layer"):
        choose_types([TensorSpec("ffn_down_exps.weight", (8, 256, 256))], QuantSpec("Q4_K_M"), moe)
    with pytest.raises(SlimedgeError, match="outside"):
        choose_types([TensorSpec("blk.7.ffn_down_exps.weight", (8, 256, 256))], QuantSpec("Q4_K_M"), moe)
