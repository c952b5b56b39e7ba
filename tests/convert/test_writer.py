"""The streaming writer produces exactly the bytes of gguf.GGUFWriter's all-in-memory path, atomically."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf import GGUFWriter

from slimedge.errors import SlimedgeError
from slimedge.quant import quantize
from slimedge.writer import GGUFStreamWriter, tensor_nbytes

rng = np.random.default_rng(0)
TOKENS = [f"tok{i}" for i in range(300)] + ["é", "日本", "\u2581x", "<0x0A>"] + [bytes([0xE2, 0x96])]
SCORES = rng.standard_normal(len(TOKENS)).astype(np.float32).tolist()
TYPES = rng.integers(1, 6, len(TOKENS)).tolist()
MERGES = [f"a{i} b{i}" for i in range(400)]
TENSORS = [("token_embd.weight", rng.standard_normal((40, 64)).astype(np.float32), T.F16),
           ("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32), T.F32),
           ("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float32), T.Q8_0)]


def _kv(add):
    add("general.name", "tiny", V.STRING, None)
    add("llama.block_count", 1, V.UINT32, None)
    add("llama.rope.freq_base", 10000.0, V.FLOAT32, None)
    add("tokenizer.ggml.add_bos_token", True, V.BOOL, None)
    add("tokenizer.ggml.tokens", TOKENS, V.ARRAY, V.STRING)
    add("tokenizer.ggml.scores", SCORES, V.ARRAY, V.FLOAT32)
    add("tokenizer.ggml.token_type", TYPES, V.ARRAY, V.INT32)
    add("tokenizer.ggml.merges", MERGES, V.ARRAY, V.STRING)


def _encoded(x, q):
    return x if q == T.F32 else quantize(x, q)


def test_streamed_file_equals_gguf_writer_file(tmp_path):
    ref = GGUFWriter(tmp_path / "ref.gguf", "llama")
    _kv(lambda k, v, t, s: ref.add_key_value(k, v, t, s))
    for name, x, q in TENSORS:
        data = _encoded(x, q)
        ref.add_tensor(name, data, raw_dtype=q if data.dtype == np.uint8 else None)  # byte shape -> element shape
    ref.write_header_to_file()
    ref.write_kv_data_to_file()
    ref.write_tensors_to_file()
    ref.close()

    with GGUFStreamWriter(tmp_path / "ours.gguf", "llama") as w:
        _kv(w.add_kv)
        for name, x, q in TENSORS:
            assert w.add_tensor_info(name, x.shape, q) == tensor_nbytes(x.shape, q)
        w.begin_data()
        assert not (tmp_path / "ours.gguf").exists()  # nothing visible until complete
        for name, x, q in TENSORS:
            w.write_tensor(name, _encoded(x, q))
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.gguf", "ref.gguf"]


def test_error_inside_block_leaves_nothing(tmp_path):
    out = tmp_path / "o.gguf"
    with pytest.raises(RuntimeError):
        with GGUFStreamWriter(out, "llama") as w:
            w.add_tensor_info("a.weight", (4, 32), T.F32)
            w.begin_data()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_missing_tensor_is_not_committed(tmp_path):
    out = tmp_path / "o.gguf"
    with pytest.raises(SlimedgeError, match="never written"):
        with GGUFStreamWriter(out, "llama") as w:
            w.add_tensor_info("a.weight", (4, 32), T.F32)
            w.begin_data()
    assert list(tmp_path.iterdir()) == []


def test_tensor_written_in_parts_equals_whole(tmp_path):
    """write_tensor_part: row slices appended back to back give the bytes of write_tensor (padding included)."""
    def write(out, parts: bool):
        with GGUFStreamWriter(out, "llama") as w:
            _kv(w.add_kv)
            for name, x, q in TENSORS:
                w.add_tensor_info(name, x.shape, q)
            w.begin_data()
            for name, x, q in TENSORS:
                if parts and x.ndim == 2:
                    for a in range(0, x.shape[0], 7):  # uneven last part
                        w.write_tensor_part(name, _encoded(x[a:a + 7], q))
                else:
                    w.write_tensor(name, _encoded(x, q))
        return out.read_bytes()

    assert write(tmp_path / "parts.gguf", True) == write(tmp_path / "whole.gguf", False)


def test_parts_beyond_the_declared_size_or_missing_are_refused(tmp_path):
    x = np.zeros((4, 32), np.float32)
    with pytest.raises(SlimedgeError, match="internal error"):
        with GGUFStreamWriter(tmp_path / "a.gguf", "llama") as w:
            w.add_tensor_info("a.weight", x.shape, T.F32)
            w.begin_data()
            w.write_tensor_part("a.weight", x[:3])
            w.write_tensor_part("a.weight", x[:3])  # 6 rows of 4
    with pytest.raises(SlimedgeError, match="never written"):
        with GGUFStreamWriter(tmp_path / "b.gguf", "llama") as w:
            w.add_tensor_info("a.weight", x.shape, T.F32)
            w.begin_data()
            w.write_tensor_part("a.weight", x[:3])  # one row short
    assert list(tmp_path.iterdir()) == []
