"""``slimedge convert ADAPTER --base BASE --merge``: the adapter folded into the base in the streaming pass
equals converting the checkpoint peft's ``merge_and_unload`` saves."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from slimedge.errors import SlimedgeError
from tests.factory import cached_hf_model
from tests.lora.helpers import ALL_LINEAR, make_adapter


def _peft_merged(base, adapter, out):
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    for f in base.iterdir():  # the tokenizer files
        if f.name.startswith(("tokenizer", "special_tokens")) and not (out / f.name).exists():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _tensors(path):
    return {t.name: (t.tensor_type, np.asarray(t.data).copy()) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.slow
@pytest.mark.parametrize("arch,ftype,targets", [
    ("llama", "F32", ALL_LINEAR + ["embed_tokens", "lm_head"]),
    ("llama", "Q4_K_M", ALL_LINEAR),
    ("qwen3", "Q8_0", ALL_LINEAR),
])
def test_merge_equals_merged_checkpoint(arch, ftype, targets, tmp_path):
    from slimedge.adapter import convert_merged
    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec

    base = cached_hf_model(arch=arch, kquant=ftype.startswith("Q4_K"))
    adapter = make_adapter(base, tmp_path / "adapter", targets=targets, r=4, alpha=12)
    ours = convert_merged(adapter, base, tmp_path / "ours.gguf", QuantSpec(ftype)).out
    theirs = convert(_peft_merged(base, adapter, tmp_path / "merged"), tmp_path / "theirs.gguf", QuantSpec(ftype)).out
    a, b = _tensors(ours), _tensors(theirs)
    assert list(a) == list(b)
    plain = _tensors(convert(base, tmp_path / "plain.gguf", QuantSpec(ftype)).out)
    changed = [n for n in a if not np.array_equal(a[n][1], plain[n][1])]
    assert len(changed) >= len(ALL_LINEAR) * 2  # the adapter reached every targeted tensor
    same = [n for n in a if np.array_equal(a[n][1], b[n][1])]
    assert len(same) == len(a), f"differ: {sorted(set(a) - set(same))}"


def test_merge_refuses_another_base(tmp_path):
    from slimedge.adapter import convert_merged

    adapter = make_adapter(cached_hf_model(arch="llama"), tmp_path / "adapter", targets=["q_proj"])
    with pytest.raises(SlimedgeError, match="another base model"):
        convert_merged(adapter, cached_hf_model(arch="llama", hidden_size=128), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
