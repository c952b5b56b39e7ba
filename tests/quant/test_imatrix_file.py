"""slimedge.quant.imatrix_file: llama.cpp's imatrix files (GGUF and legacy .dat) and llama-quantize's use of them.

The GGUF layout is checked with an independent reader (gguf-py's GGUFReader); the legacy layout against
bytes packed here by hand from llama.cpp's description (tools/imatrix/imatrix.cpp).
"""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType

from slimedge.errors import SlimedgeError
from slimedge.quant.imatrix_file import (Imatrix, ImatrixEntry, importance_for, quantize_keys, read_imatrix,
                                         write_imatrix, write_imatrix_legacy)


def _sample() -> Imatrix:
    rng = np.random.default_rng(3)
    return Imatrix({
        "blk.1.ffn_down.weight": ImatrixEntry((rng.random(96) * 50).astype(np.float32), np.array([1536])),
        "blk.0.attn_q.weight": ImatrixEntry((rng.random(64) * 9).astype(np.float32), np.array([1536])),
        "blk.0.ffn_up_exps.weight": ImatrixEntry(rng.random(4 * 32).astype(np.float32), np.array([700, 0, 12, 3])),
    }, ["calib.txt"], 3, 512)


def test_gguf_layout_read_independently(tmp_path):
    imx = _sample()
    path = write_imatrix(tmp_path / "imatrix.gguf", imx)
    r = GGUFReader(str(path))
    f = r.fields
    assert bytes(f["general.type"].parts[-1]).decode() == "imatrix"
    assert f["imatrix.datasets"].types == [GGUFValueType.ARRAY, GGUFValueType.STRING]
    assert [bytes(f["imatrix.datasets"].parts[i]).decode() for i in f["imatrix.datasets"].data] == ["calib.txt"]
    assert f["imatrix.chunk_count"].types == [GGUFValueType.UINT32] and int(f["imatrix.chunk_count"].parts[-1][0]) == 3
    assert int(f["imatrix.chunk_size"].parts[-1][0]) == 512
    assert "general.architecture" not in f
    names = sorted(imx.entries)  # bytewise order, sums then counts
    assert [t.name for t in r.tensors] == [n + s for n in names for s in (".in_sum2", ".counts")]
    for t in r.tensors:
        assert t.tensor_type == T.F32
        base, kind = t.name.rsplit(".", 1)
        e = imx.entries[base]
        if kind == "in_sum2":
            assert list(t.shape) == ([e.n_cols, e.n_mat] if e.n_mat > 1 else [e.n_cols])
            assert np.array_equal(np.asarray(t.data).reshape(-1), e.sums)
        else:
            assert list(t.shape) == ([1, e.n_mat] if e.n_mat > 1 else [1])
            assert np.array_equal(np.asarray(t.data).reshape(-1), e.counts.astype(np.float32))


def test_gguf_round_trip(tmp_path):
    imx = _sample()
    back = read_imatrix(write_imatrix(tmp_path / "a.gguf", imx))
    assert (back.datasets, back.chunk_count, back.chunk_size, back.legacy) == (["calib.txt"], 3, 512, False)
    assert set(back.entries) == set(imx.entries)
    for n, e in imx.entries.items():
        assert np.array_equal(back.entries[n].sums, e.sums) and np.array_equal(back.entries[n].counts, e.counts)
    again = write_imatrix(tmp_path / "b.gguf", back)
    assert again.read_bytes() == (tmp_path / "a.gguf").read_bytes()


def test_importance_is_sums_over_counts_per_expert():
    imx = _sample()
    e = imx.entries["blk.0.ffn_up_exps.weight"]
    got = imx.importance("blk.0.ffn_up_exps.weight").reshape(4, 32)
    s = e.sums.reshape(4, 32)
    assert np.array_equal(got[0], s[0] / np.float32(700))
    assert np.array_equal(got[1], np.ones(32, np.float32))  # an expert never routed to: 1
    assert np.array_equal(got[2], s[2] / np.float32(12))
    assert got.dtype == np.float32 and imx.importance("nope") is None


def _legacy_bytes(entries, chunk_count=None, dataset=None) -> bytes:
    """llama.cpp's legacy layout, packed by hand: (name, ncall, values) entries, optional trailer."""
    out = struct.pack("<i", len(entries))
    for name, ncall, vals in entries:
        b = name.encode()
        out += struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, len(vals)) + np.asarray(vals, "<f4").tobytes()
    if chunk_count is not None:
        out += struct.pack("<i", chunk_count)
        d = (dataset or "").encode()
        out += struct.pack("<i", len(d)) + d
    return out


def test_legacy_read_hand_packed(tmp_path):
    p = tmp_path / "old.dat"
    p.write_bytes(_legacy_bytes([("blk.0.attn_k.weight", 4, [8.0, 2.0, 4.0]), ("blk.0.ffn_down.weight", 0, [5.0])],
                                chunk_count=4, dataset="wiki.train.raw"))
    imx = read_imatrix(p)
    assert imx.legacy and imx.chunk_count == 4 and imx.datasets == ["wiki.train.raw"]
    assert np.array_equal(imx.importance("blk.0.attn_k.weight"), np.float32([2.0, 0.5, 1.0]))  # values / ncall
    assert np.array_equal(imx.importance("blk.0.ffn_down.weight"), np.float32([5.0]))  # ncall 0: as stored
    p2 = tmp_path / "bare.dat"  # the trailer is optional
    p2.write_bytes(_legacy_bytes([("blk.0.attn_k.weight", 2, [1.0, 3.0])]))
    bare = read_imatrix(p2)
    assert bare.chunk_count == 0 and bare.datasets == [] and bare.importance("blk.0.attn_k.weight")[1] == 1.5


def test_legacy_write_matches_llama_layout(tmp_path):
    imx = _sample()
    p = write_imatrix_legacy(tmp_path / "a.dat", imx)
    expected = []
    for name in sorted(imx.entries):
        e = imx.entries[name]
        ncall = -(-int(e.counts.max()) // 512)
        count = np.repeat(e.counts.astype(np.float32), e.n_cols)
        one = np.float32(1)
        vals = np.where(count == 0, one, e.sums) / np.where(count == 0, one, count) * np.float32(ncall)
        expected.append((name, ncall, vals.astype(np.float32)))
    assert p.read_bytes() == _legacy_bytes(expected, chunk_count=3, dataset="calib.txt")
    back = read_imatrix(p)
    for n in imx.entries:  # what llama-quantize gets back: sums / counts (1 for an unseen expert)
        np.testing.assert_allclose(back.importance(n), imx.importance(n), rtol=1e-6)
    assert write_imatrix_legacy(tmp_path / "b.dat", back).read_bytes() == p.read_bytes()
    # a legacy matrix becomes raw sums again (scaled by the chunk size, as llama-imatrix loads one)
    raw = read_imatrix(write_imatrix(tmp_path / "c.gguf", back))
    np.testing.assert_allclose(raw.importance("blk.0.attn_q.weight"), imx.importance("blk.0.attn_q.weight"), rtol=1e-6)


@pytest.mark.parametrize("damage", ["truncate_gguf", "truncate_dat", "random", "model_gguf", "no_metadata", "empty"])
def test_bad_files_are_one_line_errors(tmp_path, damage):
    imx = _sample()
    p = tmp_path / "bad"
    if damage == "truncate_gguf":
        full = write_imatrix(tmp_path / "ok.gguf", imx).read_bytes()
        p.write_bytes(full[: len(full) - 100])
        match = "truncated"
    elif damage == "truncate_dat":
        full = write_imatrix_legacy(tmp_path / "ok.dat", imx).read_bytes()
        p.write_bytes(full[:60])
        match = "truncated"
    elif damage == "random":
        p.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
        match = "not an importance matrix"
    elif damage == "model_gguf":
        import gguf

        w = gguf.GGUFWriter(str(p), "llama")
        w.add_type("model")
        w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 32), np.float32))
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        match = "not an importance matrix"
    elif damage == "no_metadata":
        import gguf

        w = gguf.GGUFWriter(str(p), "")
        w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(32, np.float32))
        w.add_tensor("blk.0.attn_q.weight.counts", np.ones(1, np.float32))
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        match = "missing imatrix metadata"
    else:
        p.write_bytes(b"")
        match = "not an importance matrix|truncated"
    with pytest.raises(SlimedgeError, match=match) as exc:
        read_imatrix(p)
    assert "\n" not in str(exc.value) and str(p) in str(exc.value)


# ---- matching a model's tensors (llama_model_quantize's lookup) ------------------------------------

def test_importance_for_matches_and_checks(caplog):
    imx = _sample()
    imx.path = "imx.gguf"
    tensors = [("blk.0.attn_q.weight", (128, 64), T.Q4_K), ("blk.0.ffn_up_exps.weight", (4, 16, 32), T.Q4_K),
               ("blk.0.attn_k.weight", (32, 64), T.Q4_K), ("output.weight", (10, 64), T.Q6_K)]
    with caplog.at_level(logging.WARNING):
        got = importance_for(imx, tensors)
    assert set(got) == {"blk.0.attn_q.weight", "blk.0.ffn_up_exps.weight"}
    assert got["blk.0.ffn_up_exps.weight"].shape == (4, 32) and got["blk.0.attn_q.weight"].shape == (1, 64)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "blk.0.attn_k.weight" in warned[0] and "output.weight" not in warned[0]

    with pytest.raises(SlimedgeError, match="another model") as exc:  # column count mismatch
        importance_for(imx, [("blk.0.attn_q.weight", (128, 96), T.Q4_K)])
    assert "blk.0.attn_q.weight" in str(exc.value)
    with pytest.raises(SlimedgeError, match="another model"):  # expert count mismatch
        importance_for(imx, [("blk.0.ffn_up_exps.weight", (8, 16, 32), T.Q4_K)])
    with pytest.raises(SlimedgeError, match="covers none"):
        importance_for(imx, [("blk.7.attn_v.weight", (32, 64), T.Q4_K)])
    assert importance_for(imx, [("output.weight", (10, 64), T.Q8_0)]) == {}  # only the head quantized: fine
    with pytest.raises(SlimedgeError, match="blk.0.attn_k.weight"):  # required (Q2_K_S) and missing
        importance_for(imx, tensors, requires=lambda n, q: n == "blk.0.attn_k.weight")
    # token_embd of another size is ignored, as llama.cpp does
    imx.entries["token_embd.weight"] = ImatrixEntry(np.ones(5, np.float32), np.array([1]))
    assert "token_embd.weight" not in importance_for(imx, [("token_embd.weight", (10, 64), T.Q4_K)] + tensors[:1])


def test_quantize_keys_as_llama_quantize_writes_them():
    imx = _sample()
    imx.path = "x" * 200
    keys = quantize_keys(imx)
    assert [k for k, _, _ in keys] == ["quantize.imatrix.file", "quantize.imatrix.dataset",
                                       "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"]
    assert keys[0][1] == "x" * 127 and keys[1][1] == "calib.txt"  # strncpy into a 128-byte field
    assert keys[2][1:] == (3, GGUFValueType.UINT32) and keys[3][1:] == (3, GGUFValueType.UINT32)
    imx.chunk_count, imx.datasets = 0, []
    assert [k for k, _, _ in quantize_keys(imx)] == ["quantize.imatrix.file", "quantize.imatrix.entries_count"]
