"""Shared helpers for the converter tests: reference logits (transformers) and llama.cpp logits,
llama.cpp's own quantizer (``llama_quantize``) and a tensor-by-tensor byte comparison (``same_tensors``)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES

from slimedge.gguf_info import read_info

# token ids fed to both runtimes: bos, then a fixed spread over the vocabulary (and a repeat, so
# attention over equal keys is exercised)
def sample_tokens(n_vocab: int, bos: int | None = 1, n: int = 24, seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, n_vocab, size=n).tolist()
    ids[10:14] = ids[2:6]
    return ([bos] if bos is not None else []) + ids


def hf_logits(model_dir: Path, tokens: list[int]) -> np.ndarray:
    """float32[len(tokens), n_vocab] from transformers (weights upcast to float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def llama_logits(gguf_path: Path, tokens: list[int]) -> np.ndarray:
    """float32[len(tokens), n_vocab] from llama.cpp (llama-cpp-python), all positions."""
    import llama_cpp

    # F32 KV cache (the default F16 cache alone costs ~1e-3 relative error)
    llm = llama_cpp.Llama(model_path=str(gguf_path), logits_all=True, n_ctx=64, n_batch=64, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference relative to the spread (std) of the reference logits."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / want.std())


def llama_quantize(src, dst, ftype: int, overrides=(), **params):
    """llama.cpp's quantizer; ``overrides``: (lower-case regex, GGML type) as llama-quantize passes them."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = ftype, 2
    for k, v in params.items():
        setattr(p, k, v)
    keep = [pattern.encode() for pattern, _ in overrides]
    if overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (_, typ) in enumerate(overrides):
            arr[i].pattern, arr[i].type = keep[i], int(typ)
        arr[len(overrides)].pattern = None
        p.tt_overrides = arr
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) == 0
    return dst


def same_tensors(ours, theirs) -> dict[str, str]:
    """Assert equal tensor types and bytes (reporting identical blocks where not); returns name -> type."""
    a, b = read_info(ours), read_info(theirs)
    assert a.metadata["general.file_type"] == b.metadata["general.file_type"]
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert {n: t.type for n, t in ta.items()} == {n: t.type for n, t in tb.items()}
    with open(ours, "rb") as fa, open(theirs, "rb") as fb:
        ra, rb = fa.read(), fb.read()
    bad = []
    for name, t in ta.items():
        u = tb[name]
        da, db = ra[t.offset:t.offset + t.n_bytes], rb[u.offset:u.offset + u.n_bytes]
        if da != db:
            bad.append(f"{name} {t.type}: {_block_report(da, db, t.qtype)}")
    assert not bad, "tensor bytes differ from llama.cpp's:\n" + "\n".join(bad)
    return {n: t.type for n, t in ta.items()}


def _block_report(a: bytes, b: bytes, qtype) -> str:
    size = GGML_QUANT_SIZES[qtype][1]
    x = np.frombuffer(a, np.uint8).reshape(-1, size)
    y = np.frombuffer(b, np.uint8).reshape(-1, size)
    same = (x == y).all(axis=1)
    worst = int(np.argmin(same))
    return f"{same.mean():.2%} of {len(same)} blocks identical; first differing block {worst}"
