"""EXAONE 4 end to end through llama.cpp (``exaone4``), as EXAONE-4.0-1.2B ships: no window (every layer
ropes in both runtimes), post-norms, per-head q/k norms, head_dim != hidden/heads, tied output; GPT-2-split
byte-level BPE (llama.cpp's "exaone4" pre-tokenizer is GPT-2's regex), every mix vs llama_model_quantize,
end of generation. The 32B's window (64 layers only in llama.cpp) is covered by tests/arch."""

from __future__ import annotations

import pytest

from slimedge.gguf_info import read_info
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_exaone4_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="exaone4", kquant=True, tied=True)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    assert info.metadata["general.architecture"] == "exaone4" and "output.weight" not in [t.name for t in info.tensors]
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.0.attn_q_norm.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
