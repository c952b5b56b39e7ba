"""transformers' logits computed the way llama.cpp's CPU graph computes Gemma 3n / Gemma 4, for tight parity tests
(and :func:`tune_refusal`, the one-line refusal both families get from ``slimedge tune``).

Two differences of llama.cpp's graph from transformers are put into the reference (each a float-level
effect, amplified by depth in random-init models; neither is in the converted file):

* GELU: ggml's CPU reads a table indexed by the input rounded to float16 and returns a float16
  (GGML_GELU_FP16); every ``gelu`` — the MLP's and the per-layer-embedding gate's — is made
  ``f16(gelu_tanh(f16(x)))``.
* Gemma 3n's activation sparsity (``gaussian_topk``): llama.cpp divides the squared deviations by n - 1,
  transformers' ``torch.std(..., unbiased=False)`` by n; ``unbiased_std=True`` makes the reference use n - 1.
  On the real E2B/E4B (n_ff 8192 / 16384) the cutoffs differ by 6e-5 / 3e-5 of a standard deviation; on a
  tiny model (n_ff 512) by 1e-3, which 22 random layers amplify to a different result.
"""

from __future__ import annotations

import contextlib

import numpy as np


@contextlib.contextmanager
def llama_cpp_numerics(unbiased_std: bool = False):
    import torch
    import transformers.models.gemma3n.modeling_gemma3n as g3n

    gelu, std = torch.nn.functional.gelu, torch.std

    def ggml_gelu(x, approximate="none"):
        y = gelu(x.half().float(), approximate="tanh").half().float()
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))

    class _Torch:  # torch as gemma3n's module sees it, with std(..., unbiased=True)
        def __getattr__(self, name):
            if name == "std":
                return lambda x, dim=None, keepdim=False, unbiased=True: std(x, dim=dim, keepdim=keepdim,
                                                                              unbiased=True)
            return getattr(torch, name)

    torch.nn.functional.gelu = ggml_gelu
    if unbiased_std:
        g3n.torch = _Torch()
    try:
        yield
    finally:
        torch.nn.functional.gelu = gelu
        g3n.torch = torch


def reference_logits(hf_dir, tokens: list[int], unbiased_std: bool = False) -> np.ndarray:
    """float32[len(tokens), n_vocab]: transformers with llama.cpp's GELU (and, optionally, sparsity std)."""
    from tests.convert.convert_util import hf_logits

    with llama_cpp_numerics(unbiased_std):
        return hf_logits(hf_dir, tokens)  # the model is built inside: its GELUs bind the patched function


def tune_refusal(hf, tmp_path) -> str:
    """``slimedge tune`` on a Q4_K_M of ``hf``: its one-line refusal (llama.cpp's Gemma embeddings are scaled at
    run time, which tune's quantized embedding does not reproduce)."""
    from click.testing import CliRunner
    from tests.family_checks import convert

    from slimedge.cli import main

    q4 = convert(hf, tmp_path / "tune-q4.gguf", "Q4_K_M")
    (tmp_path / "d.txt").write_text("hello world\nanother line of text\n")
    r = CliRunner().invoke(main, ["tune", str(q4), "--teacher", str(hf), "--data", str(tmp_path / "d.txt"),
                                  "-o", str(tmp_path / "t.gguf"), "--steps", "1", "--seq-len", "8"])
    assert r.exit_code != 0 and not (tmp_path / "t.gguf").exists()
    return r.output.strip()
