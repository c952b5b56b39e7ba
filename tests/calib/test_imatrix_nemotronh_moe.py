"""slimedge imatrix on Nemotron-H MoE (``nemotron_h_moe``: Mamba-2, attention and MoE blocks whose experts are
squared-ReLU MLPs without a gate; Nemotron 3 Super's latent experts run between ``ffn_latent_down`` and
``ffn_latent_up``), checked against llama.cpp itself: the F32 GGUF that slimedge converts is run through
llama-cpp-python with an eval callback that collects exactly what ``tools/imatrix/imatrix.cpp``'s
``collect_imatrix`` collects (every ``MUL_MAT`` of a ``blk.*`` weight over at least 16 F32 rows, every
``MUL_MAT_ID`` per routed expert), over the same chunks (each from position 0, every position an output, as
llama-imatrix batches them). Names, widths, per-expert counts and the sums of squares must agree; then
``convert --imatrix`` with that file must equal llama.cpp's quantizer given the same importance."""

from __future__ import annotations

import ctypes
import textwrap

import numpy as np
import pytest

from slimedge.calib import compute_imatrix
from slimedge.calib.imatrix import chunk_tokens, tokenize
from tests.factory import cached_hf_model
from tests.family_checks import convert

with open(textwrap.__file__, encoding="utf-8") as f:
    TEXT = f.read()
CTX, CHUNKS = 32, 2


class _Tensor(ctypes.Structure):  # ggml.h's struct ggml_tensor (GGML_MAX_DIMS 4, _SRC 10, _OP_PARAMS 64, _NAME 64)
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def _view(t: _Tensor, dtype) -> np.ndarray:
    """A copy of a host tensor's data as [ne3, ne2, ne1, ne0], read through its byte strides."""
    item = np.dtype(dtype).itemsize
    span = sum((t.ne[i] - 1) * t.nb[i] for i in range(4)) + item
    raw = np.frombuffer((ctypes.c_char * span).from_address(t.data), np.uint8)
    shape, strides = tuple(t.ne[i] for i in (3, 2, 1, 0)), tuple(t.nb[i] for i in (3, 2, 1, 0))
    return np.lib.stride_tricks.as_strided(raw.view(dtype) if t.nb[0] == item else raw, shape, strides).copy()


def _ops() -> tuple[int, int]:
    """GGML_OP_MUL_MAT and GGML_OP_MUL_MAT_ID, by name from the loaded ggml (no enum copied here)."""
    import pathlib

    import llama_cpp

    lib = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_op_name.restype = ctypes.c_char_p
    names: dict[bytes, int] = {}
    for i in range(100):  # both come early in enum ggml_op; never read past its table's end
        names[lib.ggml_op_name(i)] = i
        if b"MUL_MAT" in names and b"MUL_MAT_ID" in names:
            return names[b"MUL_MAT"], names[b"MUL_MAT_ID"]
    raise AssertionError("ggml_op_name names no MUL_MAT / MUL_MAT_ID")


def llama_cpp_imatrix(gguf, chunks: list[list[int]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GGUF name -> (float64 sums [n_mat, n_cols], counts [n_mat]) as llama-imatrix's collector takes them from
    llama.cpp's graph (src0 = the weight, src1 = its input, src2 = the chosen experts of a MUL_MAT_ID)."""
    import llama_cpp as L

    mul_mat, mul_mat_id = _ops()
    stats: dict[str, list] = {}

    def collect(ptr, ask, _user):
        t = _Tensor.from_address(ptr)
        if t.op not in (mul_mat, mul_mat_id):
            return not ask  # not asked for: go on
        w, x = _Tensor.from_address(t.src[0]), _Tensor.from_address(t.src[1])
        name = w.name.decode()
        if ask:
            return t.op == mul_mat_id or (x.ne[1] >= 16 and x.type == 0 and name.startswith("blk."))
        assert x.type == 0  # F32 activations
        a = _view(x, np.float32).astype(np.float64)
        if t.op == mul_mat_id:  # x [n_tokens, n_used or 1, n_cols]; ids [n_tokens, n_used] int32
            ids = _view(_Tensor.from_address(t.src[2]), np.int32)[0, 0]
            s, c = stats.setdefault(name, [np.zeros((w.ne[2], x.ne[0])), np.zeros(w.ne[2], np.int64)])
            for row in range(ids.shape[0]):
                for k, e in enumerate(ids[row]):
                    v = a[0, row, k % x.ne[1]]
                    s[e] += v * v
                    c[e] += 1
        else:
            assert w.ne[2] == w.ne[3] == 1
            s, c = stats.setdefault(name, [np.zeros((1, x.ne[0])), np.zeros(1, np.int64)])
            s[0] += (a.reshape(-1, x.ne[0]) ** 2).sum(0)
            c[0] += a.size // x.ne[0]
        return True

    callback = L.ggml_backend_sched_eval_callback(collect)
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(gguf).encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = len(chunks[0])
    cp.n_threads = cp.n_threads_batch = 2
    cp.cb_eval = callback
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(len(chunks[0]), 0, 1)
    try:
        for chunk in chunks:
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            for i, tok in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, True
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(chunk)
            assert L.llama_decode(ctx, batch) == 0
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    return {n: (s, c) for n, (s, c) in stats.items()}


@pytest.mark.slow  # builds the model, runs transformers and llama.cpp (one callback per product) over two chunks
@pytest.mark.parametrize("latent", [0, 32])
def test_imatrix_equals_llama_cpp_collector(tmp_path, latent):
    hf = cached_hf_model(arch="nemotronhmoe", **({"moe_latent_size": latent} if latent else {}))
    imx = compute_imatrix(hf, TEXT, ctx=CTX, chunks=CHUNKS)
    ids, bos = tokenize(hf, TEXT)
    ref = llama_cpp_imatrix(convert(hf, tmp_path / "f32.gguf", "F32"), chunk_tokens(ids, bos, CTX, CHUNKS))
    assert {n: (e.n_mat, e.n_cols) for n, e in imx.entries.items()} == {n: s.shape for n, (s, _) in ref.items()}
    want = {"blk.1.ffn_gate_inp.weight", "blk.1.ffn_up_exps.weight", "blk.3.ffn_down_exps.weight",
            "blk.1.ffn_up_shexp.weight", "blk.3.ffn_down_shexp.weight", "blk.0.ssm_in.weight", "blk.2.attn_q.weight"}
    if latent:
        want |= {"blk.1.ffn_latent_down.weight", "blk.3.ffn_latent_up.weight"}
        assert imx.entries["blk.1.ffn_up_exps.weight"].n_cols == latent
    assert want <= set(imx.entries)
    for name, (sums, counts) in ref.items():
        e = imx.entries[name]
        assert e.counts.tolist() == counts.tolist(), name
        np.testing.assert_allclose(e.sums.reshape(sums.shape), sums, rtol=2e-3, atol=1e-6 * sums.max(), err_msg=name)
    experts = imx.entries["blk.3.ffn_down_exps.weight"].counts
    assert experts.sum() == CTX * CHUNKS * 2 and (experts > 0).sum() >= 2  # top-2 of 4 experts per position


@pytest.mark.slow  # k-quant-width model: imatrix, two conversions and llama.cpp's quantizer
def test_convert_imatrix_equals_llama_quantize(tmp_path):
    """``convert --imatrix`` on the experts (256-row, k-quantized) uses the per-expert importance exactly as
    llama.cpp's quantizer does with the same file; without it the experts' bytes differ."""
    import gguf
    from click.testing import CliRunner

    from slimedge.cli import main
    from slimedge.gguf_info import read_info
    from slimedge.quant.mixes import MIXES
    from tests.convert.convert_util import (
        llama_imatrix_args,
        llama_quantize,
        same_tensors,
    )

    hf = cached_hf_model(arch="nemotronhmoe", kquant=True, head_dim=64, mamba_head_dim=64, moe_intermediate_size=256,
                         moe_shared_expert_intermediate_size=256)
    imx = tmp_path / "imatrix.gguf"
    r = CliRunner().invoke(main, ["imatrix", str(hf), "--data", textwrap.__file__, "-o", str(imx), "--ctx", str(CTX),
                                  "--chunks", str(CHUNKS), "-q"])
    assert r.exit_code == 0, r.output
    f32 = convert(hf, tmp_path / "f32.gguf", "F32")
    ours = convert(hf, tmp_path / "ours.gguf", "Q4_K_M", "--imatrix", str(imx))
    types = same_tensors(ours, llama_quantize(f32, tmp_path / "theirs.gguf", MIXES["Q4_K_M"][0],
                                              **llama_imatrix_args(imx)))
    assert types["blk.1.ffn_up_exps.weight"] not in ("F32", "F16") and types["blk.0.ssm_in.weight"] != "F32"
    n_mats = len([t for t in read_info(f32).tensors if t.name.startswith("blk.") and len(t.shape) >= 2
                  and t.name.endswith(".weight") and ".ssm_conv1d." not in t.name and ".ssm_norm." not in t.name])
    assert read_info(ours).metadata["quantize.imatrix.entries_count"] == n_mats
    plain = convert(hf, tmp_path / "plain.gguf", "Q4_K_M")
    a, b = ({t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(p)).tensors} for p in (ours, plain))
    assert not np.array_equal(a["blk.1.ffn_up_exps.weight"], b["blk.1.ffn_up_exps.weight"])
    assert not np.array_equal(a["blk.3.ffn_down_exps.weight"], b["blk.3.ffn_down_exps.weight"])


def test_experts_without_gate_found_and_recomputed():
    """An experts module with 3-D ``up_proj`` and ``down_proj`` only (squared-ReLU experts) is found in its layer,
    and the down projection's input is act(up x) with that expert's weights."""
    import torch

    from slimedge.calib.imatrix import Target, _expert_hidden, _experts_for

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up_proj = torch.nn.Parameter(torch.randn(4, 6, 8))
            self.down_proj = torch.nn.Parameter(torch.randn(4, 8, 6))
            self.act_fn = lambda x: torch.relu(x) ** 2

    mod = Experts()
    found = _experts_for({"model.layers.1.mixer.experts": mod, "model.layers.1.mixer.gate": torch.nn.Linear(8, 4)},
                         Target("blk.1.ffn_down_exps.weight", "x", 6, 4, "down"), "m")
    assert found == ("model.layers.1.mixer.experts", mod)
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(_expert_hidden(mod, 2, x), torch.relu(x @ mod.up_proj[2].T) ** 2)
