"""slimedge.calib.imatrix: llama-imatrix's statistic, computed with forward hooks on the HF model.

The check is an independent recomputation: a from-scratch NumPy float64 forward of the tiny Llama (RMSNorm,
neox rope, grouped-query causal attention, SiLU MLP) over the same chunks, cut here the way llama-imatrix
cuts them (BOS-first tokens, ``len // ctx`` chunks, each chunk's first token replaced by BOS), and the
squared inputs of every projection summed.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from tests.factory import cached_hf_model

from slimedge.calib import compute_imatrix
from slimedge.cli import main
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.quant.imatrix_file import read_imatrix

TEXT = open(textwrap.__file__, encoding="utf-8").read()


def _weights(model_dir):
    from safetensors.numpy import load_file

    return {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()}


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _manual_sums(model_dir, chunks):
    """GGUF name -> float64 sum of squared inputs, from a NumPy forward of the Llama in ``model_dir``."""
    cfg = json.loads((model_dir / "config.json").read_text())
    W = _weights(model_dir)
    d, nh, nkv, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    hd = cfg.get("head_dim") or d // nh
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    sums: dict[str, np.ndarray] = {}

    def add(name, x):
        sums[name] = sums.get(name, 0) + (x.reshape(-1, x.shape[-1]) ** 2).sum(0)

    for ids in chunks:
        T = len(ids)
        h = W["model.embed_tokens.weight"][ids]
        inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
        ang = np.outer(np.arange(T), inv)
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

        def rope(x):  # x [heads, T, hd], rotate_half layout
            rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
            return x * cos + rot * sin

        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = _rms(h, W[p + "input_layernorm.weight"], eps)
            for n in ("attn_q", "attn_k", "attn_v"):
                add(f"blk.{i}.{n}.weight", x)
            q = rope((x @ W[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2))
            k = rope((x @ W[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2))
            v = (x @ W[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
            k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
            a = np.exp(s - s.max(-1, keepdims=True))
            a = (a / a.sum(-1, keepdims=True)) @ v
            a = a.transpose(1, 0, 2).reshape(T, nh * hd)
            add(f"blk.{i}.attn_output.weight", a)
            h = h + a @ W[p + "self_attn.o_proj.weight"].T
            x = _rms(h, W[p + "post_attention_layernorm.weight"], eps)
            add(f"blk.{i}.ffn_gate.weight", x)
            add(f"blk.{i}.ffn_up.weight", x)
            g = x @ W[p + "mlp.gate_proj.weight"].T
            m = g / (1 + np.exp(-g)) * (x @ W[p + "mlp.up_proj.weight"].T)
            add(f"blk.{i}.ffn_down.weight", m)
            h = h + m @ W[p + "mlp.down_proj.weight"].T
    return sums


def _llama_chunks(model_dir, ctx, n):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(TEXT, add_special_tokens=True)["input_ids"]  # the tiny SentencePiece tokenizer adds BOS
    assert ids[0] == tok.bos_token_id
    return [[tok.bos_token_id] + ids[i * ctx + 1:(i + 1) * ctx] for i in range(n)]


def test_imatrix_equals_independent_recomputation():
    model = cached_hf_model(arch="llama", kquant=True)
    ctx, n = 32, 3
    imx = compute_imatrix(model, TEXT, ctx=ctx, chunks=n, batch=2, dataset="textwrap.py")  # batches of 2 and 1
    want = _manual_sums(model, _llama_chunks(model, ctx, n))
    assert set(imx.entries) == set(want)
    for name, s in want.items():
        e = imx.entries[name]
        assert e.counts.tolist() == [n * ctx], name  # every position of every chunk
        np.testing.assert_allclose(e.sums, s, rtol=2e-5, err_msg=name)
    assert (imx.chunk_count, imx.chunk_size, imx.datasets) == (n, ctx, ["textwrap.py"])
    # all chunks by default; --chunks caps
    assert compute_imatrix(model, TEXT[:3000], ctx=ctx).chunk_count > n


@pytest.mark.parametrize("arch", ["llama", "phi3", "qwen2"])
def test_cli_names_are_the_converted_gguf_tensors(tmp_path, arch):
    """Every 2-D blk.* matrix of the converted file is measured under its GGUF name (Phi-3: fused qkv, gate_up)."""
    model = cached_hf_model(arch=arch)
    out = tmp_path / "imatrix.gguf"
    r = CliRunner().invoke(main, ["imatrix", str(model), "--data", textwrap.__file__, "-o", str(out),
                                  "--ctx", "32", "--chunks", "2", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "f32.gguf"), "--type", "F32", "-q"])
    assert r.exit_code == 0, r.output
    mats = {t.name: t.shape for t in read_info(tmp_path / "f32.gguf").tensors
            if t.name.startswith("blk.") and len(t.shape) == 2}
    imx = read_imatrix(out)
    assert {n: (e.n_mat, e.n_cols) for n, e in imx.entries.items()} == {n: (1, s[-1]) for n, s in mats.items()}
    assert all(e.counts.tolist() == [64] for e in imx.entries.values())
    assert imx.datasets == [textwrap.__file__] and imx.chunk_count == 2 and imx.chunk_size == 32
    if arch == "phi3":
        assert "blk.0.attn_qkv.weight" in imx.entries and "blk.1.ffn_up.weight" in imx.entries


def test_process_output_and_legacy_output(tmp_path):
    model = cached_hf_model(arch="llama", kquant=True)
    out = tmp_path / "imatrix.dat"
    r = CliRunner().invoke(main, ["imatrix", str(model), "--data", textwrap.__file__, "-o", str(out),
                                  "--ctx", "32", "--chunks", "2", "--process-output", "-q"])
    assert r.exit_code == 0, r.output
    imx = read_imatrix(out)  # a .dat name: the legacy format
    assert imx.legacy and "output.weight" in imx.entries and imx.chunk_count == 2
    ref = compute_imatrix(model, TEXT, ctx=32, chunks=2, process_output=True)
    for n in ref.entries:
        np.testing.assert_allclose(imx.importance(n), ref.importance(n), rtol=1e-6)


def test_user_errors(tmp_path):
    model = cached_hf_model(arch="llama", kquant=True)
    with pytest.raises(SlimedgeError, match="fewer than one chunk"):
        compute_imatrix(model, "def f(): pass", ctx=64)
    short = tmp_path / "t.txt"
    short.write_text("x = 1\n")
    r = CliRunner().invoke(main, ["imatrix", str(model), "--data", str(short), "-o", str(tmp_path / "i.gguf"), "-q"])
    assert r.exit_code == 1 and "fewer than one chunk" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["imatrix", str(model), "--data", str(tmp_path / "missing"), "-o",
                                  str(tmp_path / "i.gguf"), "-q"])
    assert r.exit_code == 1 and "not found" in r.output


def test_moe_experts_counted_separately():
    """Mixtral: router and per-expert statistics equal a recomputation from the MoE block's input (captured at
    post_attention_layernorm's output), the router weights (softmax, top-k) and each expert's w1/w3."""
    import torch
    from transformers import AutoModelForCausalLM

    model = cached_hf_model(arch="mixtral")
    cfg = json.loads((model / "config.json").read_text())
    n_exp, top_k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    ctx, n = 32, 3
    imx = compute_imatrix(model, TEXT, ctx=ctx, chunks=n)
    W = _weights(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    seen: dict[int, np.ndarray] = {}
    for i, layer in enumerate(hf.model.layers):
        layer.post_attention_layernorm.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, []).append(
            out.detach().reshape(-1, out.shape[-1]).double().numpy()))
    with torch.no_grad():
        hf.model(input_ids=torch.tensor(_llama_chunks(model, ctx, n)), use_cache=False)
    for i in range(cfg["num_hidden_layers"]):
        x = np.concatenate(seen[i])
        p = f"model.layers.{i}.block_sparse_moe."
        np.testing.assert_allclose(imx.entries[f"blk.{i}.ffn_gate_inp.weight"].sums, (x * x).sum(0), rtol=2e-5)
        logits = x @ W[p + "gate.weight"].T
        chosen = np.argsort(-logits, axis=-1)[:, :top_k]
        gate_e, down_e = imx.entries[f"blk.{i}.ffn_gate_exps.weight"], imx.entries[f"blk.{i}.ffn_down_exps.weight"]
        assert gate_e.n_mat == n_exp and gate_e.counts.sum() == n * ctx * top_k
        for e in range(n_exp):
            xe = x[(chosen == e).any(-1)]
            assert gate_e.counts[e] == down_e.counts[e] == len(xe)
            g = xe @ W[p + f"experts.{e}.w1.weight"].T
            h = g / (1 + np.exp(-g)) * (xe @ W[p + f"experts.{e}.w3.weight"].T)
            np.testing.assert_allclose(gate_e.sums.reshape(n_exp, -1)[e], (xe * xe).sum(0), rtol=2e-5)
            np.testing.assert_allclose(imx.entries[f"blk.{i}.ffn_up_exps.weight"].sums.reshape(n_exp, -1)[e],
                                       (xe * xe).sum(0), rtol=2e-5)
            np.testing.assert_allclose(down_e.sums.reshape(n_exp, -1)[e], (h * h).sum(0), rtol=2e-5)


def test_device_cuda_same_statistic_or_clear_error():
    """--device cuda: the same matrix as on the CPU where a GPU is present, else one clear line."""
    import torch

    model = cached_hf_model(arch="llama", kquant=True)
    if not torch.cuda.is_available():
        with pytest.raises(SlimedgeError, match="no CUDA device"):
            compute_imatrix(model, TEXT, ctx=32, chunks=2, device="cuda")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu, cpu = (compute_imatrix(model, TEXT, ctx=32, chunks=2, device=d) for d in ("cuda", "cpu"))
    for n, e in cpu.entries.items():
        np.testing.assert_allclose(gpu.entries[n].sums, e.sums, rtol=1e-4)
