"""OLMo 3 end to end through llama.cpp (as ``olmo2`` with a sliding window): logits with three sliding layers
(window 8 < the 25 sample tokens, so the window matters) and one global layer with YaRN (x8 over 32 positions,
Olmo-3 Think's kind), dolma2-style byte-level BPE (llama.cpp ``dbrx``), every mix vs llama_model_quantize,
end of generation, and the KV cache estimate vs what llama.cpp allocates."""

from __future__ import annotations

import pytest
from tests.factory import cached_hf_model
from tests.family_checks import (check_generation_stops, check_logits, check_mixes, check_tokenization, convert,
                                 eog_ids)

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each


def test_olmo3_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="olmo3", kquant=True)
    errs = check_logits(hf, tmp_path)
    assert errs["f32"] < errs["f16"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    meta = read_info(f32).metadata
    assert meta["general.architecture"] == "olmo2" and meta["tokenizer.ggml.pre"] == "dbrx"
    assert meta["olmo2.attention.sliding_window"] == 8
    assert list(meta["olmo2.attention.sliding_window_pattern"]) == [True, True, True, False]
    assert meta["olmo2.rope.scaling.type"] == "yarn"
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["blk.3.post_ffw_norm.weight"] == "F32"
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))


def test_olmo3_window_changes_the_logits(tmp_path):
    """The same weights with a window wider than the sample give the same logits for the first 8 positions and
    other ones later: the parity above depends on the 8-token window."""
    import numpy as np
    from tests.convert.convert_util import llama_logits, sample_tokens

    hf = cached_hf_model(arch="olmo3")
    windowed = convert(hf, tmp_path / "w.gguf", "f32")
    nowindow = cached_hf_model(arch="olmo3", sliding_window=64)
    full = convert(nowindow, tmp_path / "n.gguf", "f32")
    tokens = sample_tokens(read_info(windowed).metadata["olmo2.vocab_size"])
    a, b = llama_logits(windowed, tokens), llama_logits(full, tokens)
    assert np.allclose(a[:8], b[:8], atol=1e-4) and not np.allclose(a[-1], b[-1], atol=1e-2)


def test_olmo3_kv_cache_estimate_equals_llama_cpp_with_and_without_swa_full(tmp_path):
    """The sliding layers hold pad256(window + ubatch) cells once llama.cpp's swa_full is off; the estimate
    (slimedge.memory, from the GGUF's window and pattern keys) counts the same bytes llama.cpp allocates."""
    import re
    import subprocess
    import sys

    from slimedge.memory import MiB, kv_bytes_per_layer, layer_cells, shape_from_gguf

    hf = cached_hf_model(arch="olmo3", kquant=True)
    out = convert(hf, tmp_path / "m.gguf", "f16")
    shape = shape_from_gguf(out)
    assert shape.n_swa == 8 and shape.swa_layers == (True, True, True, False)
    n_ctx, n_ubatch = 2048, 512
    for swa_full in (True, False):
        ours = sum(kv_bytes_per_layer(shape, layer_cells(shape, i, n_ctx, n_ubatch, swa_full), layer=i)
                   for i in range(shape.n_layer))
        code = (f"import llama_cpp; llama_cpp.Llama(model_path={str(out)!r}, n_ctx={n_ctx}, n_batch={n_ubatch}, "
                f"n_ubatch={n_ubatch}, swa_full={swa_full}, n_threads=1, verbose=True)")
        log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
        caches = re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers", log)
        assert caches, log[-2000:]
        # llama.cpp logs MiB with two decimals: each line is within 0.005 MiB
        assert sum(float(m) for m, _, _ in caches) * MiB == pytest.approx(ours, abs=0.005 * MiB * len(caches))
        want = {(2048, 1), (2048 if swa_full else 768, 3)}  # (cells, layers): the global cache, the sliding one
        assert {(int(c), int(n)) for _, c, n in caches} == want, caches
    assert layer_cells(shape, 0, n_ctx, n_ubatch, False) == 768 and layer_cells(shape, 3, n_ctx, n_ubatch, False) == 2048
