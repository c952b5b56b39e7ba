"""Memory estimate and --dry-run on a family whose head_dim is not hidden/heads (Qwen3): the KV cache comes
from attention.key_length/value_length and equals what llama.cpp allocates for the converted file."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from tests.factory import cached_hf_model

from slimedge.cli import main
from slimedge.memory import MiB, kv_bytes_per_layer, shape_from_gguf

pytestmark = pytest.mark.slow  # converts and loads the file in llama.cpp


def llama_cpp_kv_bytes(gguf, n_ctx: int) -> float:
    """The KV cache size llama.cpp reports when it loads ``gguf`` with an f16 cache of ``n_ctx`` cells.

    Loaded in a child process: llama.cpp logs through one process-wide callback, which other tests replace.
    """
    code = f"import llama_cpp; llama_cpp.Llama(model_path={str(gguf)!r}, n_ctx={n_ctx}, n_threads=1, verbose=True)"
    log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
    m = re.search(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells", log)
    assert m and int(m.group(2)) == n_ctx, log[-2000:]
    return float(m.group(1)) * MiB


def test_qwen3_kv_estimate_uses_key_length_and_matches_llama_cpp(tmp_path):
    hf = cached_hf_model(arch="qwen3", kquant=True, head_dim=128)  # 4 heads x 128 over hidden 256
    out = tmp_path / "q.gguf"
    r = CliRunner().invoke(main, ["convert", str(hf), "-o", str(out), "--type", "F16", "-q"])
    assert r.exit_code == 0, r.output
    shape = shape_from_gguf(out)
    assert (shape.key_length, shape.value_length, shape.n_embd // shape.n_head) == (128, 128, 64)
    ours = shape.n_layer * kv_bytes_per_layer(shape, 1024)
    assert ours == 2 * 1024 * 2 * (128 + 128) * 2  # layers x cells x kv heads x (k + v) x f16
    assert llama_cpp_kv_bytes(out, 1024) == pytest.approx(ours, rel=1e-3)


def test_qwen3_dry_run_lists_qk_norms_unquantized():
    hf = cached_hf_model(arch="qwen3", kquant=True, head_dim=128)
    r = CliRunner().invoke(main, ["convert", str(hf), "--type", "Q4_K_M", "--dry-run"])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split() for line in r.output.splitlines() if line.startswith("blk.")}
    assert rows["blk.0.attn_q_norm.weight"][1:3] == ["128", "F32"]
    assert rows["blk.0.attn_q.weight"][1] == "512x256" and "(qwen3, --type Q4_K_M)" in r.output
