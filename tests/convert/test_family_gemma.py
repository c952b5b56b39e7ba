"""Gemma 2 and Gemma 3 (text, and the language model of a Gemma3ForConditionalGeneration) end to end.

The models slide a window of 8 over the harness's 25 tokens, soft-cap attention and logits (Gemma 2),
use a head_dim unlike hidden/heads and a query_pre_attn_scalar unlike head_dim, and Gemma 3 ropes its
global layer (layer 5 of 6) with base 1e6 and linear scaling x8, its local layers with base 1e4.

F32 tolerance: llama.cpp's CPU GELU reads a table indexed by the input rounded to float16 and returns a
float16 (ggml-cpu vec.h, GGML_GELU_FP16), which alone costs ~1e-3 of the logits' spread on these models.
``test_*_f32_matches_with_ggml_gelu`` puts that rounding into the transformers reference: the error left is
what a float32 input that lands on the other side of a float16 rounding boundary now and then adds.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from tests.convert.convert_util import GELU_TIGHT, GELU_TOL, gelu_f32_err
from tests.factory import cached_hf_model, copy_model
from tests.family_checks import check_generation_stops, check_logits, check_mixes, check_tokenization, convert, eog_ids

from slimedge.gguf_info import read_info

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each

def _meta(path):
    return read_info(path).metadata


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gemma_family_end_to_end(tmp_path, arch):
    hf = cached_hf_model(arch=arch, kquant=True, head_dim=256)  # real Gemma's head_dim; rows fit 256-blocks
    errs = check_logits(hf, tmp_path, tol=GELU_TOL)
    assert errs["f32"] < errs["q8_0"]
    f32 = tmp_path / "model-f32.gguf"
    assert gelu_f32_err(hf, f32) < GELU_TIGHT
    m = _meta(f32)
    assert m[f"{arch}.attention.sliding_window"] == 8 and m[f"{arch}.attention.key_length"] == 256
    if arch == "gemma2":
        assert m["gemma2.attn_logit_softcapping"] == 3.0 and m["gemma2.final_logit_softcapping"] == 5.0
        assert "output.weight" not in {t.name for t in read_info(f32).tensors}
    else:
        assert m["gemma3.rope.freq_base_swa"] == 10000.0 and m["gemma3.rope.freq_base"] == 1e6
        assert m["gemma3.rope.scaling.type"] == "linear" and m["gemma3.rope.scaling.factor"] == 8.0
    assert m["tokenizer.ggml.add_space_prefix"] is False
    check_tokenization(hf, f32, samples=_samples())
    _check_turn_markers(hf, f32)
    types = check_mixes(hf, tmp_path, f32=f32)
    assert len(set(types["Q4_K_M"].values())) >= 3
    eog = eog_ids(hf)
    assert eog == {1, 7}  # <eos> and <end_of_turn> (generation_config.json)
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog)


def _samples():
    from tests.family_checks import SAMPLES

    return SAMPLES + ["  two  spaces", "no dummy prefix: 'Hello' and ' Hello' differ"]


TURN = "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"


def _check_turn_markers(hf_dir, gguf) -> None:
    """The turn markers are one token each, in llama.cpp (parsing specials) as in transformers."""
    import llama_cpp
    from transformers import AutoTokenizer

    want = AutoTokenizer.from_pretrained(hf_dir).encode(TURN, add_special_tokens=False)
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        got = llm.tokenize(TURN.encode(), add_bos=False, special=True)
    finally:
        llm.close()
    assert got == want and got[0] == 6 and 7 in got, (got, want)


def test_gemma3_multimodal_checkpoint_converts_the_language_model(tmp_path, caplog):
    hf = cached_hf_model(arch="gemma3_mm")
    with caplog.at_level(logging.INFO, logger="slimedge"):
        errs = check_logits(hf, tmp_path, types=("f32",), tol=GELU_TOL)
    vision = [r for r in caplog.records if "vision tower" in r.getMessage()]  # no warning: it is the mmproj's
    assert len(vision) == 1 and "goes to the mmproj" in vision[0].getMessage() and vision[0].levelno == logging.INFO
    f32 = tmp_path / "model-f32.gguf"
    names = {t.name for t in read_info(f32).tensors}
    assert "output.weight" in names and not [n for n in names if n.startswith(("v.", "mm."))]
    assert gelu_f32_err(hf, f32) < GELU_TIGHT, errs


def test_gemma_tokenizer_json_only(tmp_path):
    """What transformers 5 saves for Gemma: tokenizer.json (Replace normalizer, no dummy prefix), no .model."""
    from transformers import AutoTokenizer

    hf = copy_model(cached_hf_model(arch="gemma2"), tmp_path / "m")
    AutoTokenizer.from_pretrained(hf).save_pretrained(tmp_path / "tok")
    (hf / "tokenizer.model").unlink()
    for f in (tmp_path / "tok").iterdir():
        shutil.copy(f, hf / f.name)
    f32 = convert(hf, tmp_path / "f32.gguf", "F32")
    assert _meta(f32)["tokenizer.ggml.add_space_prefix"] is False
    check_tokenization(hf, f32, samples=_samples())
    _check_turn_markers(hf, f32)
    tokens = _meta(f32)["tokenizer.ggml.tokens"]
    assert np.asarray(tokens[:8]).tolist() == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]",
                                               "<start_of_turn>", "<end_of_turn>"]


def test_sliding_window_kv_cache_matches_llama_cpp(tmp_path):
    """The estimate's per-layer KV cells (slimedge.memory.layer_cells) are the cells llama.cpp logs for its
    non-SWA and SWA caches, with and without swa_full."""
    import re
    import subprocess
    import sys

    from slimedge.memory import layer_cells, shape_from_gguf

    f32 = convert(cached_hf_model(arch="gemma3"), tmp_path / "g3.gguf", "F32")
    shape = shape_from_gguf(f32)
    assert shape.n_swa == 8 and shape.swa_layers == (True,) * 5 + (False,)
    for swa_full in (False, True):
        code = (f"import llama_cpp; llama_cpp.Llama(model_path={str(f32)!r}, n_ctx=2048, n_batch=256, n_ubatch=256, "
                f"n_threads=1, swa_full={swa_full}, verbose=True)")
        log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
        got = sorted((int(c), int(n)) for c, n in re.findall(r"llama_kv_cache: size = .*?\(\s*(\d+) cells,\s*(\d+) layers",
                                                             log))
        cells = [layer_cells(shape, i, 2048, 256, swa_full) for i in range(shape.n_layer)]
        want = sorted((c, cells.count(c)) for c in set(cells)) if not swa_full else [(2048, 1), (2048, 5)]
        assert got == want, (swa_full, got, log[-2000:])
    assert layer_cells(shape, 0, 2048, 256, False) == 512  # pad256(8 + 256)
