"""slimedge.gguf_info / `slimedge inspect`: the tensor table, totals and statistics of small GGUFs
written with gguf.GGUFWriter, and one clean error line (never a traceback) for broken files."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from slimedge.cli import main
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.gguf_stats import TensorStats, tensor_stats

RNG = np.random.default_rng(0)
# name -> (NumPy shape, type); rows of 64 fit Q8_0's 32-blocks
TENSORS = {
    "token_embd.weight": ((50, 64), T.F16),
    "blk.0.attn_norm.weight": ((64,), T.F32),
    "blk.0.attn_q.weight": ((64, 64), T.Q8_0),
    "blk.0.ffn_down.weight": ((3, 64), T.BF16),
    "output.weight": ((50, 64), T.F32),
}
METADATA = {  # key -> (value, writer method)
    "general.name": ("tiny test", "add_string"),
    "llama.block_count": (1, "add_uint32"),
    "llama.rope.freq_base": (10000.0, "add_float32"),
    "tokenizer.ggml.add_bos_token": (True, "add_bool"),
    "tokenizer.ggml.tokens": ([f"t{i}" for i in range(70)] + ["ü€😀"], "add_array"),
    "tokenizer.ggml.token_type": (list(range(71)), "add_array"),
    "general.file_type": (7, "add_uint32"),
}


def _values():
    out = {}
    for name, (shape, _) in TENSORS.items():
        out[name] = (RNG.standard_normal(shape) * 0.5 + 0.1).astype(np.float32)
    out["output.weight"][0, :3] = [np.nan, np.inf, -np.inf]  # non-finite values are counted, not averaged
    return out


def write_gguf(path, values, endianess=gguf.GGUFEndian.LITTLE):
    w = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
    for key, (value, method) in METADATA.items():
        getattr(w, method)(key, value)
    for name, (shape, qtype) in TENSORS.items():
        x = values[name]
        if qtype == T.F32:
            w.add_tensor(name, x)
        elif qtype == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    values = _values()
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", values), values


def test_table_totals_and_metadata(good):
    path, _ = good
    info = read_info(path)
    assert info.arch == "llama" and info.name == "tiny test" and info.version == 3
    assert info.file_type == 7 and info.file_type_name == "MOSTLY_Q8_0"
    assert [t.name for t in info.tensors] == list(TENSORS)
    reader = gguf.GGUFReader(path)
    for t, rt in zip(info.tensors, reader.tensors):
        shape, qtype = TENSORS[t.name]
        block, size = GGML_QUANT_SIZES[qtype]
        assert t.shape == shape and t.type == qtype.name and t.qtype == qtype
        assert t.n_elements == int(np.prod(shape)) and t.n_bytes == int(np.prod(shape)) // block * size
        assert t.offset == rt.data_offset and t.n_bytes == rt.data.nbytes
    assert info.n_params == sum(int(np.prod(s)) for s, _ in TENSORS.values())
    assert info.total_tensor_bytes == sum(t.n_bytes for t in info.tensors)
    assert info.bpw == pytest.approx(8 * info.total_tensor_bytes / info.n_params)
    assert info.type_counts == {"F32": 2, "F16": 1, "Q8_0": 1, "BF16": 1}
    assert info.type_bytes["Q8_0"] == 64 * 64 // 32 * 34
    assert info.file_size == path.stat().st_size
    for key, (value, _) in METADATA.items():
        assert info.metadata[key] == value, key
    assert info.metadata_types["tokenizer.ggml.tokens"] == "ARRAY[STRING]"
    assert info.metadata_types["tokenizer.ggml.token_type"] == "ARRAY[INT32]"
    assert info.metadata_types["general.name"] == "STRING"
    assert info.metadata["general.architecture"] == "llama"
    # the header parser agrees with gguf-py's reader on every key
    for key, f in reader.fields.items():
        if not key.startswith("GGUF."):
            assert info.metadata[key] == f.contents(), key


def test_big_endian_file(tmp_path):
    values = _values()
    le = read_info(write_gguf(tmp_path / "le.gguf", values))
    be = read_info(write_gguf(tmp_path / "be.gguf", values, gguf.GGUFEndian.BIG))
    assert be.byte_order == ">" and le.byte_order == "<"
    assert be.metadata == le.metadata and be.metadata_types == le.metadata_types
    assert [(t.name, t.shape, t.type, t.n_bytes) for t in be.tensors] == \
        [(t.name, t.shape, t.type, t.n_bytes) for t in le.tensors]
    assert set(tensor_stats(be.path, be).values()) == {"no statistics: big-endian file"}


def test_stats_match_numpy(good):
    path, values = good
    stats = tensor_stats(path, slab_elements=100)  # several slabs per tensor: the merge is exercised
    for name, (shape, qtype) in TENSORS.items():
        x = values[name].astype(np.float64)
        if qtype == T.F16:
            x = values[name].astype(np.float16).astype(np.float64)
        elif qtype not in (T.F32,):
            q = gguf.quants.quantize(values[name], qtype)
            x = gguf.quants.dequantize(q, qtype).astype(np.float64)
        s = stats[name]
        assert isinstance(s, TensorStats), (name, s)
        fin = x[np.isfinite(x)]
        assert s.n_nonfinite == x.size - fin.size
        np.testing.assert_allclose([s.min, s.max, s.mean, s.std, s.rms],
                                   [fin.min(), fin.max(), fin.mean(), fin.std(), np.sqrt(np.mean(fin ** 2))],
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    assert stats["output.weight"].n_nonfinite == 3


def test_cli_human_and_json(good):
    path, _ = good
    r = CliRunner().invoke(main, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert "blk.0.attn_q.weight" in r.output and "64x64" in r.output and "Q8_0" in r.output
    assert "[71 items]" in r.output and "bits per weight" in r.output
    r = CliRunner().invoke(main, ["inspect", str(path), "--json", "--stats"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    info = read_info(path)
    assert d["n_params"] == info.n_params and d["total_tensor_bytes"] == info.total_tensor_bytes
    assert d["type_counts"] == info.type_counts and d["arch"] == "llama"
    assert [t["name"] for t in d["tensors"]] == list(TENSORS)
    assert d["tensors"][2]["shape"] == [64, 64] and d["tensors"][2]["type"] == "Q8_0"
    assert d["tensors"][0]["stats"]["max"] == pytest.approx(tensor_stats(path)["token_embd.weight"].max)
    assert d["metadata"]["tokenizer.ggml.tokens"] == {"length": 71, "first": METADATA["tokenizer.ggml.tokens"][0][:64],
                                                      "shortened": True}
    assert d["metadata"]["general.name"] == "tiny test"
    full = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json", "--full"]).output)
    assert full["metadata"]["tokenizer.ggml.tokens"] == METADATA["tokenizer.ggml.tokens"][0]


# ---- broken files ---------------------------------------------------------------------------------

def _check_clean_error(path, *fragments):
    with pytest.raises(SlimedgeError) as e:
        info = read_info(path)
        tensor_stats(path, info)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    r = CliRunner().invoke(main, ["inspect", str(path), "--stats"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exit_code, r.exception)  # no crash
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "Error:" in r.output and str(path) in r.output, r.output
    return msg


def test_truncated_at_many_offsets(good, tmp_path):
    path, _ = good
    data = path.read_bytes()
    info = read_info(path)
    header_end = info.data_offset
    offsets = sorted({1, 3, 4, 7, 8, 12, 16, 23, 24, 40, 100, header_end // 3, header_end // 2, header_end - 1,
                      header_end, header_end + 1, info.tensors[2].offset + 5, len(data) - 1,
                      *range(24, header_end, max(1, header_end // 40))})
    for n in offsets:
        p = tmp_path / f"cut{n}.gguf"
        p.write_bytes(data[:n])
        msg = _check_clean_error(p)
        if n >= 4:
            assert "truncated" in msg or "corrupt" in msg, msg


def test_magic_version_and_not_gguf(good, tmp_path):
    path, _ = good
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "magic.gguf"
    flipped.write_bytes(b"GGUX" + bytes(data[4:]))
    _check_clean_error(flipped, "not a GGUF file")
    bad_version = tmp_path / "version.gguf"
    bad_version.write_bytes(bytes(data[:4]) + (99).to_bytes(4, "little") + bytes(data[8:]))
    _check_clean_error(bad_version, "corrupt or unsupported")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    _check_clean_error(empty, "empty")
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n" * 10)
    _check_clean_error(text, "not a GGUF file")
    st = tmp_path / "model.safetensors"
    st.write_bytes((16).to_bytes(8, "little") + b'{"a":"b"}       ' + bytes(8))
    _check_clean_error(st, "not a GGUF file", "slimedge convert")
    _check_clean_error(tmp_path, "directory")
    _check_clean_error(tmp_path / "missing.gguf", "no such file")


def test_corrupt_header_fields(good, tmp_path):
    path, _ = good
    data = bytes(path.read_bytes())
    info = read_info(path)

    def patched(name, at, new):
        p = tmp_path / name
        p.write_bytes(data[:at] + new + data[at + len(new):])
        return p

    # absurd tensor / kv counts
    _check_clean_error(patched("ntensors.gguf", 8, (2 ** 40).to_bytes(8, "little")))
    _check_clean_error(patched("nkv.gguf", 16, (2 ** 62).to_bytes(8, "little")))
    # an array length that runs past the end of the file
    key = b"tokenizer.ggml.token_type"
    at = data.index(key) + len(key) + 4 + 4  # key, value type ARRAY, item type
    _check_clean_error(patched("arraylen.gguf", at, (2 ** 50).to_bytes(8, "little")))
    # a tensor with an unknown type id, then one with a shifted data offset
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8  # name, n_dims, two dims
    _check_clean_error(patched("ttype.gguf", at, (250).to_bytes(4, "little")), "corrupt")
    rel = info.tensors[2].offset - info.data_offset
    _check_clean_error(patched("toffset.gguf", at + 4, (rel + 32).to_bytes(8, "little")), "offset")
    # a row length that does not fit the type's block
    _check_clean_error(patched("rowlen.gguf", at - 16, (63).to_bytes(8, "little")), "Q8_0")
    # garbage everywhere after the magic
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _check_clean_error(garbage)


# ---- a file written by llama.cpp's quantizer ------------------------------------------------------

def test_llama_cpp_quantized_file(tmp_path):
    """Table, sizes and --stats on a Q4_K_M file from llama.cpp (k-quants, Q5_0/Q8_0 fallbacks, F32);
    the statistics equal those of gguf-py's independent dequantizers."""
    import ctypes

    import llama_cpp

    src, dst = tmp_path / "f32.gguf", tmp_path / "q4_k_m.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    for method, value in (("add_context_length", 128), ("add_embedding_length", 256), ("add_block_count", 2),
                          ("add_feed_forward_length", 320), ("add_head_count", 4), ("add_head_count_kv", 2),
                          ("add_layer_norm_rms_eps", 1e-5), ("add_file_type", 0)):
        getattr(w, method)(value)
    shapes = {"token_embd.weight": (40, 256), "output_norm.weight": (256,)}
    for i in range(2):
        shapes.update({f"blk.{i}.attn_norm.weight": (256,), f"blk.{i}.attn_q.weight": (256, 256),
                       f"blk.{i}.attn_k.weight": (128, 256), f"blk.{i}.attn_v.weight": (128, 256),
                       f"blk.{i}.attn_output.weight": (256, 256), f"blk.{i}.ffn_norm.weight": (256,),
                       f"blk.{i}.ffn_gate.weight": (320, 256), f"blk.{i}.ffn_up.weight": (320, 256),
                       f"blk.{i}.ffn_down.weight": (256, 320)})
    for name, shape in shapes.items():
        w.add_tensor(name, RNG.standard_normal(shape, dtype=np.float32) * 0.1 - 0.01)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = 15, 2  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) == 0

    info = read_info(dst)
    reader = gguf.GGUFReader(dst)
    assert info.file_type_name == "MOSTLY_Q4_K_M"
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"} <= set(info.type_counts)
    by_name = {t.name: t for t in reader.tensors}
    for t in info.tensors:
        rt = by_name[t.name]
        assert t.shape == shapes[t.name] and t.type == rt.tensor_type.name and t.n_bytes == rt.n_bytes
    assert info.bpw == pytest.approx(8 * sum(rt.n_bytes for rt in reader.tensors) / info.n_params)
    stats = tensor_stats(dst, info)
    for t in info.tensors:
        x = gguf.quants.dequantize(by_name[t.name].data, t.qtype).astype(np.float64)
        s = stats[t.name]
        assert isinstance(s, TensorStats), (t.name, s)
        np.testing.assert_allclose([s.min, s.max, s.mean, s.std, s.rms],
                                   [x.min(), x.max(), x.mean(), x.std(), np.sqrt(np.mean(x ** 2))],
                                   rtol=1e-6, atol=1e-9, err_msg=f"{t.name} {t.type}")
