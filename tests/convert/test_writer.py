"""slimedge's own GGUF writer produces exactly the bytes of gguf.GGUFWriter (the reference), streamed and atomically."""

from __future__ import annotations

import os
import time

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf import GGUFWriter, TokenType

from slimedge.gguf_info import read_info
from slimedge.quant import quantize
from slimedge.quant.types import tensor_nbytes
from slimedge.writer import GGUF_FILE_VERSION, GGUFStreamWriter

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
    with pytest.raises(RuntimeError, match="never written"):  # a bug in the caller, not a user error
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
    with pytest.raises(RuntimeError, match="internal error"):
        with GGUFStreamWriter(tmp_path / "a.gguf", "llama") as w:
            w.add_tensor_info("a.weight", x.shape, T.F32)
            w.begin_data()
            w.write_tensor_part("a.weight", x[:3])
            w.write_tensor_part("a.weight", x[:3])  # 6 rows of 4
    with pytest.raises(RuntimeError, match="never written"):
        with GGUFStreamWriter(tmp_path / "b.gguf", "llama") as w:
            w.add_tensor_info("a.weight", x.shape, T.F32)
            w.begin_data()
            w.write_tensor_part("a.weight", x[:3])  # one row short
    assert list(tmp_path.iterdir()) == []


# ---- the writer owns the format: every value type, helpers, tensors and alignment as gguf writes them ----

LONG = [f"piece{i}" for i in range(700)]
EVERY_VALUE = [  # (key, value, type, sub type): every scalar type, arrays of every kind, a replaced key
    ("general.name", "first", V.STRING, None),
    ("t.u8", 200, V.UINT8, None), ("t.i8", -100, V.INT8, None), ("t.u16", 60000, V.UINT16, None),
    ("t.i16", -30000, V.INT16, None), ("t.u32", 4_000_000_000, V.UINT32, None),
    ("t.i32", -2_000_000_000, V.INT32, None), ("t.f32", 0.1, V.FLOAT32, None),
    ("t.u64", 2**63 + 5, V.UINT64, None), ("t.i64", -2**62, V.INT64, None), ("t.f64", 1 / 3, V.FLOAT64, None),
    ("t.bool", False, V.BOOL, None), ("t.str", "héllo 日本", V.STRING, None), ("t.bytes", b"raw\x00b", V.STRING, None),
    ("a.u8", [1, 2, 255], V.ARRAY, V.UINT8), ("a.i8", [-1, 2], V.ARRAY, V.INT8),
    ("a.u16", [1, 65535], V.ARRAY, V.UINT16), ("a.i16", [-5, 5], V.ARRAY, V.INT16),
    ("a.u32", list(range(300)), V.ARRAY, V.UINT32), ("a.i64", [-(2**40), 3], V.ARRAY, V.INT64),
    ("a.u64", [2**64 - 1], V.ARRAY, V.UINT64), ("a.f64", [0.5, 1e-300], V.ARRAY, V.FLOAT64),
    ("a.f32", [0.25, -1.5, 3.0], V.ARRAY, V.FLOAT32), ("a.i32_guess", [1, -2, 3], V.ARRAY, None),
    ("a.f32_guess", [0.1] * 400, V.ARRAY, None), ("a.bool", [True, False, True], V.ARRAY, None),
    ("a.str_short", ["a", "bé", ""], V.ARRAY, None), ("a.str_long", LONG, V.ARRAY, V.STRING),
    ("a.bytes", b"\x00\x01\xff", V.ARRAY, None), ("a.nested", [[1, 2], [3]], V.ARRAY, None),
    ("a.nested_str", [["x"], ["y", "z"]], V.ARRAY, None),
]


def _helpers(w):
    """The gguf-style helpers Vocab.add_to calls, with skipped empties and named chat templates."""
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("")  # empty: not written
    w.add_token_list(TOKENS)
    w.add_token_scores(SCORES)
    w.add_token_types([TokenType(t) for t in TYPES])
    w.add_token_merges(MERGES)
    for kind in ("bos", "eos", "unk", "pad", "sep", "mask"):
        getattr(w, f"add_{kind}_token_id")(len(kind))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_array("t.empty", [])  # empty: not written
    w.add_chat_template([{"name": "default", "template": "{{ main }}"}, {"name": "tool use", "template": "{{ t }}"},
                         {"name": "", "template": "unnamed"}])


def test_every_value_type_helpers_tensors_and_alignment_match_gguf_writer(tmp_path):
    tensors = [("a.weight", rng.standard_normal(5).astype(np.float32), T.F32),  # 20 bytes: padded
               ("b.weight", rng.standard_normal((3, 64)).astype(np.float32), T.F16),
               ("c.weight", rng.standard_normal((2, 3, 32)).astype(np.float32), T.F32),
               ("d.weight", rng.standard_normal((4, 256)).astype(np.float32), T.Q4_K),
               ("e.weight", rng.standard_normal((3, 64)).astype(np.float32), T.Q8_0)]
    ref = GGUFWriter(tmp_path / "ref.gguf", "qwen2")
    ref.add_custom_alignment(64)
    for k, v, t, s in EVERY_VALUE:
        ref.add_key_value(k, v, t, s)
    _helpers(ref)
    for name, x, q in tensors:
        data = x.astype(np.float16) if q == T.F16 else _encoded(x, q)
        ref.add_tensor(name, data, raw_dtype=q if data.dtype == np.uint8 else None)
    ref.write_header_to_file()
    ref.write_kv_data_to_file()
    ref.write_tensors_to_file()
    ref.close()

    with GGUFStreamWriter(tmp_path / "ours.gguf", "qwen2", alignment=64) as w:
        for k, v, t, s in EVERY_VALUE:
            w.add_kv(k, v, t, s)
        _helpers(w)
        for name, x, q in tensors:
            w.add_tensor_info(name, x.shape, q)
        w.begin_data()
        for name, x, q in tensors:
            w.write_tensor(name, _encoded(x, q))
    ours, want = (tmp_path / "ours.gguf").read_bytes(), (tmp_path / "ref.gguf").read_bytes()
    assert len(ours) == len(want) and ours == want
    info = read_info(tmp_path / "ours.gguf")
    assert info.alignment == 64 and info.data_offset % 64 == 0 and [t.name for t in info.tensors] == [
        t[0] for t in tensors]
    assert info.metadata["general.name"] == "first" and "tokenizer.ggml.pre" not in info.metadata
    assert GGUF_FILE_VERSION == gguf.GGUF_VERSION  # the layout written is the one gguf calls current


def test_a_repeated_key_replaces_the_value_in_place_with_a_warning(tmp_path, caplog):
    with GGUFStreamWriter(tmp_path / "k.gguf", "llama") as w:
        w.add_kv("general.name", "first", V.STRING)
        w.add_kv("llama.block_count", 1, V.UINT32)
        w.add_kv("general.name", "second", V.STRING)
        w.begin_data()
    md = read_info(tmp_path / "k.gguf").metadata
    assert list(md) == ["general.architecture", "general.name", "llama.block_count"]
    assert md["general.name"] == "second"
    assert any("duplicated key 'general.name'" in r.getMessage() for r in caplog.records)


def test_bad_metadata_values_are_refused_before_any_byte(tmp_path):
    for value, sub in (([], None), ([1, "a"], None), ([1.5], V.UINT32), ({"a": 1}, None)):
        with pytest.raises(ValueError):
            with GGUFStreamWriter(tmp_path / "x.gguf", "llama") as w:
                w.add_kv("t.bad", value, V.ARRAY, sub)
                w.begin_data()
        assert list(tmp_path.iterdir()) == []


def test_long_metadata_arrays_are_packed_in_bulk(tmp_path):
    """300k tokens, scores and types: item-by-item packing (gguf's) takes seconds, bulk a fraction."""
    n = 300_000
    tokens, scores, types = [f"token{i}" for i in range(n)], [i / 7 for i in range(n)], [1] * n
    t0 = time.perf_counter()
    with GGUFStreamWriter(tmp_path / "v.gguf", "llama") as w:
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.begin_data()
    assert time.perf_counter() - t0 < 1.5
    md = read_info(tmp_path / "v.gguf").metadata
    assert md["tokenizer.ggml.tokens"][-1] == tokens[-1] and md["tokenizer.ggml.token_type"][:2] == [1, 1]


def test_output_has_plain_file_permissions(tmp_path):
    umask = os.umask(0o027)
    try:
        with GGUFStreamWriter(tmp_path / "p.gguf", "llama") as w:
            w.begin_data()
    finally:
        os.umask(umask)
    assert (tmp_path / "p.gguf").stat().st_mode & 0o777 == 0o640
