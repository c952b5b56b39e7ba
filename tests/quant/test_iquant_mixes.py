"""The grid i-quant mixes (IQ1_S ... IQ3_M) choose llama.cpp's tensor types, write its bytes, and are
refused without an importance matrix where llama-quantize refuses them.

Types: the synthetic F32 models of tests/quant/mix_models.py (GQA, tied, deep, fused QKV, 70B, 8 experts, falcon, odd
row lengths) quantized by ``llama_model_quantize`` with a synthetic imatrix. Bytes: slimedge's imatrix of a
tiny trained Llama, passed to ``llama_model_quantize`` as llama-quantize passes it, against
``slimedge convert --imatrix``; the result loads and generates in llama-cpp-python.
"""

from __future__ import annotations

import ctypes
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.quant.mixes import MIXES, ModelInfo, QuantSpec, TensorSpec, choose_types, parse_override
from tests.convert.convert_util import llama_imatrix_args, llama_quantize, same_tensors, silence_llama
from tests.quant.mix_models import MODELS, check_types

IQ_MIXES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M"]
NO_IMATRIX_OK = ["IQ3_S", "IQ3_M"]  # their tensor types need no importance data
REFUSED = [m for m in IQ_MIXES if m not in NO_IMATRIX_OK]


def _synthetic_imatrix(src) -> dict[str, np.ndarray]:
    return {t.name: np.linspace(0.5, 2.0, t.shape[-1] * (t.shape[0] if len(t.shape) == 3 else 1))
            for t in read_info(src).tensors if len(t.shape) >= 2}


def _llama_refusal(src, dst, ftype: int) -> str:
    """Run llama.cpp's quantizer without an imatrix, expecting it to fail; returns the tensor it names."""
    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def _collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    try:
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype, p.nthread = ftype, 2
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    finally:
        silence_llama()
    assert rc != 0, "llama.cpp quantized without the importance matrix"
    text = "".join(lines)
    assert "requires an importance matrix" in text
    return text.split("offending tensor:")[1].split()[0]


# ---- rules, without llama.cpp -------------------------------------------------------------------------

def _tiny(n_layer=2):
    tensors = [TensorSpec("token_embd.weight", (64, 256))]
    for i in range(n_layer):
        tensors += [TensorSpec(f"blk.{i}.attn_norm.weight", (256,)), TensorSpec(f"blk.{i}.attn_q.weight", (256, 256)),
                    TensorSpec(f"blk.{i}.attn_v.weight", (256, 256)), TensorSpec(f"blk.{i}.ffn_down.weight", (256, 512))]
    return tensors + [TensorSpec("output.weight", (64, 256))]


@pytest.mark.parametrize("mix", REFUSED)
def test_refused_without_imatrix_one_line_naming_the_tensor(mix):
    with pytest.raises(SlimedgeError) as e:
        choose_types(_tiny(), QuantSpec(mix), ModelInfo("llama", 2, n_head=4, n_head_kv=4))
    msg = str(e.value)
    assert "\n" not in msg and "importance matrix" in msg and msg.startswith("blk.0.")
    types = choose_types(_tiny(), QuantSpec(mix, has_imatrix=True), ModelInfo("llama", 2, n_head=4, n_head_kv=4))
    assert any(q.name.startswith("IQ") for q in types)


def test_override_to_a_grid_type_needs_an_imatrix_too():
    spec = QuantSpec("Q4_K_M", overrides=[parse_override("ffn_down=iq2_xxs")])
    with pytest.raises(SlimedgeError, match=r"^blk\.0\.ffn_down\.weight: type IQ2_XXS"):
        choose_types(_tiny(), spec, ModelInfo("llama", 2))
    spec.has_imatrix = True
    got = dict(zip([t.name for t in _tiny()], choose_types(_tiny(), spec, ModelInfo("llama", 2))))
    assert got["blk.1.ffn_down.weight"].name == "IQ2_XXS" and got["blk.0.attn_q.weight"].name == "Q4_K"
    # a row length that does not fit 256 falls back to IQ4_NL (no imatrix needed for it)
    odd = [TensorSpec("blk.0.ffn_down.weight", (256, 96))]
    assert choose_types(odd, QuantSpec("IQ2_XXS"), ModelInfo("llama", 1))[0].name == "IQ4_NL"


# ---- tensor types: llama.cpp on every synthetic model ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mix", IQ_MIXES)
def test_iquant_mix_types_match_llama_cpp(models, tmp_path, mix):
    for c in MODELS:
        dst = tmp_path / f"{c.name}-{mix}.gguf"
        llama_quantize(models[c.name], dst, MIXES[mix][0], imatrix=_synthetic_imatrix(models[c.name]))
        check_types(models[c.name], dst, QuantSpec(mix, has_imatrix=True))
        dst.unlink()
        if mix in NO_IMATRIX_OK:  # without importance data: the same choice as llama.cpp, not refused
            llama_quantize(models[c.name], dst, MIXES[mix][0])
            check_types(models[c.name], dst, QuantSpec(mix))
            dst.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("mix", REFUSED)
def test_refusal_names_the_tensor_llama_cpp_names(models, tmp_path, mix):
    for c in MODELS[:2] + MODELS[4:5]:  # GQA 4, tied GQA 1, fused QKV
        src = models[c.name]
        theirs = _llama_refusal(src, tmp_path / "x.gguf", MIXES[mix][0])
        info = read_info(src)
        with pytest.raises(SlimedgeError) as e:
            choose_types([TensorSpec(t.name, t.shape) for t in info.tensors], QuantSpec(mix),
                         ModelInfo.from_metadata(info.metadata))
        assert str(e.value).split(":")[0] == theirs, (c.name, str(e.value), theirs)


# ---- bytes: slimedge's imatrix, the whole model, llama.cpp's quantizer -------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(HF folder, its F32 GGUF, slimedge's imatrix computed on it)."""
    from tests.factory import cached_hf_model

    root = tmp_path_factory.mktemp("iqmix")
    model = cached_hf_model(arch="llama", kquant=True)
    f32 = root / "f32.gguf"
    assert CliRunner().invoke(main, ["convert", str(model), "-o", str(f32), "--type", "F32", "-q"]).exit_code == 0
    imx = root / "imatrix.gguf"
    r = CliRunner().invoke(main, ["imatrix", str(model), "--data", textwrap.__file__, "-o", str(imx), "--ctx", "32",
                                  "--chunks", "3", "-q"])
    assert r.exit_code == 0, r.output
    return model, f32, imx


@pytest.mark.slow
def test_whole_model_bytes_equal_llama_model_quantize_and_generate(trained, tmp_path):
    from tests.family_checks import check_generation_stops, eog_ids

    model, f32, imx = trained
    params = llama_imatrix_args(imx)
    for mix in IQ_MIXES:
        ours = tmp_path / f"ours-{mix}.gguf"
        r = CliRunner().invoke(main, ["convert", str(model), "-o", str(ours), "--type", mix, "--imatrix", str(imx),
                                      "-q", "-t", "2"])
        assert r.exit_code == 0, r.output
        theirs = llama_quantize(f32, tmp_path / f"theirs-{mix}.gguf", MIXES[mix][0], **params)
        types = same_tensors(ours, theirs)
        assert any(t.startswith("IQ") for t in types.values()), (mix, types)
        if mix in ("IQ1_S", "IQ2_XXS", "IQ3_M"):
            check_generation_stops(ours, eog_ids(model))
        ours.unlink()
        theirs.unlink()


@pytest.mark.slow
def test_cli_refuses_without_imatrix_and_dry_run_lists_the_types(trained, tmp_path):
    model, f32, imx = trained
    r = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "x.gguf"), "--type", "iq2_xxs", "-q"])
    assert r.exit_code == 1 and "importance matrix" in r.output and len(r.output.strip().splitlines()) == 1
    assert "blk.0." in r.output and not (tmp_path / "x.gguf").exists()
    r = CliRunner().invoke(main, ["convert", str(model), "--type", "IQ2_M", "--imatrix", str(imx), "--dry-run",
                                  "--tensor-type", "attn_q=iq3_xxs"])
    assert r.exit_code == 0, r.output
    assert "IQ2_S" in r.output and "IQ3_XXS" in r.output and "IQ3_S" in r.output
