"""``convert --imatrix``: the bytes ggml writes with the same importance weights, tensor by tensor.

The importance each tensor gets is recomputed here from the file with gguf-py's reader (in_sum2 / counts per
expert, as llama-quantize divides), the weights are read from slimedge's F32 GGUF of the same model, and
every quantized tensor must equal ``ggml_quantize_chunk`` of those weights with that importance (without
it where the imatrix has no entry). The slow test runs llama.cpp's own quantizer (``llama_model_quantize``
with the imatrix and the quantize.imatrix.* key overrides llama-quantize passes) on the whole model.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from tests.factory import cached_hf_model
from tests.ggml_ref import ggml_quantize

from slimedge.cli import main
from slimedge.gguf_info import read_info
from slimedge.quant.imatrix_file import Imatrix, ImatrixEntry, read_imatrix, write_imatrix

from tests.convert.convert_util import importance_from_file, llama_imatrix_args, llama_quantize, same_tensors

FLOATS = ("F32", "F16", "BF16")


def _run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r


def _tensors(path) -> dict[str, np.ndarray]:
    return {x.name: np.asarray(x.data) for x in gguf.GGUFReader(str(path)).tensors}


def _check_against_ggml(f32_gguf, quantized, imx_path, expect_some=True, imp=None):
    weights, got = _tensors(f32_gguf), _tensors(quantized)
    imp = importance_from_file(imx_path) if imp is None else imp
    used = 0
    for t in read_info(quantized).tensors:
        if t.type in FLOATS:
            continue
        w = weights[t.name].astype(np.float32).reshape(-1, t.shape[-1])
        rows_per_mat = w.shape[0] // (t.shape[0] if len(t.shape) == 3 else 1)
        parts = []
        for m in range(w.shape[0] // rows_per_mat):
            rows = w[m * rows_per_mat:(m + 1) * rows_per_mat]
            parts.append(ggml_quantize(rows, t.type, imatrix=imp[t.name][m] if t.name in imp else None))
        used += t.name in imp
        want = np.concatenate([p.reshape(-1) for p in parts])
        assert np.array_equal(got[t.name].reshape(-1).view(np.uint8), want), f"{t.name} ({t.type}) differs from ggml"
    assert used > 0 or not expect_some


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(HF folder, its F32 GGUF, an imatrix computed on it)."""
    root = tmp_path_factory.mktemp("cimx")
    model = cached_hf_model(arch="llama", kquant=True)
    f32 = root / "f32.gguf"
    assert _run("convert", model, "-o", f32, "--type", "F32", "-q").exit_code == 0
    imx = root / "imatrix.gguf"
    r = _run("imatrix", model, "--data", textwrap.__file__, "-o", imx, "--ctx", "32", "--chunks", "3", "-q")
    assert r.exit_code == 0, r.output
    return model, f32, imx


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q2_K_S", "Q3_K_S", "Q5_K_S", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                 "Q8_0"])
def test_convert_imatrix_equals_ggml(llama, tmp_path, mix):
    model, f32, imx = llama
    out = tmp_path / f"{mix}.gguf"
    r = _run("convert", model, "-o", out, "--type", mix, "--imatrix", imx, "-q", "-t", "2")
    assert r.exit_code == 0, r.output
    _check_against_ggml(f32, out, imx)
    md = read_info(out).metadata
    assert md["quantize.imatrix.file"] == str(imx) and md["quantize.imatrix.dataset"] == textwrap.__file__
    assert md["quantize.imatrix.entries_count"] == 14 and md["quantize.imatrix.chunks_count"] == 3
    assert read_info(out).metadata_types["quantize.imatrix.entries_count"] == "UINT32"
    if mix == "Q4_K_M":  # the importance weights change the bytes (else this test would prove little)
        plain = tmp_path / "plain.gguf"
        assert _run("convert", model, "-o", plain, "--type", mix, "-q").exit_code == 0
        a, b = _tensors(out), _tensors(plain)
        assert not np.array_equal(a["blk.0.attn_q.weight"], b["blk.0.attn_q.weight"])


def test_convert_from_gguf_and_dat_and_dry_run(llama, tmp_path):
    model, f32, imx = llama
    r = _run("convert", model, "--type", "Q4_K_M", "--imatrix", imx, "--dry-run")
    assert r.exit_code == 0 and "importance matrix" in r.output and "used for 14 tensors" in r.output
    dat = tmp_path / "imatrix.dat"
    assert _run("imatrix", model, "--data", textwrap.__file__, "-o", dat, "--ctx", "32", "--chunks", "3",
                "-q").exit_code == 0
    out = tmp_path / "from-gguf-src.gguf"
    r = _run("convert", f32, "-o", out, "--type", "Q3_K_M", "--imatrix", dat, "-q")  # requantize a GGUF
    assert r.exit_code == 0, r.output
    legacy = read_imatrix(dat)  # llama-quantize's legacy importance: values / ncall (checked in tests/quant)
    _check_against_ggml(f32, out, dat, imp={n: legacy.importance(n).reshape(1, -1) for n in legacy.entries})


def _moe_gguf(path, n_expert=4, n_ff=8, n_embd=256):
    rng = np.random.default_rng(5)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("moe")
    w.add_context_length(256), w.add_embedding_length(n_embd), w.add_block_count(1)
    w.add_feed_forward_length(n_ff), w.add_head_count(4), w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5), w.add_rope_dimension_count(64), w.add_vocab_size(64), w.add_file_type(0)
    w.add_expert_count(n_expert), w.add_expert_used_count(2)
    shapes = [("token_embd.weight", (64, n_embd)), ("blk.0.attn_norm.weight", (n_embd,)),
              ("blk.0.attn_q.weight", (n_embd, n_embd)), ("blk.0.attn_k.weight", (n_embd, n_embd)),
              ("blk.0.attn_v.weight", (n_embd, n_embd)), ("blk.0.attn_output.weight", (n_embd, n_embd)),
              ("blk.0.ffn_norm.weight", (n_embd,)), ("blk.0.ffn_gate_inp.weight", (n_expert, n_embd)),
              ("blk.0.ffn_gate_exps.weight", (n_expert, n_ff, n_embd)),
              ("blk.0.ffn_up_exps.weight", (n_expert, n_ff, n_embd)),
              ("blk.0.ffn_down_exps.weight", (n_expert, n_embd, 256)),
              ("output_norm.weight", (n_embd,)), ("output.weight", (64, n_embd))]
    for name, shape in shapes:
        w.add_tensor(name, rng.standard_normal(shape, dtype=np.float32) * 0.05)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return shapes


def test_experts_use_their_own_slice(tmp_path, monkeypatch):
    """3-D expert tensors: rows of expert e use importance row e, also when a read slice spans experts."""
    import slimedge.convert as sc

    src = tmp_path / "moe-f32.gguf"
    shapes = _moe_gguf(src)
    rng = np.random.default_rng(9)
    entries = {}
    for name, shape in shapes:
        if name.startswith("blk.") and len(shape) >= 2 and "gate_inp" not in name:
            n_mat = shape[0] if len(shape) == 3 else 1
            counts = np.array([50, 0, 7, 300][:n_mat] if n_mat > 1 else [64])
            entries[name] = ImatrixEntry((rng.random(n_mat * shape[-1]) * 40).astype(np.float32), counts)
    imx = write_imatrix(tmp_path / "moe.imatrix.gguf", Imatrix(entries, ["synthetic"], 1, 64))
    monkeypatch.setattr(sc, "SLICE_VALUES", 3 * 256)  # 3-row slices: several cross an expert boundary
    out = tmp_path / "moe-q4km.gguf"
    sc.convert(src, out, sc.QuantSpec("Q4_K_M"), imatrix=imx)
    _check_against_ggml(src, out, imx)


# ---- errors ----------------------------------------------------------------------------------------

def test_imatrix_of_another_model_and_bad_files(llama, tmp_path):
    model, f32, imx = llama
    other = cached_hf_model(arch="llama")  # hidden 64, not 256
    r = _run("convert", other, "-o", tmp_path / "x.gguf", "--type", "Q8_0", "--imatrix", imx, "-q")
    assert r.exit_code == 1 and "another model" in r.output and len(r.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(Path(imx).read_bytes()[:-64])
    r = _run("convert", model, "-o", tmp_path / "y.gguf", "--type", "Q4_K_M", "--imatrix", bad, "-q")
    assert r.exit_code == 1 and "truncated" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_warning_names_uncovered_tensors(llama, tmp_path, caplog):
    from slimedge.convert import plan
    from slimedge.quant.mixes import QuantSpec

    model, f32, imx = llama
    part = read_imatrix(imx)
    del part.entries["blk.1.ffn_down.weight"]
    p = plan(model, QuantSpec("Q4_K_M"), imatrix=part)
    assert "blk.1.ffn_down.weight" not in p.importance and "blk.0.ffn_down.weight" in p.importance
    msgs = [r.getMessage() for r in caplog.records if "no importance data" in r.getMessage()]
    assert len(msgs) == 1 and "blk.1.ffn_down.weight" in msgs[0]


# ---- llama.cpp's own quantizer on the whole model --------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mix", ["Q4_K_M", "Q2_K_S", "Q3_K_M", "Q5_0"])
def test_whole_model_equals_llama_model_quantize(llama, tmp_path, mix):
    from slimedge.quant.mixes import MIXES

    model, f32, imx = llama
    ours = tmp_path / "ours.gguf"
    assert _run("convert", model, "-o", ours, "--type", mix, "--imatrix", imx, "-q").exit_code == 0
    theirs = llama_quantize(f32, tmp_path / "theirs.gguf", MIXES[mix][0], **llama_imatrix_args(imx))
    same_tensors(ours, theirs)
    a, b = read_info(ours), read_info(theirs)
    for k in ("quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
              "quantize.imatrix.chunks_count"):
        assert (a.metadata[k], a.metadata_types[k]) == (b.metadata[k], b.metadata_types[k]), k


def test_build_imatrix(llama, tmp_path):
    """`slimedge build --imatrix`: the bundle's model is convert --imatrix's (ggml's bytes, keys recorded)."""
    model, f32, imx = llama
    r = _run("build", model, "--target", "cpu", "-o", tmp_path / "bundle", "--type", "Q4_K_M", "--imatrix", imx, "-q")
    assert r.exit_code == 0, r.output
    gguf_path = tmp_path / "bundle" / "model.gguf"
    _check_against_ggml(f32, gguf_path, imx)
    assert read_info(gguf_path).metadata["quantize.imatrix.entries_count"] == 14
    r = _run("build", gguf_path, "--target", "cpu", "-o", tmp_path / "b2", "--imatrix", imx, "-q")
    assert r.exit_code == 1 and "--imatrix applies only when converting" in r.output
