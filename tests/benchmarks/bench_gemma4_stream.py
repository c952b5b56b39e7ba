"""Streaming proof for Gemma 4: convert a Gemma-4-E4B-width random bf16 model to Q4_K_M in a child process and
compare its peak RSS with one layer's weights as float32 (goal: independent of the layer's size, well under it).

    python tests/benchmarks/bench_gemma4_stream.py               # E4B width (hidden 2560, ff 10240), 2 layers
    python tests/benchmarks/bench_gemma4_stream.py --scale 0.5   # half the width: the peak should not follow

The model is an E4B-style text tower (tests/benchmarks/_models.py writes it one tensor at a time): a sliding
layer (head 256) and a full layer (head 512), 256 per-layer-embedding dims per layer, 8 query / 2 kv heads, the
32000-piece SentencePiece tokenizer (so a 32000-row vocabulary, not E4B's 262144: slimedge refuses a tokenizer
that covers under 90% of the rows). ``--scale`` multiplies hidden size and MLP width (multiples of 256).
Measured (2-core machine, shared): scale 0.5 / 1 / 2 -> one layer 134 / 425 / 1479 MB as float32, peak RSS
96 / 96 / 97 MB (0.72x / 0.23x / 0.07x the layer); 1792 MB bf16 -> 589 MB Q4_K_M in 37.5 s at scale 2.
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

E4B = dict(architectures=["Gemma4ForCausalLM"], model_type="gemma4_text", vocab_size=32000, hidden_size=2560,
           intermediate_size=10240, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
           global_head_dim=512, hidden_size_per_layer_input=256, vocab_size_per_layer_input=32000,
           num_kv_shared_layers=0, max_position_embeddings=131072, rms_norm_eps=1e-6, sliding_window=512,
           final_logit_softcapping=30.0, layer_types=["sliding_attention", "full_attention"], bos_token_id=1,
           eos_token_id=2, tie_word_embeddings=True, torch_dtype="bfloat16",
           rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                               "rope_theta": 1000000.0}})


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, f, v, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    ple = cfg["hidden_size_per_layer_input"]
    out = [("model.embed_tokens.weight", (v, h)), ("model.embed_tokens_per_layer.weight", (v, n * ple)),
           ("model.per_layer_model_projection.weight", (n * ple, h)),
           ("model.per_layer_projection_norm.weight", (ple,))]
    for i, kind in enumerate(cfg["layer_types"]):
        d = cfg["head_dim"] if kind == "sliding_attention" else cfg["global_head_dim"]
        q, kv, p = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d, f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                (p + "self_attn.q_norm.weight", (d,)), (p + "self_attn.k_norm.weight", (d,)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f)), (p + "per_layer_input_gate.weight", (ple, h)),
                (p + "per_layer_projection.weight", (h, ple)), (p + "layer_scalar", (1,))]
        out += [(p + n + ".weight", (h,)) for n in ("input_layernorm", "post_attention_layernorm",
                                                   "pre_feedforward_layernorm", "post_feedforward_layernorm",
                                                   "post_per_layer_input_norm")]
    return out + [("model.norm.weight", (h,))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="width relative to Gemma 4 E4B (default 1.0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()

    def r256(x: float) -> int:
        return max(256, int(round(x / 256)) * 256)

    cfg = dict(E4B, hidden_size=r256(2560 * args.scale), intermediate_size=r256(10240 * args.scale))
    with tempfile.TemporaryDirectory(prefix="bench-gemma4-", dir=args.dir) as tmp:
        model = Path(tmp) / "gemma4"
        model.mkdir()
        tinyllama_tokenizer(model)
        (model / "config.json").write_text(json.dumps(cfg, indent=1))
        shapes = tensor_shapes(cfg)
        size = write_bf16_safetensors(model / "model.safetensors", shapes)
        out = Path(tmp) / "gemma4-q4_k_m.gguf"
        wall, rss, rc = run_slimedge(["convert", str(model), "-o", str(out), "--type", "Q4_K_M", "-q",
                                      "-t", str(args.threads)])
        if rc:
            raise SystemExit(f"convert failed with exit status {rc}")
        mb = 1e6
        layer_f32 = 4 * sum(prod(s) for n, s in shapes if n.startswith("model.layers.1."))
        biggest = 4 * max(prod(s) for _, s in shapes)
        print(f"Gemma-4-E4B-shaped: hidden {cfg['hidden_size']}, MLP {cfg['intermediate_size']}, 2 layers; "
              f"{size / mb:.0f} MB bf16 -> {out.stat().st_size / mb:.0f} MB Q4_K_M in {wall:.1f} s")
        print(f"peak RSS of the convert process: {rss / mb:.0f} MB")
        print(f"one (full-attention) layer as float32: {layer_f32 / mb:.0f} MB  -> peak / layer = "
              f"{rss / layer_f32:.2f}x; largest tensor as float32: {biggest / mb:.0f} MB -> {rss / biggest:.2f}x")


if __name__ == "__main__":
    main()
