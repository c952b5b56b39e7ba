"""slimedge.quant.mixes picks every tensor's type exactly as llama.cpp's quantizer does.

Each test model is an F32 GGUF written with gguf.GGUFWriter (llama-style names, tiny widths; the
quantizer reads only hyper-parameters, names and shapes, so no vocabulary is needed). llama.cpp
(``llama_cpp.llama_model_quantize``) quantizes it; the tensor types and general.file_type of its
output must equal ``choose_types`` / ``file_type`` for every mix, override and option.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.quant.mixes import (MIXES, ModelInfo, QuantSpec, TensorSpec, choose_types, file_type,
                                  parse_override, visiting_order)

MIX_NAMES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
             "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "F32"]


@dataclass(frozen=True)
class Cfg:
    name: str
    arch: str = "llama"
    n_layer: int = 2
    n_embd: int = 256
    n_head: int = 8
    n_head_kv: int = 2
    n_ff: int = 512
    n_vocab: int = 300
    tied: bool = False
    n_expert: int = 0
    max_rows: int = 0  # >0: cap every tensor's row count (row lengths stay real); for the deep models

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


MODELS = [
    Cfg("llama8_gqa4", n_layer=8),  # rows multiple of 256, n_gqa 4, untied
    Cfg("llama2_tied_gqa1", n_layer=2, n_head_kv=8, n_ff=320, tied=True),  # ffn_down rows 320: fallbacks
    Cfg("llama32_gqa2", n_layer=32, n_head_kv=4, n_ff=768, max_rows=8),
    Cfg("qwen2_odd", arch="qwen2", n_layer=3, n_embd=96, n_head=4, n_head_kv=1, n_ff=200, n_vocab=100),
    Cfg("phi3_fused", arch="phi3", n_layer=4, n_head_kv=8, n_ff=512, n_vocab=260),
    Cfg("llama80_70b", n_layer=80, n_head=8, n_head_kv=1, n_ff=512, n_vocab=64, max_rows=2),
    Cfg("llama_moe8", n_layer=4, n_expert=8, n_ff=256, n_vocab=64, max_rows=4),
    Cfg("falcon16", arch="falcon", n_layer=16, n_head_kv=1, n_ff=1024, n_vocab=64, max_rows=4),  # own rules
]


def tensor_shapes(c: Cfg) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF names and NumPy shapes in converter order (token_embd, blocks, output_norm, output)."""
    q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    out = [("token_embd.weight", (c.n_vocab, c.n_embd))]
    for i in range(c.n_layer):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", (c.n_embd,)))
        if c.arch in ("phi3", "falcon"):  # fused qkv; phi3 also fuses gate+up
            up = 2 * c.n_ff if c.arch == "phi3" else c.n_ff
            out += [(b + "attn_qkv.weight", (q + 2 * kv, c.n_embd)), (b + "attn_output.weight", (c.n_embd, q)),
                    (b + "ffn_norm.weight", (c.n_embd,)), (b + "ffn_up.weight", (up, c.n_embd)),
                    (b + "ffn_down.weight", (c.n_embd, c.n_ff))]
            continue
        out += [(b + "attn_q.weight", (q, c.n_embd)), (b + "attn_k.weight", (kv, c.n_embd)),
                (b + "attn_v.weight", (kv, c.n_embd)), (b + "attn_output.weight", (c.n_embd, q)),
                (b + "ffn_norm.weight", (c.n_embd,))]
        if c.arch == "qwen2":
            out += [(b + "attn_q.bias", (q,)), (b + "attn_k.bias", (kv,)), (b + "attn_v.bias", (kv,))]
        if c.n_expert:
            e = c.n_expert
            out += [(b + "ffn_gate_inp.weight", (e, c.n_embd)), (b + "ffn_gate_exps.weight", (e, c.n_ff, c.n_embd)),
                    (b + "ffn_up_exps.weight", (e, c.n_ff, c.n_embd)), (b + "ffn_down_exps.weight", (e, c.n_embd, c.n_ff))]
        else:
            out += [(b + "ffn_gate.weight", (c.n_ff, c.n_embd)), (b + "ffn_up.weight", (c.n_ff, c.n_embd)),
                    (b + "ffn_down.weight", (c.n_embd, c.n_ff))]
    out.append(("output_norm.weight", (c.n_embd,)))
    if not c.tied:
        out.append(("output.weight", (c.n_vocab, c.n_embd)))
    if c.max_rows:
        out = [(n, s if len(s) == 1 else (*s[:-2], min(s[-2], c.max_rows), s[-1])) for n, s in out]
    return out


def write_f32_gguf(path, c: Cfg) -> None:
    rng = np.random.default_rng(len(c.name))
    w = gguf.GGUFWriter(str(path), c.arch)
    w.add_name(c.name)
    w.add_context_length(256)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.n_ff)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_head_kv)
    if c.arch == "falcon":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(c.n_vocab)
    w.add_file_type(0)
    if c.n_expert:
        w.add_expert_count(c.n_expert)
        w.add_expert_used_count(2)
    for name, shape in tensor_shapes(c):
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.05))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- llama.cpp ---------------------------------------------------------------------------------------

def _silence_llama():
    import llama_cpp

    @llama_cpp.llama_log_callback
    def _quiet(level, text, user_data):
        pass

    _silence_llama.cb = _quiet  # keep the callback alive
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))


def llama_quantize(src, dst, ftype: int, *, overrides=(), imatrix: dict | None = None, **params) -> None:
    """Run llama.cpp's quantizer (the llama-quantize code path) with the given params."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = 2
    for k, v in params.items():
        setattr(p, k, v)
    keep = []
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
            vals = np.ascontiguousarray(vals, dtype=np.float32)
            keep += [name.encode(), vals]
            arr[i].name = keep[-2]
            arr[i].data = vals.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = vals.size
        arr[len(imatrix)].name = None
        p.imatrix = arr
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    assert rc == 0, f"llama.cpp failed to quantize {src} to ftype {ftype}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    _silence_llama()
    root = tmp_path_factory.mktemp("mixes")
    out = {}
    for c in MODELS:
        path = root / f"{c.name}-f32.gguf"
        write_f32_gguf(path, c)
        out[c.name] = path
    return out


def _ours(src, spec: QuantSpec):
    info = read_info(src)
    specs = [TensorSpec(t.name, t.shape) for t in info.tensors]
    types = choose_types(specs, spec, ModelInfo.from_metadata(info.metadata))
    return {s.name: q.name for s, q in zip(specs, types)}, [s.name for s in specs]


def _check(src, dst, spec: QuantSpec):
    ours, names = _ours(src, spec)
    theirs = read_info(dst)
    assert {t.name: t.type for t in theirs.tensors} == ours
    assert theirs.metadata["general.file_type"] == file_type(spec)
    # llama.cpp writes the tensors in the order it visits them, the order the counters depend on
    assert [t.name for t in theirs.tensors] == [names[i] for i in visiting_order(names)]
    return ours


# ---- every mix on every model -------------------------------------------------------------------------

@pytest.mark.parametrize("mix", MIX_NAMES)
def test_mix_matches_llama_cpp(models, tmp_path, mix):
    seen = set()
    for c in MODELS:
        dst = tmp_path / f"{c.name}-{mix}.gguf"
        llama_quantize(models[c.name], dst, MIXES[mix][0])
        ours = _check(models[c.name], dst, QuantSpec(mix))
        seen |= set(ours.values())
    assert MIXES[mix][1].name in seen  # the mix's base type is used somewhere
    if mix not in ("F16", "BF16", "F32", "Q8_0"):
        assert "Q6_K" in seen or "Q8_0" in seen  # output / tied embeddings got their promotion


def test_mix_rules_exercised(models):
    """The models above do reach the layer-dependent rules (guards against a vacuous comparison)."""
    ours, _ = _ours(models["llama8_gqa4"], QuantSpec("Q4_K_M"))
    assert [ours[f"blk.{i}.attn_v.weight"] for i in range(8)] == ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K",
                                                                  "Q6_K", "Q6_K"]
    assert ours["output.weight"] == "Q6_K" and ours["token_embd.weight"] == "Q4_K"
    ours, _ = _ours(models["llama2_tied_gqa1"], QuantSpec("Q4_K_M"))
    assert ours["token_embd.weight"] == "Q6_K"  # tied: the embeddings are the output
    assert ours["blk.1.ffn_down.weight"] == "Q8_0"  # Q6_K promotion, rows of 320 -> fallback Q8_0
    assert ours["blk.0.ffn_down.weight"] == "Q5_0"  # Q4_K, rows of 320 -> fallback Q5_0
    ours, _ = _ours(models["qwen2_odd"], QuantSpec("Q4_K_M"))
    assert ours["blk.1.ffn_down.weight"] == "F16" and ours["blk.0.attn_q.bias"] == "F32"
    ours, _ = _ours(models["llama80_70b"], QuantSpec("Q3_K_S"))
    assert ours["blk.5.attn_v.weight"] == "Q5_K"  # the 70B rule
    ours, _ = _ours(models["llama_moe8"], QuantSpec("Q4_K_M"))
    assert ours["blk.0.attn_k.weight"] == "Q8_0" and ours["blk.0.ffn_gate_inp.weight"] == "F32"
    ours, _ = _ours(models["falcon16"], QuantSpec("Q4_K_M"))
    assert ours["output.weight"] == "Q8_0"  # falcon: output always Q8_0
    assert [ours[f"blk.{i}.ffn_down.weight"] for i in (0, 1, 3, 4)] == ["Q6_K", "Q5_K", "Q4_K", "Q5_K"]


# ---- options ------------------------------------------------------------------------------------------

OPTION_CASES = [
    ("output_type", "llama8_gqa4", "Q4_K_M", dict(output_tensor_type="Q8_0")),
    ("output_type_tied", "llama2_tied_gqa1", "Q3_K_M", dict(output_tensor_type="Q5_0")),
    ("embd_type", "llama8_gqa4", "Q5_K_M", dict(token_embedding_type="Q8_0")),
    ("embd_type_tied", "llama2_tied_gqa1", "Q2_K", dict(token_embedding_type="Q4_K")),
    ("both", "phi3_fused", "Q4_K_S", dict(output_tensor_type="F16", token_embedding_type="Q6_K")),
    ("pure", "llama8_gqa4", "Q4_K_M", dict(pure=True)),
    ("pure_fallback", "qwen2_odd", "Q3_K_L", dict(pure=True)),
    ("leave_output", "llama8_gqa4", "Q3_K_M", dict(quantize_output=False)),
    ("float_with_output", "llama8_gqa4", "F16", dict(output_tensor_type="Q8_0")),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_options_match_llama_cpp(models, tmp_path, case):
    _, model, mix, kw = case
    spec = QuantSpec(mix, **kw)
    params = {}
    if "output_tensor_type" in kw:
        params["output_tensor_type"] = int(T[kw["output_tensor_type"]])
    if "token_embedding_type" in kw:
        params["token_embedding_type"] = int(T[kw["token_embedding_type"]])
    if "pure" in kw:
        params["pure"] = kw["pure"]
    if "quantize_output" in kw:
        params["quantize_output_tensor"] = kw["quantize_output"]
    dst = tmp_path / "out.gguf"
    llama_quantize(models[model], dst, MIXES[mix][0], **params)
    _check(models[model], dst, spec)


OVERRIDE_CASES = [
    ("attn_v", "llama8_gqa4", "Q4_K_M", ["attn_v=q8_0"]),
    ("first_match_wins", "llama8_gqa4", "Q3_K_M", [r"blk\.[0-3]\.ffn_down=q6_k", "ffn_down=q2_k", "ATTN_Q=Q5_0"]),
    ("embd_and_output", "llama2_tied_gqa1", "Q4_K_S", ["token_embd=q4_0", "ffn_down=q4_k"]),  # 320-row fallback
    ("counters_skip", "llama32_gqa2", "Q4_K_M", [r"blk\.(1|2|3)\.attn_v=q5_0"]),  # overridden: not counted
    ("float_mix_ignores", "llama8_gqa4", "F16", ["attn_v=q8_0"]),
    ("moe_experts", "llama_moe8", "Q3_K_M", ["exps=q4_k", "ffn_gate_inp=q8_0"]),
]


@pytest.mark.parametrize("case", OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_tensor_type_overrides_match_llama_cpp(models, tmp_path, case):
    _, model, mix, args = case
    pairs = [parse_override(a) for a in args]
    dst = tmp_path / "out.gguf"
    llama_quantize(models[model], dst, MIXES[mix][0], overrides=[(p, T[t]) for p, t in pairs])
    ours = _check(models[model], dst, QuantSpec(mix, overrides=pairs))
    if model == "llama8_gqa4" and mix != "F16":
        assert any(v in ("Q8_0", "Q6_K", "Q2_K", "Q5_0") for k, v in ours.items() if "blk" in k)


def test_imatrix_rules_match_llama_cpp(models, tmp_path):
    """With an importance matrix: Q2_K_S is allowed and Q4_0/Q5_0 protect the first ffn_down layers."""
    src = models["llama8_gqa4"]
    info = read_info(src)
    imatrix = {t.name: np.linspace(0.5, 2.0, t.shape[-1] * (t.shape[0] if len(t.shape) == 3 else 1))
               for t in info.tensors if len(t.shape) >= 2}
    for mix in ("Q4_0", "Q5_0", "Q2_K_S"):
        dst = tmp_path / f"{mix}.gguf"
        llama_quantize(src, dst, MIXES[mix][0], imatrix=imatrix)
        ours = _check(src, dst, QuantSpec(mix, has_imatrix=True))
        if mix == "Q4_0":
            assert ours["blk.0.ffn_down.weight"] == "Q4_1" and ours["blk.1.ffn_down.weight"] == "Q4_0"
    with pytest.raises(SlimedgeError, match="importance matrix"):
        choose_types([TensorSpec("blk.0.attn_q.weight", (256, 256))], QuantSpec("Q2_K_S"), ModelInfo("llama", 1))


# ---- parsing and errors -----------------------------------------------------------------------------

def test_names_aliases_and_errors():
    assert file_type(QuantSpec("q4_k_m")) == 15 and file_type(QuantSpec("Q4_K")) == 15
    assert file_type(QuantSpec("F32")) == 0 and file_type(QuantSpec("bf16")) == 32
    assert parse_override("Blk\\.0\\.ATTN_V=Q8_0") == ("blk\\.0\\.attn_v", "Q8_0")
    for bad in ("attn_v", "=q8_0", "attn_v=", "attn_v=q9_9", "(unclosed=q8_0"):
        with pytest.raises(SlimedgeError):
            parse_override(bad)
    with pytest.raises(SlimedgeError, match="unknown --type"):
        file_type(QuantSpec("Q7_K"))
    moe = ModelInfo("llama", 2, 8, 2, n_expert=8)
    with pytest.raises(SlimedgeError, match="layer"):
        choose_types([TensorSpec("ffn_down_exps.weight", (8, 256, 256))], QuantSpec("Q4_K_M"), moe)
    with pytest.raises(SlimedgeError, match="outside"):
        choose_types([TensorSpec("blk.7.ffn_down_exps.weight", (8, 256, 256))], QuantSpec("Q4_K_M"), moe)
