"""``slimedge distill``: train a small student from a teacher and write it as a Hugging Face folder.

Options map one to one onto :class:`slimedge.distill.config.DistillConfig` fields; examples are in the
command's help (``slimedge distill -h``).
"""

from __future__ import annotations

import click

from .options import make_progress, overwrite_option, quiet_option

def _opt(*decls, field: str, **kw):
    """A click option whose value goes to DistillConfig.<field>."""
    return click.option(*decls, field, **kw)


@click.command("distill")
@_opt("--teacher", field="teacher", required=True, type=click.Path(), help="Teacher: a Hugging Face model folder (or a Hub id in the local HF cache).")
@_opt("--data", field="data", required=True, type=click.Path(),
      help="Text, JSONL, Parquet or Arrow file, a folder of them, or a datasets (save_to_disk) folder.")
@_opt("--data-field", field="data_field", default="text", show_default=True,
      help="Field (JSONL) or column (Parquet, Arrow, datasets) holding the text.")
@_opt("--token-cache", field="token_cache", type=click.Path(), default=None,
      help="Folder of tokenized corpora, reused while tokenizer and data are unchanged "
           "(default: ~/.cache/slimedge/tokens).")
@_opt("-o", "--output", field="output", required=True, type=click.Path(), help="Output folder (HF format).")
@_opt("--student-config", field="student_config", type=click.Path(), default=None,
      help="config.json of the student (else derived from the teacher).")
@_opt("--layers", field="layers", type=int, default=None, help="Student layers (default: teacher's).")
@_opt("--hidden", field="hidden", type=int, default=None, help="Student hidden size.")
@_opt("--intermediate", field="intermediate", type=int, default=None, help="Student MLP size.")
@_opt("--heads", field="heads", type=int, default=None, help="Student attention heads.")
@_opt("--kv-heads", field="kv_heads", type=int, default=None, help="Student key/value heads.")
@_opt("--init", field="init", type=click.Choice(["auto", "teacher", "random"]), default="auto", show_default=True,
      help="Start from the teacher's weights where shapes allow, or randomly.")
@_opt("--seq-len", field="seq_len", type=int, default=256, show_default=True, help="Tokens per block.")
@_opt("--eval-fraction", field="eval_fraction", type=float, default=0.1, show_default=True,
      help="Share of blocks held out.")
@_opt("--steps", field="steps", type=int, default=None, help="Optimizer steps.")
@_opt("--epochs", field="epochs", type=float, default=None, help="Passes over the data (if no --steps).")
@_opt("--tokens", field="tokens", type=int, default=None, help="Training tokens (if no --steps/--epochs).")
@_opt("--batch-size", field="batch_size", type=int, default=8, show_default=True,
      help="Sequences per step (all processes).")
@_opt("--grad-accum", field="grad_accum", type=int, default=1, show_default=True, help="Micro-batches per step.")
@_opt("--lr", field="lr", type=float, default=5e-4, show_default=True, help="Peak learning rate (AdamW).")
@_opt("--weight-decay", field="weight_decay", type=float, default=0.01, show_default=True, help="AdamW decay.")
@_opt("--warmup", field="warmup", type=float, default=0.05, show_default=True,
      help="Warmup: fraction of steps (<1) or steps.")
@_opt("--clip", field="clip", type=float, default=1.0, show_default=True, help="Gradient-norm clip (0 = off).")
@_opt("--precision", field="precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
      show_default=True, help="auto: bf16 autocast on GPUs that support it.")
@_opt("--loss", field="loss", type=click.Choice(["fkl", "rkl", "jsd", "skl", "srkl"]), default="fkl",
      show_default=True, help="Logit loss: forward/reverse KL, generalized JSD, skew forward/reverse KL.")
@_opt("--alpha", field="alpha", type=float, default=0.0, show_default=True,
      help="Weight of cross-entropy on the data; KD gets 1-alpha.")
@_opt("--temperature", field="temperature", type=float, default=1.0, show_default=True,
      help="KD temperature (loss scaled by T^2).")
@_opt("--beta", field="beta", type=float, default=0.5, show_default=True, help="JSD mixture weight.")
@_opt("--skew", field="skew", type=float, default=0.1, show_default=True, help="Skew-KL mixture weight.")
@_opt("--chunk-size", field="chunk_size", type=int, default=64, show_default=True,
      help="Positions per logit-loss chunk (memory).")
@_opt("--feature-weight", field="feature_weight", type=float, default=0.0, show_default=True,
      help="Weight of hidden-state distillation.")
@_opt("--feature-loss", field="feature_loss", type=click.Choice(["mse", "cosine"]), default="mse",
      show_default=True, help="Hidden-state distance.")
@_opt("--teacher-cache", field="teacher_cache", type=click.Path(), default=None,
      help="Folder of the teacher's top-k log-probs (built if absent): no teacher in memory while training.")
@_opt("--cache-k", field="cache_k", type=int, default=64, show_default=True, help="Top-k kept per position.")
@_opt("--response", field="response", is_flag=True, help="Train on teacher continuations of prompts.")
@_opt("--on-policy", field="on_policy", type=float, default=0.0, show_default=True, metavar="LAMBDA",
      help="GKD's lambda: share of steps on the student's own continuations of prompts, scored by the teacher "
           "(only the generated tokens count; --gen-len, --gen-temperature, --top-p, --top-k).")
@_opt("--prompt-len", field="prompt_len", type=int, default=32, show_default=True,
      help="Prompt tokens (--response, --on-policy).")
@_opt("--gen-len", field="gen_len", type=int, default=64, show_default=True, help="Generated tokens.")
@_opt("--response-samples", field="response_samples", type=int, default=None,
      help="Prompts to continue (default: one per training block).")
@_opt("--greedy/--sample", field="greedy", default=False, help="Teacher decoding.")
@_opt("--gen-temperature", field="gen_temperature", type=float, default=1.0, show_default=True,
      help="Teacher sampling temperature.")
@_opt("--top-p", field="top_p", type=float, default=1.0, show_default=True, help="Teacher nucleus sampling.")
@_opt("--top-k", field="top_k", type=int, default=0, show_default=True, help="Teacher top-k sampling (0 = off).")
@_opt("--seed", field="seed", type=int, default=0, show_default=True, help="Seed (init, data order, sampling).")
@_opt("--checkpoint-every", field="checkpoint_every", type=int, default=0, show_default=True,
      help="Save a resumable checkpoint every N steps.")
@_opt("--checkpoint-dir", field="checkpoint_dir", type=click.Path(), default=None,
      help="Checkpoint folder (default: OUT_DIR.checkpoints, removed on success).")
@_opt("--resume", field="resume", is_flag=True, help="Continue from the checkpoint.")
@_opt("--device", field="device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_opt("--fsdp-teacher", field="fsdp_teacher", is_flag=True,
      help="Under torchrun: shard the teacher's weights across the processes (FSDP), for a teacher too "
           "large for one device.")
@_opt("--save-dtype", field="save_dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
      default="auto", show_default=True, help="dtype of the saved weights (auto: the teacher's).")
@overwrite_option
@quiet_option
def cli(overwrite: bool, quiet: bool, greedy: bool, **kw) -> None:
    """Distill a small student model from a teacher (logit, feature, response, on-policy).

    The student (the teacher's architecture, fewer layers or narrower) trains on --data against the
    teacher and is written to -o as a Hugging Face folder with distill_report.json. Under torchrun the
    student trains with DDP; --fsdp-teacher shards a teacher too large for one device.

    \b
    Examples:
      slimedge distill --teacher ./teacher --data corpus.txt -o ./student --layers 4 --steps 1000
      slimedge distill --teacher ./teacher --data docs/ -o ./student --layers 6 --hidden 512 \\
          --loss jsd --beta 0.5 --alpha 0.1 --teacher-cache ./tcache
      torchrun --nproc-per-node 2 -m slimedge distill --teacher ./teacher --data corpus.txt -o ./student
    """
    from ..distill.api import REPORT_NAME, distill
    from ..distill.config import DistillConfig

    cfg = DistillConfig(overwrite=overwrite, do_sample=not greedy, **kw)
    res = distill(cfg, make_progress(quiet))
    if not res.output:  # a non-zero rank under torchrun
        return
    r = res.report
    click.echo(res.student_description)
    click.echo(f"params: teacher {r['teacher_params']:,} -> student {r['student_params']:,}; "
               f"{r['steps']} steps, {r['tokens_seen']:,} tokens, {r['wall_time_s']:.1f} s")
    click.echo(f"held-out: ppl {r['student_perplexity_start']:.3f} -> {r['student_perplexity']:.3f} "
               f"(teacher {r['teacher_perplexity']:.3f}); KL {r['kl_start']:.4f} -> {r['kl']:.4f}; "
               f"top-1 agreement {r['top1_agreement_start']:.3f} -> {r['top1_agreement']:.3f}")
    click.echo(f"wrote {res.output} ({REPORT_NAME})")
