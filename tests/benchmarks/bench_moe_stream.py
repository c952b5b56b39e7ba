"""Streaming proof for MoE: convert a Mixtral-shaped random bf16 model to Q4_K_M in a child process and
compare its peak RSS with the largest single expert slice as float32 (goal: under 2x that, never a layer).

    python tests/benchmarks/bench_moe_stream.py                 # Mixtral-8x7B width, 1 layer: ~3.3 GB bf16
    python tests/benchmarks/bench_moe_stream.py --scale 0.25    # a quick run of a few hundred MB

The model (config.json, one bf16 model.safetensors with one tensor per expert as Hub checkpoints have,
a 32000-piece SentencePiece tokenizer) is written one tensor at a time (tests/benchmarks/_models.py),
so building it stays low-memory too. ``--scale`` multiplies hidden size and expert width (rounded to
multiples of 256). At small scales the interpreter and numpy (~100 MB) dominate the peak, so the 2x goal
is only meaningful near full width, where one expert slice is 235 MB. Measured at full width (2-core
machine): 3427 MB bf16 -> 1126 MB Q4_K_M in 26 s, peak RSS 128 MB = 0.54x one expert slice, 0.02x the layer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import tensor_shapes as llama_tensor_shapes  # noqa: E402
from _models import tinyllama_tokenizer, write_bf16_safetensors  # noqa: E402

MIXTRAL = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096,
               rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False, architectures=["MixtralForCausalLM"],
               model_type="mixtral", bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")


def mixtral_config(scale: float, layers: int, experts: int) -> dict:
    def r256(x: float) -> int:
        return max(256, int(round(x / 256)) * 256)

    return dict(MIXTRAL, hidden_size=r256(4096 * scale), intermediate_size=r256(14336 * scale),
                num_hidden_layers=layers, num_local_experts=experts)


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """_models.tensor_shapes' Llama layout with each layer's MLP replaced by a router and per-expert w1/w2/w3."""
    h, f, e = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"]
    out = []
    for name, shape in llama_tensor_shapes(cfg):
        if ".mlp.gate_proj." in name:  # the first of a layer's three MLP tensors: the MoE block instead
            p = name.split("mlp.")[0]
            out.append((p + "block_sparse_moe.gate.weight", (e, h)))
            for x in range(e):
                q = f"{p}block_sparse_moe.experts.{x}."
                out += [(q + "w1.weight", (f, h)), (q + "w2.weight", (h, f)), (q + "w3.weight", (f, h))]
        elif ".mlp." not in name:
            out.append((name, shape))
    return out


_HWM = ("import atexit, runpy, sys\n"
        "def _hwm():\n"
        "    kb = next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))\n"
        "    print('VMHWM_KB', kb, file=sys.stderr)\n"
        "atexit.register(_hwm)\n"
        "sys.argv = ['slimedge'] + sys.argv[1:]\n"
        "runpy.run_module('slimedge', run_name='__main__')\n")


def run_slimedge(args: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit status) of ``slimedge ARGS`` in its own process.

    The peak is the child's own VmHWM, printed at its exit: wait4's ru_maxrss would inherit this
    process's high-water mark (the model was just written from here) across fork and exec.
    """
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _HWM, *args], stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    kb = [int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("VMHWM_KB ")]
    if proc.returncode or not kb:
        sys.stderr.write(proc.stderr)
    return wall, (kb[-1] * 1024 if kb else 0), proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="width relative to Mixtral 8x7B (default 1.0)")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()

    cfg = mixtral_config(args.scale, args.layers, args.experts)
    with tempfile.TemporaryDirectory(prefix="bench-moe-", dir=args.dir) as tmp:
        model = Path(tmp) / "mixtral"
        model.mkdir()
        tinyllama_tokenizer(model)
        (model / "config.json").write_text(json.dumps(cfg, indent=1))
        size = write_bf16_safetensors(model / "model.safetensors", tensor_shapes(cfg))
        out = Path(tmp) / "mixtral-q4_k_m.gguf"
        wall, rss, rc = run_slimedge(["convert", str(model), "-o", str(out), "--type", "Q4_K_M", "-q",
                                      "-t", str(args.threads)])
        if rc:
            raise SystemExit(f"convert failed with exit status {rc}")
        h, f, e = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"]
        expert_f32 = h * f * 4  # one expert's w1 (or w2, w3) as float32
        layer_f32 = 3 * e * expert_f32
        mb = 1e6
        print(f"Mixtral-shaped: hidden {h}, expert width {f}, {e} experts, {cfg['num_hidden_layers']} layer(s); "
              f"{size / mb:.0f} MB bf16 -> {out.stat().st_size / mb:.0f} MB Q4_K_M in {wall:.1f} s")
        print(f"peak RSS of the convert process: {rss / mb:.0f} MB")
        print(f"largest expert slice as float32: {expert_f32 / mb:.0f} MB  -> peak / slice = {rss / expert_f32:.2f}x "
              f"(goal < 2x)")
        print(f"one layer's experts as float32: {layer_f32 / mb:.0f} MB  -> peak / layer = {rss / layer_f32:.2f}x")


if __name__ == "__main__":
    main()
