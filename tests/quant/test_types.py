"""slimedge.quant.types against the gguf package's constants, and every reader of it.

The per-type facts (block and byte sizes, type and file-type ids, float and KV-cache types) are derived
from gguf in one module; here they are checked against gguf's tables, llama.cpp's KV-cache list, the
C kernels' type table (kernels/slimedge_kernels.h, the binding) and the standalone bundle launcher's copy.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as T

from slimedge import _kernels
from slimedge.quant import REGISTRY, mixes, types
from slimedge.quant.formats import qtype_of

ROOT = Path(__file__).resolve().parents[2]
# llama.cpp common/arg.cpp kv_cache_types (the values --cache-type-k/-v accept)
LLAMA_KV_CACHE_TYPES = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"}


@pytest.mark.parametrize("t", list(GGML_QUANT_SIZES), ids=lambda t: t.name)
def test_sizes_are_ggufs(t):
    bs, ts = GGML_QUANT_SIZES[t]
    for spelling in (t, int(t), np.int64(int(t)), t.name, t.name.lower()):
        assert types.ggml_type(spelling) is t
        assert (types.block_size(spelling), types.type_size(spelling)) == (bs, ts)
    assert types.bytes_per_element(t) == ts / bs
    assert types.row_bytes(t, 4 * bs) == 4 * ts


def test_block_constants_and_names():
    assert (types.QK, types.QK_K) == (32, 256)
    assert types.GGML_TYPE_NAMES == {t.name for t in T}
    with pytest.raises(KeyError):
        types.ggml_type("q9_9")
    with pytest.raises(ValueError):
        types.ggml_type(9999)


def test_float_types():
    assert types.FLOAT_TYPES == {T.F32, T.F16, T.BF16}
    assert types.FLOAT_TYPE_NAMES == {"F32", "F16", "BF16"}
    assert all(types.block_size(t) == 1 for t in types.FLOAT_TYPES)


def test_file_types_are_llamas():
    for m in LlamaFileType:
        if m == LlamaFileType.GUESSED:
            assert m.name not in types.FILE_TYPE_NAMES
            continue
        short = types.file_type_name(int(m))
        assert m.name in (f"MOSTLY_{short}", f"ALL_{short}")
        assert types.file_type_id(short) == int(m) == types.file_type_id(short.lower())
    assert (types.file_type_id("F32"), types.file_type_id("F16"), types.file_type_id("Q4_K_M"),
            types.file_type_id("BF16")) == (0, 1, 15, 32)
    with pytest.raises(KeyError):
        types.file_type_id("Q4_K_X")
    with pytest.raises(ValueError):
        types.file_type_name(4)  # MOSTLY_Q4_1_SOME_F16: removed from llama.cpp and gguf


def test_mixes_take_their_ids_from_gguf():
    aliases = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # llama-quantize's short names
    for mix, (ftype, base) in mixes.MIXES.items():
        name = aliases.get(mix, mix)
        assert ftype == int(LlamaFileType["ALL_F32" if name == "F32" else f"MOSTLY_{name}"]), mix
        # llama-quant.cpp's default type per file type: the k-quant mixes drop _S/_M/_L, the rest as listed
        # (IQ2_S -> IQ2_XS, IQ2_M -> IQ2_S, IQ3_XS/IQ3_M -> IQ3_S are llama.cpp's own choices)
        other = {"MXFP4_MOE": "MXFP4", "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S", "IQ3_XS": "IQ3_S", "IQ3_M": "IQ3_S"}
        want = other.get(name) or (re.sub(r"_[SML]$", "", name) if re.fullmatch(r"Q\d_K_[SML]", name) else name)
        assert base.name == want, mix
    assert mixes.resolve_ftype("q4_k_m") == (15, T.Q4_K)
    assert mixes.file_type(mixes.QuantSpec("Q2_K_S")) == 21
    assert mixes._FLOATS is types.FLOAT_TYPES


def test_kv_cache_types_are_llamas():
    assert set(types.CACHE_TYPES) == LLAMA_KV_CACHE_TYPES
    for name, tid in types.CACHE_TYPES.items():
        t = T(tid)
        assert t.name.lower() == name
        bs, ts = GGML_QUANT_SIZES[t]
        assert types.CACHE_BYTES[name] == ts / bs
    assert types.CACHE_BYTES["q8_0"] == 34 / 32 and types.CACHE_BYTES["f16"] == 2.0


def test_every_reader_uses_the_one_table():
    from slimedge import memory, targets
    from slimedge.bench import runner
    from slimedge.bundle import build
    from slimedge.source import gguf_src

    assert memory.CACHE_BYTES is types.CACHE_BYTES
    assert runner.CACHE_TYPE_IDS is types.CACHE_TYPES
    assert targets.CACHE_TYPES == tuple(types.CACHE_TYPES)
    assert build.FLOAT_TYPE_NAMES is types.FLOAT_TYPE_NAMES
    assert gguf_src.FLOAT_TYPES is types.FLOAT_TYPES
    # the profile check's known type names: every llama file type's and every GGML type's
    old = {n[len("MOSTLY_"):] for n in LlamaFileType.__members__ if n.startswith("MOSTLY_")}
    assert targets._known_types() == old | {t.name for t in T} | {"F32"}


def test_the_standalone_launcher_copy_matches():
    """The bundle's runtime (beside its launcher) runs without slimedge installed, so it keeps its own copy."""
    path = ROOT / "slimedge" / "bundle" / "server_runtime.py"
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.startswith(("slimedge", ".")) or m == "" for m in imported), imported
    spec = importlib.util.spec_from_file_location("standalone_runtime", path)
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    assert runtime.CACHE_TYPES == types.CACHE_TYPES


def _c_type_table() -> list[tuple[str, str, int, str, int]]:
    """The SE_TYPES lines of kernels/slimedge_kernels.h: (NAME, name, id, block size token, imatrix)."""
    text = (ROOT / "kernels" / "slimedge_kernels.h").read_text()
    body = text[text.index("#define SE_TYPES(X)"):]
    body = body[:body.index("\n\n")]
    rows = re.findall(r"X\((\w+),\s*(\w+),\s*(\d+),\s*(\w+),\s*([01])\)", body)
    return [(a, b, int(c), d, int(e)) for a, b, c, d, e in rows]


def test_registry_c_table_binding_and_gguf_agree():
    """One C table (SE_TYPES) drives the dispatch and the binding; it, the registry and gguf agree."""
    table = _c_type_table()
    qk = {"1": 1, "SE_QK": types.QK, "SE_QK_K": types.QK_K,
          "SE_QK1_0": types.block_size("Q1_0"), "SE_QK2_0": types.block_size("Q2_0"),
          "SE_QK_NVFP4": types.block_size("NVFP4")}  # kernels/se_blocks2.h
    assert [r[2] for r in table] == list(_kernels.supported_types())
    assert {T(r[2]) for r in table} == set(REGISTRY)
    for name, lower, tid, bs_token, imx in table:
        t = T(tid)
        assert t.name == name and lower == name.lower()
        assert qk[bs_token] == types.block_size(t)
        assert (_kernels.block_size(tid), _kernels.type_size(tid)) == GGML_QUANT_SIZES[t]
        assert bool(_kernels.has_imatrix(tid)) == bool(imx) == (t not in types.FLOAT_TYPES)
    for t, fmt in REGISTRY.items():
        assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[t] and fmt.qtype is t
        assert qtype_of(t.name.lower()) is t
