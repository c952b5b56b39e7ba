"""Converter behaviour that needs no llama.cpp: exact bytes, bf16/sharded input, GGUF source, plan, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from tests.factory import PHI3_LONGROPE, cached_hf_model
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from slimedge.arch.llama import permute_rope_rows
from slimedge.cli import main
from slimedge.convert import convert, plan
from slimedge.quant.formats import f32_to_bf16_bits
from slimedge.quant.mixes import QuantSpec

HF_TO_GGUF = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
              "model.norm.weight": "output_norm.weight"}
LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    _, _, bid, rest = hf.split(".", 3)
    part, suffix = rest.rsplit(".", 1)
    return f"blk.{bid}.{LAYER[part]}.{suffix}"


def hf_weights(model_dir) -> dict[str, np.ndarray]:
    """Source weights as float32 via torch's safetensors loader (independent of slimedge's reader)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update({k: v.float().numpy() for k, v in load_file(f).items()})
    return out


def llama_layout(name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    if ".attn_q." in name:
        return permute_rope_rows(w, cfg["num_attention_heads"])
    if ".attn_k." in name:
        return permute_rope_rows(w, cfg["num_key_value_heads"])
    return w


def tensors_of(path) -> dict:
    return {t.name: t for t in GGUFReader(path).tensors}


def test_bf16_sharded_source_to_bf16_is_bit_exact(tmp_path):
    model = cached_hf_model(arch="llama", dtype="bfloat16", shard_size="100KB")
    assert (model / "model.safetensors.index.json").is_file()
    assert len(list(model.glob("*.safetensors"))) > 2
    cfg = json.loads((model / "config.json").read_text())
    out = convert(model, tmp_path / "m.gguf", QuantSpec("BF16")).out
    got = tensors_of(out)
    src = hf_weights(model)
    assert set(got) == {gguf_name(n) for n in src}
    for hf, w in src.items():
        name = gguf_name(hf)
        t = got[name]
        if w.ndim == 1:
            assert t.tensor_type == T.F32
            np.testing.assert_array_equal(np.asarray(t.data), w)
        else:
            assert t.tensor_type == T.BF16
            want = f32_to_bf16_bits(llama_layout(name, w, cfg))
            np.testing.assert_array_equal(np.asarray(t.data).view(np.uint16).reshape(w.shape), want)


def test_q8_0_bytes_identical_to_ggml(tmp_path):
    from tests.ggml_ref import ggml_quantize

    model = cached_hf_model(arch="llama")
    cfg = json.loads((model / "config.json").read_text())
    out = convert(model, tmp_path / "m.gguf", QuantSpec("Q8_0", pure=True), threads=2).out
    got = tensors_of(out)
    n_checked = 0
    for hf, w in hf_weights(model).items():
        name = gguf_name(hf)
        if w.ndim != 2:
            continue
        assert got[name].tensor_type == T.Q8_0, name
        want = ggml_quantize(np.ascontiguousarray(llama_layout(name, w, cfg)), "Q8_0")
        np.testing.assert_array_equal(np.asarray(got[name].data).reshape(want.shape), want, err_msg=name)
        n_checked += 1
    assert n_checked == 2 + 7 * cfg["num_hidden_layers"]


def test_gguf_source_requantizes_like_direct_conversion(tmp_path):
    model = cached_hf_model(arch="llama")
    f32 = convert(model, tmp_path / "f32.gguf", QuantSpec("F32")).out
    via_gguf = convert(f32, tmp_path / "via.gguf", QuantSpec("Q8_0")).out
    direct = convert(model, tmp_path / "direct.gguf", QuantSpec("Q8_0")).out
    a, b = GGUFReader(via_gguf), GGUFReader(direct)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.tensor_type == tb.tensor_type
        np.testing.assert_array_equal(np.asarray(ta.data), np.asarray(tb.data), err_msg=ta.name)
    skip = {"GGUF.kv_count"}
    keys = set(a.fields) - skip
    assert keys == set(b.fields) - skip
    for k in keys:
        assert a.fields[k].contents() == b.fields[k].contents(), k


def test_dry_run_lists_types_and_matches_real_sizes(tmp_path):
    model = cached_hf_model(arch="llama")
    res = CliRunner().invoke(main, ["convert", str(model), "--type", "q8_0", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "blk.1.ffn_down.weight" in res.output and "Q8_0" in res.output and "bits per weight" in res.output
    assert list(tmp_path.iterdir()) == []
    p = plan(model, QuantSpec("Q8_0"))
    real = convert(model, tmp_path / "m.gguf", QuantSpec("Q8_0")).out
    ts = tensors_of(real)
    assert [t.name for t in p.tensors] == list(ts)
    for t in p.tensors:
        assert (t.qtype, t.nbytes) == (ts[t.name].tensor_type, int(ts[t.name].n_bytes))
    assert 8.0 < p.bits_per_weight < 9.0


def test_metadata_keys(tmp_path):
    model = cached_hf_model(arch="qwen2", tied=True)
    cfg = json.loads((model / "config.json").read_text())
    r = GGUFReader(convert(model, tmp_path / "m.gguf", QuantSpec("F16")).out)
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == "qwen2"
    assert f["general.name"] == model.name
    assert f["general.file_type"] == 1 and f["general.quantization_version"] == 2
    assert f["qwen2.context_length"] == cfg["max_position_embeddings"]
    assert f["qwen2.embedding_length"] == cfg["hidden_size"]
    assert f["qwen2.block_count"] == cfg["num_hidden_layers"]
    assert f["qwen2.feed_forward_length"] == cfg["intermediate_size"]
    assert f["qwen2.attention.head_count"] == cfg["num_attention_heads"]
    assert f["qwen2.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert f["qwen2.rope.freq_base"] == pytest.approx(cfg["rope_parameters"]["rope_theta"])
    assert f["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    assert f["qwen2.vocab_size"] == cfg["vocab_size"]
    assert len(f["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= names


def test_phi3_fused_tensors_and_rope_factors(tmp_path):
    rope = PHI3_LONGROPE["rope_parameters"]
    model = cached_hf_model(**PHI3_LONGROPE)
    r = GGUFReader(convert(model, tmp_path / "m.gguf", QuantSpec("F32")).out)
    ts = {t.name: t for t in r.tensors}
    assert ts["blk.0.attn_qkv.weight"].data.shape == (16 * (4 + 2 * 2), 64)
    assert ts["blk.0.ffn_up.weight"].data.shape == (2 * 160, 64)
    np.testing.assert_array_equal(np.asarray(ts["rope_factors_long.weight"].data), rope["long_factor"])
    np.testing.assert_array_equal(np.asarray(ts["rope_factors_short.weight"].data), rope["short_factor"])
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["phi3.rope.scaling.original_context_length"] == 256
    assert f["phi3.rope.scaling.attn_factor"] == pytest.approx((1 + np.log(4) / np.log(256)) ** 0.5)


def test_cli_progress_names_tensors_and_rate(tmp_path):
    model = cached_hf_model(arch="llama")
    res = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "m.gguf"), "--type", "f16", "--threads", "1"],
                             env={"SLIMEDGE_PROGRESS": "bar"})  # the terminal bar (CliRunner's stderr is no TTY)
    assert res.exit_code == 0, res.output
    assert "MB/s" in res.stderr and "output.weight" in res.stderr and "wrote" in res.stderr
    quiet = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "q.gguf"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_cli_type_overrides_reach_the_file(tmp_path):
    model = cached_hf_model(arch="llama")
    out = tmp_path / "m.gguf"
    res = CliRunner().invoke(main, ["convert", str(model), "-o", str(out), "--quiet", "--type", "q8_0", "--pure",
                                   "--tensor-type", r"blk\.1\.ffn_down=f32", "--tensor-type", "attn_v=bf16",
                                   "--output-tensor-type", "f16", "--token-embedding-type", "q8_0"])
    assert res.exit_code == 0, res.output
    types = {name: t.tensor_type for name, t in tensors_of(out).items()}
    assert types["blk.1.ffn_down.weight"] == T.F32
    assert types["blk.0.ffn_down.weight"] == T.Q8_0
    assert types["blk.0.attn_v.weight"] == types["blk.1.attn_v.weight"] == T.BF16
    assert types["output.weight"] == T.F16 and types["token_embd.weight"] == T.Q8_0
    assert types["blk.0.attn_norm.weight"] == T.F32
    bad = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "x.gguf"), "--tensor-type", "nonsense"])
    assert bad.exit_code != 0 and "REGEX=TYPE" in bad.output and not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("source,typ", [
    (dict(arch="llama", dtype="bfloat16", shard_size="100KB"), "Q8_0"),  # bf16 slices at offsets, q/k by head
    (dict(arch="llama"), "Q4_K_M"),
    (PHI3_LONGROPE, "F16"),  # fused qkv / gate_up, generated rope factors (whole)
    ("gguf", "Q8_0"),  # an F32 GGUF as source
])
def test_row_slices_give_the_same_file_as_whole_tensors(tmp_path, monkeypatch, source, typ):
    """Streaming every tensor in slices of a few rows (whole heads for q/k) writes the exact same file."""
    import slimedge.convert as conv

    if source == "gguf":
        src = convert(cached_hf_model(arch="llama"), tmp_path / "f32.gguf", QuantSpec("F32")).out
    else:
        src = cached_hf_model(**source)
    whole = convert(src, tmp_path / "whole.gguf", QuantSpec(typ), threads=2).out
    seen = []
    real = conv._load_checked

    def spy(t, out=None, job=conv._Job(0)):
        seen.append((t.name, t.shape, job))
        return real(t, out, job)

    monkeypatch.setattr(conv, "SLICE_VALUES", 200)  # ~3 rows of 64 values (a multiple of a head for q/k)
    monkeypatch.setattr(conv, "_load_checked", spy)
    sliced = convert(src, tmp_path / "sliced.gguf", QuantSpec(typ), threads=2).out
    assert sliced.read_bytes() == whole.read_bytes()
    n_tensors = len(tensors_of(whole))
    assert len(seen) > 5 * n_tensors
    for name, shape, job in seen:
        if len(shape) == 2 and "rope_factors" not in name:
            assert not job.whole and job.stop - job.start < shape[0], name
    if source != "gguf" and source["arch"] == "llama":
        heads = {job.stop - job.start for name, _, job in seen if ".attn_q." in name}
        assert heads == {16}  # head_dim rows: one head per slice


@pytest.mark.parametrize("typ", ["F16", "BF16"])
def test_half_precision_gguf_source_widens_exactly(tmp_path, monkeypatch, typ):
    """An F16/BF16 GGUF read back (whole and in row slices) to F32 holds exactly the stored values."""
    import slimedge.convert as conv

    half = convert(cached_hf_model(arch="llama"), tmp_path / "half.gguf", QuantSpec(typ)).out
    monkeypatch.setattr(conv, "SLICE_VALUES", 200)
    wide = tensors_of(convert(half, tmp_path / "f32.gguf", QuantSpec("F32")).out)
    for name, t in tensors_of(half).items():
        d = np.asarray(t.data)
        if t.tensor_type == T.BF16:
            want = (d.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            want = d.astype(np.float32)
        got = np.asarray(wide[name].data)
        assert wide[name].tensor_type == T.F32, name
        np.testing.assert_array_equal(got.reshape(-1), want.reshape(-1), err_msg=name)
