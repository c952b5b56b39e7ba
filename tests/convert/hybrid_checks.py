"""Checks of the hybrid / recurrent families against llama.cpp itself, shared by their end-to-end tests.

* :func:`reference_gguf` runs llama.cpp's own converter (the pinned sdist's ``convert_hf_to_gguf.py``) on a
  checkpoint, in a child process. Our tokenizers are trained locally, so their vocabulary hash is not in
  the converter's list: the pre-tokenizer name it would look up is given instead (the one slimedge
  identified from the split regex — tests/vocab checks that identification on its own).
* :func:`same_tensors_as` asserts two GGUF files hold the same tensors, byte for byte.
* :func:`llama_cpp_state_mib` reads the KV-cache and recurrent-state sizes llama.cpp logs for a context.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from tests.llama_src import llama_cpp_convert


def reference_gguf(hf_dir: Path, out: Path, pre: str, *extra: str) -> Path:
    """llama.cpp's converter's F32 GGUF of ``hf_dir`` (``extra``: its options, e.g. ``--no-mtp``)."""
    return llama_cpp_convert(hf_dir, out, "f32", pre, extra)


def same_tensors_as(ours: Path, theirs: Path) -> list[str]:
    """Both files hold the same tensor names, shapes, types and bytes; returns the names.

    One exception: ``ssm_a`` = -exp(A_log) may differ in the last bit — llama.cpp's converter takes torch's float32
    exp, which is not always correctly rounded; slimedge rounds the float64 exp once."""
    from gguf import GGUFReader

    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    assert sorted(a) == sorted(b), (sorted(set(a) - set(b)), sorted(set(b) - set(a)))
    for name in a:
        x, y = a[name], b[name]
        assert (x.tensor_type, list(x.shape)) == (y.tensor_type, list(y.shape)), name
        if name.endswith(".ssm_a"):
            np.testing.assert_array_max_ulp(np.asarray(x.data), np.asarray(y.data), maxulp=1)
            continue
        assert np.array_equal(np.asarray(x.data), np.asarray(y.data)), name
    return sorted(a)


def llama_cpp_state_mib(gguf: Path, n_ctx: int) -> dict[str, float]:
    """``llama_kv_cache`` / ``llama_memory_recurrent`` sizes (MiB) llama.cpp logs creating a context of ``n_ctx``
    (a child process: llama.cpp logs through one process-wide callback)."""
    code = f"import llama_cpp; llama_cpp.Llama(model_path={str(gguf)!r}, n_ctx={n_ctx}, n_threads=1, verbose=True)"
    log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
    sizes = {}
    for kind in ("llama_kv_cache", "llama_memory_recurrent"):
        m = re.search(rf"^{kind}: size = +([0-9.]+) MiB", log, re.M)
        if m:
            sizes[kind] = float(m.group(1))
    assert sizes, log[-2000:]
    return sizes
