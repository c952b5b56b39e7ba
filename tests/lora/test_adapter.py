"""``slimedge convert ADAPTER --base BASE``: llama.cpp's LoRA GGUF, checked against transformers + peft
(llama.cpp's logits with the adapter applied), against llama.cpp's own converter's tensors, and its refusals."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from slimedge.errors import SlimedgeError
from tests.factory import cached_hf_model
from tests.lora.helpers import ALL_LINEAR, llama_logits, make_adapter, peft_logits


@pytest.fixture(scope="module")
def llama_base():
    return cached_hf_model(arch="llama")


@pytest.fixture(scope="module")
def llama_adapter(llama_base, tmp_path_factory):
    return make_adapter(llama_base, tmp_path_factory.mktemp("lora") / "adapter")


def _convert_base(base, out):
    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec

    return convert(base, out, QuantSpec("F32")).out


@pytest.mark.slow
@pytest.mark.parametrize("arch,targets,extra", [
    ("llama", ALL_LINEAR + ["embed_tokens", "lm_head"], {}),  # q/k rows permuted on B; embedding pair transposed
    ("qwen3", ALL_LINEAR, {"rank_pattern": {"v_proj": 2}}),  # llama.cpp scales each pair by alpha / its rank
    ("llama", ["q_proj", "k_proj", "down_proj"], {"use_rslora": True}),  # alpha / sqrt(r) folded into alpha
])
def test_llama_cpp_logits_equal_peft(arch, targets, extra, tmp_path):
    from slimedge.adapter import convert_adapter

    base = cached_hf_model(arch=arch)
    adapter = make_adapter(base, tmp_path / "adapter", targets=targets, r=4, alpha=12, **extra)
    gguf = _convert_base(base, tmp_path / "base.gguf")
    res = convert_adapter(adapter, base, tmp_path / "adapter.gguf")
    assert len(res.pairs) == sum(1 if t in ("embed_tokens", "lm_head") else 2 for t in targets)  # 2 layers
    assert res.alpha == (24.0 if extra.get("use_rslora") else 12.0)
    want, want_base = peft_logits(base, adapter)
    plain, got = llama_logits(gguf), llama_logits(gguf, res.out)
    base_err = np.abs(plain - want_base).max()  # llama.cpp's F32 graph vs transformers, no adapter
    assert np.abs(want - want_base).max() > 0.5  # the adapter changes the logits a lot
    # F32 tight: with the adapter, llama.cpp is as close to peft as the base alone is to transformers (~1e-6)
    err = np.abs(got - want).max()
    assert base_err <= 1e-5 and err <= 2e-5 * np.abs(want).max(), (err, base_err)
    off = llama_logits(gguf, res.out, scale=0.0)  # llama-cpp-python's lora_scale reaches llama.cpp
    np.testing.assert_allclose(off, plain, rtol=0, atol=1e-5 * np.abs(plain).max())


def test_metadata_and_layout(llama_base, llama_adapter, tmp_path):
    """The keys llama.cpp's loader checks; lora_a is ggml [in, r], lora_b [r, out]; q's B rows permuted per
    head (Llama's rope layout) while v's are as stored."""
    import gguf

    from slimedge.adapter import convert_adapter
    from slimedge.arch.llama import permute_rope_rows
    from slimedge.source.lora import PeftAdapter

    out = convert_adapter(llama_adapter, llama_base, tmp_path / "a.gguf").out
    r = gguf.GGUFReader(out)
    kv = {k: f.contents() for k, f in r.fields.items()}
    assert (kv["general.type"], kv["adapter.type"], kv["general.architecture"]) == ("adapter", "lora", "llama")
    assert kv["adapter.lora.alpha"] == 16.0
    t = {x.name: x for x in r.tensors}
    assert list(t["blk.0.attn_q.weight.lora_a"].shape) == [64, 8]
    assert list(t["blk.0.attn_q.weight.lora_b"].shape) == [8, 64]
    pairs = {p.base: p for p in PeftAdapter(llama_adapter).pairs}
    bq = pairs["model.layers.0.self_attn.q_proj.weight"].b.load()
    np.testing.assert_array_equal(np.asarray(t["blk.0.attn_q.weight.lora_b"].data), permute_rope_rows(bq, 4))
    bv = pairs["model.layers.1.self_attn.v_proj.weight"].b.load()
    np.testing.assert_array_equal(np.asarray(t["blk.1.attn_v.weight.lora_b"].data), bv)


@pytest.mark.parametrize("ftype", ["f16", "bf16", "q8_0"])
def test_types(llama_base, llama_adapter, tmp_path, ftype):
    """lora_a rows (64 values) take the type; q8_0's lora_b rows (r = 8 values) fall back to F16 as in
    llama.cpp's converter; the values are the F32 file's up to the type's rounding."""
    import gguf

    from slimedge.adapter import convert_adapter
    from slimedge.quant import dequantize

    ref = {x.name: np.asarray(x.data) for x in gguf.GGUFReader(
        convert_adapter(llama_adapter, llama_base, tmp_path / "f32.gguf").out).tensors}
    r = gguf.GGUFReader(convert_adapter(llama_adapter, llama_base, tmp_path / "x.gguf", ftype).out)
    for x in r.tensors:
        want_type = "F16" if ftype == "q8_0" and x.name.endswith("lora_b") else ftype.upper()
        assert x.tensor_type.name == want_type, x.name
        got = dequantize(np.asarray(x.data).reshape(-1), x.tensor_type).reshape(ref[x.name].shape)
        np.testing.assert_allclose(got, ref[x.name], rtol=0, atol=0.02 * np.abs(ref[x.name]).max())


def _edit_config(adapter, tmp_path, **changes):
    dst = shutil.copytree(adapter, tmp_path / "edited")
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("changes,message", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"alpha_pattern": {"q_proj": 32}}, "per-module alphas"),
    ({"peft_type": "IA3"}, "LoRA adapters only"),
    ({"lora_bias": True}, "lora_bias"),
])
def test_refuses_variants(llama_base, llama_adapter, tmp_path, changes, message):
    from slimedge.adapter import convert_adapter

    with pytest.raises(SlimedgeError, match=message) as e:
        convert_adapter(_edit_config(llama_adapter, tmp_path, **changes), llama_base, tmp_path / "a.gguf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "a.gguf").exists()


def test_refuses_another_base(llama_adapter, tmp_path):
    from slimedge.adapter import convert_adapter

    other = cached_hf_model(arch="llama", hidden_size=128)
    with pytest.raises(SlimedgeError, match="another base model") as e:
        convert_adapter(llama_adapter, other, tmp_path / "a.gguf")
    assert "self_attn" in str(e.value) or "mlp" in str(e.value)


def test_refuses_lm_head_of_tied_base(tmp_path):
    from slimedge.adapter import convert_adapter

    base = cached_hf_model(arch="qwen3", tied=True)
    with warnings.catch_warnings():  # peft warns about the very mistake this adapter is built to have
        warnings.simplefilter("ignore", UserWarning)
        adapter = make_adapter(base, tmp_path / "adapter", targets=["q_proj", "lm_head"])
    with pytest.raises(SlimedgeError, match="lm_head.weight, but the base ties it to the token embedding"):
        convert_adapter(adapter, base, tmp_path / "a.gguf")


def test_refuses_pickle_and_missing_files(llama_base, llama_adapter, tmp_path):
    from slimedge.adapter import convert_adapter

    dst = shutil.copytree(llama_adapter, tmp_path / "pickled")
    (dst / "adapter_model.safetensors").rename(dst / "adapter_model.bin")
    with pytest.raises(SlimedgeError, match="adapter_model.bin: pickle adapters are refused"):
        convert_adapter(dst, llama_base, tmp_path / "a.gguf")
    with pytest.raises(SlimedgeError, match="adapter_config.json: missing"):
        convert_adapter(llama_base, llama_base, tmp_path / "a.gguf")


def test_alora_invocation_tokens(llama_base, llama_adapter, tmp_path):
    """An activated LoRA's invocation tokens go to adapter.alora.invocation_tokens (uint32[]), as llama.cpp reads
    them; an invocation string without its tokens is refused (the adapter would act everywhere)."""
    import gguf

    from slimedge.adapter import convert_adapter

    out = convert_adapter(_edit_config(llama_adapter, tmp_path, alora_invocation_tokens=[5, 7, 9]), llama_base,
                          tmp_path / "a.gguf").out
    field = gguf.GGUFReader(out).fields["adapter.alora.invocation_tokens"]
    assert field.contents() == [5, 7, 9] and field.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32]
    with pytest.raises(SlimedgeError, match="invocation_string but no alora_invocation_tokens"):
        convert_adapter(_edit_config(llama_adapter, tmp_path / "s", invocation_string="<x>"), llama_base,
                        tmp_path / "b.gguf")
