"""``--type auto`` on the new families (issue 18): MoE (stacked experts, transformers' fused expert
parameters, gpt-oss's interleaved gate/up), hybrid (Qwen3.5's regrouped linear-attention rows) and Gemma 3n
(KV-shared layers whose K/V the converter writes as zeros).

The sensitivities quantize the transformers weight in place of the GGUF tensor
(:mod:`slimedge.calib.hf_weights`); that is right only if the torch tensor holds exactly the GGUF tensor's
rows. The first test proves it against slimedge's F32 GGUF, row multiset by row multiset; the slow one runs
``slimedge convert --type auto --target-size Q4_K_M`` end to end on MoE, hybrid, Gemma 3n and Gemma 4 (their
KV-shared layers measured with exact partial forwards, :mod:`tests.calib.test_sensitivity_kv_shared`): the file
stays within the budget, holds the types the allocation chose, and runs in llama.cpp about as close to the float
model as llama.cpp's own mix of that size.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.factory import cached_hf_model
from tests.family_checks import convert


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    rows = np.asarray(a, dtype=np.float32).reshape(-1, a.shape[-1])
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("arch", ["qwen2moe", "gptoss", "qwen35",
                                  pytest.param("gemma3n", marks=pytest.mark.slow)])
def test_torch_tensor_holds_the_gguf_rows(arch, tmp_path):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from slimedge.calib.hf_weights import resolve
    from slimedge.calib.sensitivity import _hf_names
    from slimedge.convert import plan
    from slimedge.quant.allocate import quantizable

    src = cached_hf_model(arch=arch)
    f32 = convert(src, tmp_path / "f32.gguf", "f32")
    gguf = {t.name: np.asarray(t.data) for t in GGUFReader(str(f32)).tensors}
    names = {t.name: t.shape for t in quantizable(plan(src))}
    _, hf = _hf_names(src)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    params = dict(model.named_parameters(remove_duplicate=False))
    where = resolve(params, {n: hf[n] for n in names}, names)
    unread = [n for n, k in where.items() if k is None]
    regrouped = []
    for name, key in where.items():
        want = gguf[name]
        if key is None:  # no torch weight: the converter's zeros, which llama.cpp never reads
            assert not want.any(), name
            continue
        assert key in params, (name, key)
        got = params[key].detach().numpy()
        assert tuple(got.shape) == tuple(names[name]) == want.shape, (name, got.shape, want.shape)
        if not np.array_equal(_sorted_rows(got), _sorted_rows(want)):  # then the same columns, reordered
            np.testing.assert_array_equal(_sorted_rows(got.T), _sorted_rows(want.T), err_msg=name)
            regrouped.append(name.split(".", 2)[-1])
    # Qwen3.5's out projection takes the V heads regrouped: its columns are permuted in the GGUF, so the
    # sensitivity quantizes the same weights with blocks along transformers' column order (an approximation)
    assert set(regrouped) == ({"ssm_out.weight"} if arch == "qwen35" else set()), regrouped
    if arch == "gemma3n":  # the two KV-shared layers' K and V
        assert len(unread) == 4, unread
    else:
        assert not unread
    if arch in ("qwen2moe", "gptoss"):
        assert any(k.endswith("[gate]") for k in where.values())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2moe", "qwen35", "gemma3n", "gemma4"])
def test_auto_target_size_runs_in_llama_cpp(arch, tmp_path):
    from gguf import GGUFReader

    from slimedge.calib.sensitivity import auto_allocation
    from slimedge.convert import plan
    from tests.convert.convert_util import llama_logits, rel_err, sample_tokens

    # MoE and hybrid at k-quant widths; Gemma 3n/4 as the family tests build them (22 and 6 layers, rows of 64:
    # the 32-block candidates)
    src = cached_hf_model(arch=arch, kquant=True) if arch in ("qwen2moe", "qwen35") else cached_hf_model(arch=arch)
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"The {w} number {i} walks past {i * 7 % 13} red houses." for i, w in
                             enumerate(["first", "second", "third", "fourth", "fifth"] * 8)))
    sens = tmp_path / "sens.json"
    auto = convert(src, tmp_path / "auto.gguf", "auto", "--target-size", "Q4_K_M", "--calib", str(text),
                   "--sensitivity", str(sens))
    q4 = convert(src, tmp_path / "q4.gguf", "Q4_K_M")
    f32 = convert(src, tmp_path / "f32.gguf", "f32")

    # the allocation again, from the sensitivities the conversion saved (nothing measured twice)
    alloc = auto_allocation(src, text.read_text(), target_size="Q4_K_M", cache=sens)
    planned = {t.name: t.qtype.name for t in plan(src, alloc.spec()).tensors}
    tensors = GGUFReader(str(auto)).tensors
    got = {t.name: t.tensor_type.name for t in tensors}
    assert got == planned
    assert all(got[n] == q for n, q in alloc.types.items())
    assert len(set(alloc.types.values())) > 1, alloc.types  # a mix, not one type

    def data_bytes(p):
        return sum(int(t.n_bytes) for t in GGUFReader(str(p)).tensors)

    assert data_bytes(auto) == alloc.total_bytes <= alloc.budget <= data_bytes(q4)
    n_vocab = next(int(t.shape[-1]) for t in GGUFReader(str(f32)).tensors if t.name == "token_embd.weight")
    tokens = sample_tokens(n_vocab, bos=None)
    ref = llama_logits(f32, tokens)
    got = llama_logits(auto, tokens)
    assert np.isfinite(got).all()
    # as close to the float model as llama.cpp's own mix of the same size (random weights: routing flips
    # make the largest difference large for both; a broken tensor map makes it several times larger)
    err, err_q4 = rel_err(got, ref), rel_err(llama_logits(q4, tokens), ref)
    assert err < 1.5 * err_q4, (err, err_q4)
