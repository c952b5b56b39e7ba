"""Shared helpers for the converter tests: reference logits (transformers) and llama.cpp logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
