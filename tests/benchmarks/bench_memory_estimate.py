"""Memory estimate vs the peak RSS llama.cpp really reaches, on a TinyLlama-1.1B-shaped model.

    python tests/benchmarks/bench_memory_estimate.py [--types Q4_K_M,Q8_0] [--ctx 2048,4096] [--keep DIR]

Builds a random-weight model with TinyLlama-1.1B's shapes (22 layers, hidden 2048, FFN 5632,
32 heads, 4 KV heads, vocabulary 32000; SentencePiece tokenizer with one token per row, from
``_models.tinyllama_tokenizer``) as a Hugging Face folder, converts it with ``slimedge convert``,
then for each type and context runs the bench child (fresh process: load, a prompt filling the
context but 32 tokens, then 32 generated tokens) with the cpu profile's batch settings (2 threads)
and this machine's repacking (x86 AVX2) and compares the estimate with the child's peak RSS.
Prints estimate / measured per case (target: >= 1.00 and <= 1.10). The model is kept in --keep
(default ~/.cache/slimedge-bench/tinyllama-shape) for reruns.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for the tests package

TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, rope_theta=10000.0)


def make_model(dir: Path) -> Path:
    from _models import tinyllama_tokenizer  # tests/benchmarks/_models.py
    from tests.factory import make_hf_model

    if not (dir / "config.json").is_file():
        t0 = time.time()
        # 32000 embedding rows; factory's small tokenizer is then replaced by one with a token per row
        make_hf_model(dir, arch="llama", dtype="float16", vocab_size=32000, **TINYLLAMA)
        print(f"built HF model in {time.time() - t0:.0f}s", flush=True)
    if tinyllama_tokenizer(dir):  # also updates a folder kept from before (1000 pieces, padded)
        for stale in dir.parent.glob("tinyllama-shape-*.gguf"):  # converted with the old tokenizer
            stale.unlink()
    return dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q4_K_M,Q8_0")
    ap.add_argument("--ctx", default="1024,2048")
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=Path.home() / ".cache" / "slimedge-bench" / "tinyllama-shape")
    args = ap.parse_args()

    from slimedge.bench.runner import run_child
    from slimedge.convert import convert
    from slimedge.memory import MiB, estimate, shape_from_gguf
    from slimedge.quant.mixes import QuantSpec
    from slimedge.targets import load_target

    hf = make_model(args.keep / "hf")
    cpu = load_target("cpu")
    rt0 = cpu.runtime
    rows = []
    for qtype in args.types.split(","):
        gguf = args.keep / f"tinyllama-shape-{qtype.lower()}.gguf"
        if not gguf.is_file():
            t0 = time.time()
            convert(hf, gguf, QuantSpec(ftype=qtype), threads=args.threads)
            print(f"converted {qtype} in {time.time() - t0:.0f}s", flush=True)
        shape = shape_from_gguf(gguf)
        for ctx in (int(c) for c in args.ctx.split(",")):
            rt = type(rt0)(**{**rt0.__dict__, "n_ctx": ctx})
            est = estimate(shape, rt, n_ctx=ctx, hardware=cpu.hardware)
            # fill the whole context, so the KV cache and the attention scratch reach full size
            r = run_child({"kind": "speed", "model": str(gguf), "n_ctx": ctx, "n_batch": rt.n_batch,
                           "n_ubatch": rt.n_ubatch, "n_threads": args.threads, "n_gpu_layers": 0,
                           "n_prompt": ctx - args.n_gen, "n_gen": args.n_gen}, timeout=1800)
            rss = r["peak_rss_bytes"]
            rows.append((qtype, ctx, est, rss))
            print(f"{qtype:7s} ctx {ctx:5d}: estimate {est.total_ram / MiB:7.0f} MiB (weights {est.weights_ram / MiB:.0f}"
                  f" + repacked {est.repack_ram / MiB:.0f} + KV {est.kv_ram / MiB:.0f} + compute {est.compute_ram / MiB:.0f} + runtime {est.host_ram / MiB:.0f})"
                  f"  measured peak RSS {rss / MiB:7.0f} MiB  ratio {est.total_ram / rss:.3f}", flush=True)
    print("\n| type | n_ctx | estimate MiB | peak RSS MiB | estimate / measured |\n|---|---:|---:|---:|---:|")
    for qtype, ctx, est, rss in rows:
        print(f"| {qtype} | {ctx} | {est.total_ram / MiB:.0f} | {rss / MiB:.0f} | {est.total_ram / rss:.3f} |")
    bad = [r for r in rows if not (1.0 <= r[2].total_ram / r[3] <= 1.10)]
    print("all within [1.00, 1.10]" if not bad else f"{len(bad)} case(s) outside [1.00, 1.10]")


if __name__ == "__main__":
    main()
