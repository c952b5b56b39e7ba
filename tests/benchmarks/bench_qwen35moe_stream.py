"""Streaming proof for Qwen3.5-MoE: convert a Qwen3.5-MoE-width random bf16 model to Q4_K_M in a child process and
compare its peak RSS with one layer's weights as float32 (goal: independent of the layer's size, well under it).

    python tests/benchmarks/bench_qwen35moe_stream.py                # 64 experts of width 512, hidden 2048
    python tests/benchmarks/bench_qwen35moe_stream.py --experts 128  # twice the layer: the peak should not follow

The model is a Qwen3.5-35B-A3B-style text tower (``Qwen3_5MoeForCausalLM``) of two layers, a gated delta-net
(linear-attention) layer and a gated full-attention layer, as the checkpoint ships them: 16 key / 32 value heads of
128 for the delta-net (fused q/k/v, z, a, b, a depthwise conv of 4), 16 query / 2 kv heads of 256 (query and gate
fused) for attention, per-expert ``gate/up/down_proj`` (width 512, stacked to ``ffn_*_exps`` while streaming), a
512-wide shared expert and its sigmoid gate. ``--experts`` sets the experts per layer (the release has 256; the
layer grows linearly with it) and ``--scale`` the hidden size (multiples of 256). Vocabulary: the 32000-piece
SentencePiece tokenizer (tests/benchmarks/_models.py), so 32000 rows, not the release's 248320.
Measured (2-core machine, shared): 16 / 64 / 128 experts -> one delta-net layer 349 / 953 / 1759 MB as float32,
peak RSS 129 / 129 / 120 MB (0.37x / 0.14x / 0.07x the layer; 1.92x / 0.48x / 0.22x one stacked expert tensor);
2008 MB bf16 -> 620 MB Q4_K_M in 50.7 s at 128 experts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from math import prod
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import tinyllama_tokenizer, write_bf16_safetensors  # noqa: E402
from bench_moe_stream import run_slimedge  # noqa: E402

A3B = dict(architectures=["Qwen3_5MoeForCausalLM"], model_type="qwen3_5_moe_text", vocab_size=32000,
           hidden_size=2048, num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=2, head_dim=256,
           linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
           linear_conv_kernel_dim=4, layer_types=["linear_attention", "full_attention"], num_experts=64,
           num_experts_per_tok=8, moe_intermediate_size=512, shared_expert_intermediate_size=512,
           intermediate_size=512, max_position_embeddings=262144, rms_norm_eps=1e-6, bos_token_id=1,
           eos_token_id=2, tie_word_embeddings=False, torch_dtype="bfloat16",
           rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25})


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, NumPy shape) of every tensor, in checkpoint order."""
    h, v, e, f = cfg["hidden_size"], cfg["vocab_size"], cfg["num_experts"], cfg["moe_intermediate_size"]
    fs = cfg["shared_expert_intermediate_size"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv, conv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"], cfg["linear_conv_kernel_dim"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{i}."
        if kind == "linear_attention":
            qkv = 2 * nk * dk + nv * dv
            out += [(p + "linear_attn.A_log", (nv,)), (p + "linear_attn.conv1d.weight", (qkv, 1, conv)),
                    (p + "linear_attn.dt_bias", (nv,)), (p + "linear_attn.in_proj_a.weight", (nv, h)),
                    (p + "linear_attn.in_proj_b.weight", (nv, h)), (p + "linear_attn.in_proj_qkv.weight", (qkv, h)),
                    (p + "linear_attn.in_proj_z.weight", (nv * dv, h)), (p + "linear_attn.norm.weight", (dv,)),
                    (p + "linear_attn.out_proj.weight", (h, nv * dv))]
        else:
            d, nq, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
            out += [(p + "self_attn.q_proj.weight", (2 * nq * d, h)), (p + "self_attn.k_proj.weight", (nkv * d, h)),
                    (p + "self_attn.v_proj.weight", (nkv * d, h)), (p + "self_attn.o_proj.weight", (h, nq * d)),
                    (p + "self_attn.q_norm.weight", (d,)), (p + "self_attn.k_norm.weight", (d,))]
        for x in range(e):
            q = f"{p}mlp.experts.{x}."
            out += [(q + "gate_proj.weight", (f, h)), (q + "up_proj.weight", (f, h)), (q + "down_proj.weight", (h, f))]
        out += [(p + "mlp.gate.weight", (e, h)), (p + "mlp.shared_expert.gate_proj.weight", (fs, h)),
                (p + "mlp.shared_expert.up_proj.weight", (fs, h)), (p + "mlp.shared_expert.down_proj.weight", (h, fs)),
                (p + "mlp.shared_expert_gate.weight", (1, h)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", type=int, default=64, help="experts per layer (default 64; the release: 256)")
    ap.add_argument("--scale", type=float, default=1.0, help="hidden size relative to 2048 (default 1.0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()

    cfg = dict(A3B, num_experts=args.experts, hidden_size=max(256, int(round(2048 * args.scale / 256)) * 256))
    with tempfile.TemporaryDirectory(prefix="bench-qwen35moe-", dir=args.dir) as tmp:
        model = Path(tmp) / "qwen35moe"
        model.mkdir()
        tinyllama_tokenizer(model)
        (model / "config.json").write_text(json.dumps(cfg, indent=1))
        shapes = tensor_shapes(cfg)
        size = write_bf16_safetensors(model / "model.safetensors", shapes)
        out = Path(tmp) / "qwen35moe-q4_k_m.gguf"
        wall, rss, rc = run_slimedge(["convert", str(model), "-o", str(out), "--type", "Q4_K_M", "-q",
                                      "-t", str(args.threads)])
        if rc:
            raise SystemExit(f"convert failed with exit status {rc}")
        mb = 1e6
        layer_f32 = 4 * sum(prod(s) for n, s in shapes if n.startswith("model.layers.0."))
        exps_f32 = 4 * sum(prod(s) for n, s in shapes if n.startswith("model.layers.0.mlp.experts.")
                           and n.endswith("gate_proj.weight"))  # one stacked ffn_gate_exps tensor
        print(f"Qwen3.5-MoE-shaped: hidden {cfg['hidden_size']}, {cfg['num_experts']} experts of width "
              f"{cfg['moe_intermediate_size']}, 2 layers (delta-net + attention); {size / mb:.0f} MB bf16 -> "
              f"{out.stat().st_size / mb:.0f} MB Q4_K_M in {wall:.1f} s")
        print(f"peak RSS of the convert process: {rss / mb:.0f} MB")
        print(f"one (delta-net) layer as float32: {layer_f32 / mb:.0f} MB  -> peak / layer = {rss / layer_f32:.2f}x; "
              f"one stacked expert tensor as float32: {exps_f32 / mb:.0f} MB -> {rss / exps_f32:.2f}x")


if __name__ == "__main__":
    main()
