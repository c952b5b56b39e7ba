"""Whole-model check: `slimedge convert HF --type MIX` writes what llama.cpp's own quantizer writes.

For each mix, llama.cpp (``llama_cpp.llama_model_quantize``, the llama-quantize code path) requantizes
slimedge's F32 GGUF of the same tiny model (rows a multiple of 256, so k-quants apply). The two files
must have the same tensors in the same types with identical bytes and the same general.file_type, and
slimedge's file must load in llama.cpp, give exactly the logits of llama.cpp's file and generate.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from tests.convert.convert_util import llama_logits, llama_quantize, same_tensors, sample_tokens
from tests.factory import cached_hf_model

from slimedge.cli import main
from slimedge.gguf_info import read_info
from slimedge.quant.mixes import MIXES

CASES = [  # (model, mix); the qwen2 model has tied embeddings and attention biases
    ("llama", "Q4_K_M"), ("llama", "Q2_K"), ("llama", "Q3_K_M"), ("llama", "Q5_K_M"), ("llama", "Q6_K"),
    ("qwen2_tied", "Q4_K_M"),
]
MODELS = {"llama": dict(arch="llama", kquant=True), "qwen2_tied": dict(arch="qwen2", kquant=True, tied=True)}


def _convert(src, out, typ, *options):
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--type", typ, "-q", "-t", "2", *options])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    """model key -> (HF folder, slimedge's F32 GGUF of it)."""
    root = tmp_path_factory.mktemp("whole")
    out = {}
    for key, kw in MODELS.items():
        hf = cached_hf_model(**kw)
        out[key] = hf, _convert(hf, root / f"{key}-f32.gguf", "F32")
    return out


@pytest.mark.parametrize("model,mix", CASES)
def test_convert_equalsllama_quantize(f32, tmp_path, model, mix):
    hf, f32_gguf = f32[model]
    ours = _convert(hf, tmp_path / "slimedge.gguf", mix)
    theirs = llama_quantize(f32_gguf, tmp_path / "llama.gguf", MIXES[mix][0])

    types = same_tensors(ours, theirs)
    a = read_info(ours)
    assert a.metadata["general.file_type"] == MIXES[mix][0]
    assert len(set(types.values())) >= (2 if mix == "Q6_K" else 3)  # a real mix: several types

    # it runs: same logits as llama.cpp's own file (same bytes, same metadata), and it generates
    tokens = sample_tokens(int(a.metadata.get(f"{a.arch}.vocab_size", 0)) or
                           len(a.metadata["tokenizer.ggml.tokens"]), bos=a.metadata.get("tokenizer.ggml.bos_token_id"))
    la, lb = llama_logits(ours, tokens), llama_logits(theirs, tokens)
    assert np.isfinite(la).all() and np.array_equal(la, lb)
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(ours), n_ctx=64, n_threads=2, verbose=False)
    try:
        out = llm.create_completion("Once upon a time", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
    finally:
        llm.close()


def test_numpy_backend_gives_the_same_file(f32, tmp_path, monkeypatch):
    """The NumPy reference path writes the same bytes as the C kernels."""
    from slimedge import _kernels
    from slimedge.quant import backend as qb

    hf, _ = f32["llama"]
    monkeypatch.setattr(qb, "_K", _kernels)
    monkeypatch.setattr(qb, "_WHY_NOT", "")
    default = _convert(hf, tmp_path / "default.gguf", "Q4_K_M")
    monkeypatch.setattr(qb, "_K", None)
    monkeypatch.setattr(qb, "_WHY_NOT", "selected by the test")
    numpy_path = _convert(hf, tmp_path / "numpy.gguf", "Q4_K_M")
    assert default.read_bytes() == numpy_path.read_bytes()


def test_cli_overrides_equalllama_quantize(f32, tmp_path):
    """--tensor-type (repeatable, first match, pattern case-insensitive as llama-quantize lower-cases it),
    --output-tensor-type and --token-embedding-type, then --pure, through `slimedge convert`."""
    from gguf import GGMLQuantizationType as T

    hf, f32_gguf = f32["llama"]
    ours = _convert(hf, tmp_path / "o.gguf", "Q3_K_M", "--tensor-type", r"BLK\.0\.ATTN_V=q8_0",
                    "--tensor-type", "attn_v=q5_0", "--tensor-type", "ffn_up=Q6_K",
                    "--output-tensor-type", "q4_k", "--token-embedding-type", "q5_k")
    theirs = llama_quantize(f32_gguf, tmp_path / "t.gguf", MIXES["Q3_K_M"][0],
                             overrides=[(r"blk\.0\.attn_v", T.Q8_0), ("attn_v", T.Q5_0), ("ffn_up", T.Q6_K)],
                             output_tensor_type=int(T.Q4_K), token_embedding_type=int(T.Q5_K))
    types = same_tensors(ours, theirs)
    assert types["blk.0.attn_v.weight"] == "Q8_0" and types["blk.1.attn_v.weight"] == "Q5_0"
    assert types["output.weight"] == "Q4_K" and types["token_embd.weight"] == "Q5_K"
    ours = _convert(hf, tmp_path / "p.gguf", "Q4_K_M", "--pure")
    theirs = llama_quantize(f32_gguf, tmp_path / "q.gguf", MIXES["Q4_K_M"][0], pure=True)
    assert set(same_tensors(ours, theirs).values()) == {"Q4_K", "F32"}
