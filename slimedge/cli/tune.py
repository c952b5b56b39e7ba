"""``slimedge tune QUANT.gguf --teacher HF_DIR --data FILE|DIR -o TUNED.gguf``: learn a quantized GGUF's block scales.

Parses options and calls :func:`slimedge.tune.tune` (torch is imported only when the command runs);
prints the held-out KL divergence before and after.
"""

from __future__ import annotations

from pathlib import Path

import click

from .options import make_progress, overwrite_option, quiet_option, threads_option


@click.command("tune")
@click.argument("gguf_file", metavar="QUANT.gguf", type=click.Path(path_type=Path))
@click.option("--teacher", required=True, metavar="HF_DIR", help="The teacher's Hugging Face model folder.")
@click.option("--data", required=True, metavar="FILE|DIR",
              help="Calibration data: text, JSONL, Parquet/Arrow, a datasets folder or a folder of them.")
@click.option("--data-field", default="text", show_default=True, help="Text field of JSONL/Parquet/Arrow rows.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Tuned GGUF file.")
@click.option("--steps", type=click.IntRange(min=0), default=300, show_default=True, help="Optimizer steps.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Learning rate of the (log) block scales d and dmin.")
@click.option("--sub-lr", type=click.FloatRange(min=0), default=None,
              help="Learning rate of the integer sub-block scales/mins, in integer units (default 20 x --lr).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Blocks per step.")
@click.option("--seq-len", type=click.IntRange(min=2), default=256, show_default=True, help="Tokens per block.")
@click.option("--max-blocks", type=click.IntRange(min=0), default=0, show_default=True,
              help="Use at most this many training blocks, spread evenly over the data (0: all).")
@click.option("--warm-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Layer-wise warm start: steps per matrix on its output error before the KL steps (0: none).")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda", help="Torch device.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Training matmuls: bf16 autocast (faster on CUDA and on CPUs with AVX512-BF16/AMX) or fp32; "
                   "auto: bf16 on CUDA that supports it. The learned fields and the file are exact either way.")
@click.option("--learn-codes", is_flag=True, help="Also learn the integer codes (straight-through estimator; the "
              "tuning then holds 12 more bytes per weight).")
@click.option("--codes-lr", type=click.FloatRange(min=0, min_open=True), default=5e-3, show_default=True,
              help="With --learn-codes: learning rate of the codes, in code units.")
@click.option("--mode", type=click.Choice(["e2e", "blockwise"]), default="e2e", show_default=True,
              help="e2e: --steps KL steps on the whole model. blockwise: first each decoder layer alone against the "
                   "float layer's output on cached calibration blocks (learned per-weight rounding + scales, "
                   "AutoRound-style; the float teacher is read from its safetensors one layer at a time), then the "
                   "--steps KL steps, which load it whole (--steps 0: none).")
@click.option("--block-iters", type=click.IntRange(min=0), default=200, show_default=True,
              help="--mode blockwise: optimizer steps per decoder layer.")
@click.option("--block-samples", type=click.IntRange(min=1), default=128, show_default=True,
              help="--mode blockwise: calibration blocks (of --seq-len tokens, spread evenly over the training "
                   "blocks) whose activations are cached.")
@click.option("--round-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--mode blockwise: learning rate of the per-weight rounding offsets, in code units (default "
                   "1 / --block-iters, as AutoRound; with --block-opt adam 1e-2).")
@click.option("--block-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--mode blockwise: learning rate of the log block scales (default 1e-3; adam: 5e-4; integer "
                   "sub-scales/mins: 40x).")
@click.option("--block-opt", type=click.Choice(["sign", "adam"]), default="sign", show_default=True,
              help="--mode blockwise: AutoRound's signed gradient descent, or Adam.")
@click.option("--block-input", type=click.Choice(["quant", "teacher", "mix"]), default="quant", show_default=True,
              help="--mode blockwise: what each quantized layer is tuned on: its own inputs from the already "
                   "tuned, quantized layers before it (quant, as AutoRound), the float teacher's (teacher), or both "
                   "(mix: the mean of the two errors).")
@click.option("--block-batch", type=click.IntRange(min=0), default=0, show_default=True,
              help="--mode blockwise: cached blocks per optimizer step (0: --batch-size).")
@click.option("--fsdp-teacher", is_flag=True, help="Under torchrun: shard the float teacher's weights across the "
              "processes (FSDP2, one unit per decoder layer), for a teacher that does not fit one device.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint (saved every 25 steps "
              "next to the output, removed when the output is written).")
@threads_option
@overwrite_option
@quiet_option
def cli(gguf_file: Path, teacher: str, data: str, data_field: str, out: Path, steps: int, lr: float,
        sub_lr: float | None, batch_size: int, seq_len: int, max_blocks: int, warm_steps: int, device: str,
        precision: str,
        learn_codes: bool, codes_lr: float, mode: str, block_iters: int, block_samples: int,
        round_lr: float | None, block_lr: float | None, block_opt: str, block_input: str, block_batch: int,
        fsdp_teacher: bool, seed: int, resume: bool,
        threads: int | None, overwrite: bool, quiet: bool) -> None:
    """Tune a quantized GGUF's block scales against its teacher (same types, same size).

    Keeps every tensor's type, integer codes and block layout and learns the block parameters (Q4_K/Q5_K:
    d, dmin, 6-bit sub-scales and mins; Q6_K: d and 8-bit sub-scales; Q2_K/Q3_K likewise; Q8_0/Q4_0/Q5_0:
    the block scale; Q4_1/Q5_1: scale and min; IQ4_NL/IQ4_XS: the scale and IQ4_XS's sub-scales, their codes
    being indices into a 16-level table) by gradient descent on the KL divergence from the teacher on
    the calibration data. The output has the same size, tensor types and metadata and runs in stock
    llama.cpp. With --mode blockwise the codes are learned too (per-weight rounding, block by block
    against the float layers), before the KL steps. QUANT.gguf is a GGUF of the teacher or of a student distilled from it (fewer layers, other
    widths). Under torchrun every process takes its share of each step's blocks; process 0 writes.

    \b
    Examples:
      slimedge convert ./teacher -o q4km.gguf --type Q4_K_M --imatrix imatrix.gguf
      slimedge tune q4km.gguf --teacher ./teacher --data train.txt -o q4km-tuned.gguf --steps 300
      slimedge tune q4km.gguf --teacher ./teacher --data train.txt -o q4km-bw.gguf --mode blockwise --steps 0
      torchrun --nproc-per-node 4 -m slimedge tune q4km.gguf --teacher ./teacher --data corpus/ \\
          -o q4km-tuned.gguf --device cuda --batch-size 16
    """
    from ..tune import TuneConfig, tune

    r = tune(TuneConfig(gguf=str(gguf_file), teacher=teacher, data=data, output=str(out), steps=steps, lr=lr,
                        sub_lr=sub_lr, batch_size=batch_size, seq_len=seq_len, max_blocks=max_blocks,
                        warm_steps=warm_steps,
                        device=device, threads=threads, seed=seed, overwrite=overwrite, data_field=data_field,
                        resume=resume, fsdp_teacher=fsdp_teacher, precision=precision, learn_codes=learn_codes,
                        codes_lr=codes_lr, mode=mode, block_iters=block_iters, block_samples=block_samples,
                        round_lr=round_lr, block_lr=block_lr, block_opt=block_opt, block_input=block_input,
                        block_batch=block_batch),
             make_progress(quiet))
    if not r.output:  # a non-zero rank under torchrun
        return
    if not quiet:
        types = ", ".join(f"{n} {t}" for t, n in sorted(r.tuned.items()))
        click.echo(f"wrote {out}: tuned {types} tensors ({r.frozen} kept); held-out KL vs teacher "
                   f"{r.kl_before:.5f} -> {r.kl_after:.5f} ({r.kl_after / max(r.kl_before, 1e-12):.2f}x), "
                   f"{r.seconds:.0f} s{'; teacher streamed layer by layer' if r.streamed else ''}", err=True)
