"""Shared helpers for the tests that hold slimedge against llama.cpp: reference logits (transformers, also
with ggml's float16 GELU) and llama.cpp's logits; llama.cpp's own quantizer (``llama_quantize``, the one
wrapper of ``llama_model_quantize``, with overrides, importance data and key overrides; ``llama_imatrix_args``
reads an imatrix file as llama-quantize does); and a tensor-by-tensor byte comparison (``same_tensors``)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
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


# Gemma's GELU: llama.cpp's CPU reads a float16-indexed table (ggml-cpu vec.h, GGML_GELU_FP16), ~1e-3 of the
# logits' spread alone. GELU_TOL: the plain transformers reference (measured 1.1e-3 .. 3e-3); GELU_TIGHT: with
# that rounding put into the reference (measured 1.6e-5 for 2 layers .. 1.6e-3 for 6).
GELU_TOL = {"f32": 1e-2}
GELU_TIGHT = 3e-3


def ggml_gelu_logits(hf_dir, tokens: list[int]) -> np.ndarray:
    """transformers' logits with the MLP activation as ggml's CPU computes it: f16(gelu_tanh(f16(x)))."""
    import torch
    from transformers import AutoModelForCausalLM

    class GgmlGelu(torch.nn.Module):
        def forward(self, x):
            y = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
            return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    n = 0
    for mod in model.modules():
        if hasattr(mod, "act_fn") and hasattr(mod, "gate_proj"):
            mod.act_fn, n = GgmlGelu(), n + 1
    assert n, "no Gemma MLP found"
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def gelu_f32_err(hf_dir, f32) -> float:
    """rel_err of a Gemma-style F32 GGUF's llama.cpp logits against ``ggml_gelu_logits``."""
    md = read_info(f32).metadata
    tokens = sample_tokens(int(md[f"{md['general.architecture']}.vocab_size"]), bos=2)
    return rel_err(llama_logits(f32, tokens), ggml_gelu_logits(hf_dir, tokens))


def silence_llama() -> None:
    """Route llama.cpp's log lines to nowhere (its quantizer prints a line per tensor)."""
    import llama_cpp

    @llama_cpp.llama_log_callback
    def _quiet(level, text, user_data):
        pass

    silence_llama.cb = _quiet  # keep the callback alive
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))


def llama_quantize(src, dst, ftype: int, *, overrides=(), imatrix: dict | None = None, kv_overrides=(), **params):
    """Run llama.cpp's quantizer (llama-quantize's code path: ``llama_model_quantize``); returns ``dst``.

    ``overrides``: (lower-case regex, GGML type) as llama-quantize passes ``--tensor-type``; ``imatrix``:
    tensor name -> importance values (float[n_mat * n_cols]); ``kv_overrides``: (key, str or int) metadata
    llama-quantize writes; ``params``: any other field of ``llama_model_quantize_params``.
    """
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = ftype, 2
    for k, v in params.items():
        setattr(p, k, v)
    keep = []  # the C structs point into these buffers until the call returns
    if overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, typ) in enumerate(overrides):
            keep.append(pattern.encode())
            arr[i].pattern, arr[i].type = keep[-1], int(typ)
        arr[len(overrides)].pattern = None
        p.tt_overrides = arr
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, vals) in enumerate(imatrix.items()):
            vals = np.ascontiguousarray(np.reshape(vals, -1), dtype=np.float32)
            keep += [name.encode(), vals]
            arr[i].name, arr[i].size = keep[-2], vals.size
            arr[i].data = vals.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[len(imatrix)].name = None
        p.imatrix = arr
    if kv_overrides:
        kv = (llama_cpp.llama_model_kv_override * (len(kv_overrides) + 1))()
        for o, (key, v) in zip(kv, kv_overrides):
            o.key = key.encode()
            if isinstance(v, str):
                o.tag, o.value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, v.encode()[:127]
            else:
                o.tag, o.value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, v
        kv[len(kv_overrides)].key = b""
        p.kv_overrides = kv
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    assert rc == 0, f"llama.cpp failed to quantize {src} to ftype {ftype}"
    return dst


def importance_from_file(path) -> dict[str, np.ndarray]:
    """name -> float32[n_mat, n_cols] of an imatrix GGUF: in_sum2 / counts, 1 for a count of 0 (gguf-py)."""
    r = gguf.GGUFReader(str(path))
    t = {x.name: np.asarray(x.data, dtype=np.float32) for x in r.tensors}
    out = {}
    for name in t:
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            counts = t[base + ".counts"].reshape(-1)
            sums = t[name].reshape(counts.size, -1)
            out[base] = np.stack([s / c if c > 0 else np.ones_like(s) for s, c in zip(sums, counts)])
    return out


def llama_imatrix_args(imx_path) -> dict:
    """The ``llama_quantize`` arguments llama-quantize builds from an imatrix file: the importance data and
    the ``quantize.imatrix.*`` keys it records."""
    imp = dict(sorted(importance_from_file(imx_path).items()))
    md = read_info(imx_path).metadata
    keys = [("quantize.imatrix.file", str(imx_path)), ("quantize.imatrix.dataset", md["imatrix.datasets"][0]),
            ("quantize.imatrix.entries_count", len(imp)), ("quantize.imatrix.chunks_count", md["imatrix.chunk_count"])]
    return dict(imatrix=imp, kv_overrides=keys)


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
