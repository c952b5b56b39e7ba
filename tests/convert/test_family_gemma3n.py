"""Gemma 3n end to end through llama.cpp, on a model built as E2B is (tests/factory.py "gemma3n"): 22 layers, 4:1
sliding/full with a window of 8 < the 25 sample tokens, the last two layers reusing the KV of layers 18/19
(llama.cpp's gemma3n keeps a KV cache for the first 20 layers only), activation sparsity 0.95 on layers 0-9, AltUp
with 4 inputs, LAuReL rank 64, 256 per-layer-embedding dims, and a PLE table 24 rows short of the vocabulary (as
E2B's 262144 of 262400).

Where llama.cpp's graph differs from transformers, and what the test compares against: llama.cpp's
``gaussian_topk`` divides by n - 1 where transformers' ``torch.std(unbiased=False)`` divides by n (1e-3 of a
standard deviation at this n_ff of 512, 6e-5 at E2B's 8192); over 22 random layers that alone moves the logits by
~4e-2 of their spread. The reference is therefore transformers with llama.cpp's std and its float16 GELU table
(tests/convert/gemma_ref.py); the plain transformers reference is checked too, looser. The file's weights are
exactly llama.cpp's converter's (checked by hand with the sdist's convert_hf_to_gguf.py: every tensor byte-equal,
the metadata too but vocab_size; only slimedge's file has the shared layers' k/v, which transformers 5 does not
save and llama.cpp's loader needs — zeros; the converter's file fails to load without them. The PLE padding rows
are copies of row 0, as transformers reads those ids; the converter zero-fills them: the same bytes here, where
row 0 is the pad token's, zero from its padding_idx).
"""

from __future__ import annotations

import pytest
from tests.convert.gemma_ref import reference_logits, tune_refusal
from tests.factory import cached_hf_model
from tests.family_checks import check_generation_stops, check_mixes, check_tokenization, convert, eog_ids

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each

E2B = dict(arch="gemma3n", kquant=True, pad_vocab=24, vocab_size_per_layer_input=1000)
# against the llama.cpp-numerics reference; measured f32 2.6e-3, f16 2.4e-2, bf16 0.20, q8_0 0.58 (22 random
# layers with 95% activation sparsity amplify any weight rounding; the quantized types' bytes are checked
# against llama_model_quantize instead, by check_mixes)
TOL = {"F32": 6e-3, "F16": 6e-2, "BF16": 0.4, "Q8_0": 1.0}
PLAIN_TOL = 8e-2  # plain transformers (std over n, exact GELU): measured 3.6e-2


def test_gemma3n_e2b_style_end_to_end(tmp_path):
    from tests.convert.convert_util import hf_logits, llama_logits, rel_err, sample_tokens

    hf = cached_hf_model(**E2B)
    tokens = sample_tokens(1024, bos=2)  # ids past 1000 read the padded PLE rows
    want = reference_logits(hf, tokens, unbiased_std=True)
    errs = {}
    for typ in TOL:
        out = convert(hf, tmp_path / f"model-{typ}.gguf", typ)
        errs[typ] = rel_err(llama_logits(out, tokens), want)
    assert all(errs[t] < TOL[t] for t in TOL), errs
    f32 = tmp_path / "model-F32.gguf"
    plain = rel_err(llama_logits(f32, tokens), hf_logits(hf, tokens))
    assert errs["F32"] * 4 < plain < PLAIN_TOL, (plain, errs)  # the std difference is real, and small
    m = read_info(f32).metadata
    assert m["gemma3n.attention.shared_kv_layers"] == 2 and m["gemma3n.embedding_length_per_layer_input"] == 256
    assert list(m["gemma3n.attention.sliding_window_pattern"]) == [i % 5 != 4 for i in range(21)] + [False]
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert types["Q4_K_M"]["altup_proj.weight"] == "F32" and types["Q4_K_M"]["blk.0.laurel_l.weight"] == "F32"
    assert eog_ids(hf) == {1, 7}
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), {1, 7})


def test_gemma3n_kv_cache_estimate_matches_llama_cpp(tmp_path):
    """20 layers with a cache (4 full, 16 sliding), the 2 shared ones without: what llama.cpp logs for its two
    caches, with and without a full-size sliding cache."""
    import re
    import subprocess
    import sys

    from slimedge.memory import MiB, kv_bytes_per_layer, layer_cells, shape_from_gguf

    f16 = convert(cached_hf_model(**E2B), tmp_path / "g3n.gguf", "F16")
    shape = shape_from_gguf(f16)
    assert shape.n_head_kv_layers == (1,) * 20 + (0, 0)
    for swa_full in (False, True):
        code = (f"import llama_cpp; llama_cpp.Llama(model_path={str(f16)!r}, n_ctx=1024, n_batch=256, n_ubatch=256, "
                f"n_threads=1, swa_full={swa_full}, verbose=True)")
        log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
        caches = re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers", log)
        assert sorted(int(n) for _, _, n in caches) == [4, 16], log[-1500:]
        got = sum(float(x) for x, _, _ in caches) * MiB
        want = sum(kv_bytes_per_layer(shape, layer_cells(shape, i, 1024, 256, swa_full), "f16", "f16", i)
                   for i in range(shape.n_layer))
        assert got == pytest.approx(want, rel=1e-3), (swa_full, got, want)


def test_gemma3n_tune_refuses_in_one_line(tmp_path):
    msg = tune_refusal(cached_hf_model(**E2B), tmp_path)
    assert "embedding scaled at run time" in msg and "\n" not in msg, msg
