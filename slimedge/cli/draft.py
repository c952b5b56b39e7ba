"""``slimedge draft TARGET --data FILE|DIR -o DRAFT_DIR``: a speculative-decoding draft, distilled and measured.

Parses options into :class:`slimedge.distill.draft.DraftConfig` and calls :func:`slimedge.distill.draft.make_draft`
(torch is imported only when the command runs); prints the acceptance and speed measured through llama.cpp.
"""

from __future__ import annotations

import click

from .options import make_progress, overwrite_option, quiet_option, threads_option


@click.command("draft")
@click.argument("target", metavar="TARGET")
@click.option("--data", required=True, metavar="FILE|DIR",
              help="Text, JSONL, Parquet/Arrow, a datasets folder or a folder of them: training prompts and the "
                   "held-out prompts acceptance is measured on.")
@click.option("--data-field", default="text", show_default=True, help="Text field of JSONL/Parquet/Arrow rows.")
@click.option("-o", "--output", required=True, metavar="DRAFT_DIR", help="Output folder.")
@click.option("--draft-model", default=None, metavar="HF_DIR",
              help="An existing small model with the target's tokenizer: converted and measured, not distilled.")
@click.option("--recipe", type=click.Choice(["acceptance", "fkl"]), default="acceptance", show_default=True,
              help="acceptance: learn the target's distribution on its own greedy continuations; fkl: plain "
                   "forward KL on the data (for comparison).")
@click.option("--loss", type=click.Choice(["fkl", "rkl", "jsd", "skl", "srkl"]), default="fkl", show_default=True,
              help="Logit loss of the acceptance recipe.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Weight of cross-entropy on the target's greedy tokens.")
@click.option("--on-policy", type=click.FloatRange(0, 1), default=0.0, show_default=True, metavar="LAMBDA",
              help="Share of steps on the draft's own continuations, scored by the target (GKD).")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="Draft layers (default: a quarter of the target's).")
@click.option("--hidden", type=click.IntRange(min=1), default=None, help="Draft hidden size (default: the target's).")
@click.option("--intermediate", type=click.IntRange(min=1), default=None, help="Draft MLP size.")
@click.option("--heads", type=click.IntRange(min=1), default=None, help="Draft attention heads.")
@click.option("--kv-heads", type=click.IntRange(min=1), default=None, help="Draft key/value heads.")
@click.option("--init", type=click.Choice(["auto", "teacher", "random"]), default="auto", show_default=True,
              help="Start from the target's weights where shapes allow, or randomly.")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Sequences per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate (AdamW).")
@click.option("--prompt-len", type=click.IntRange(min=1), default=32, show_default=True,
              help="Prompt tokens (training and held-out).")
@click.option("--gen-len", type=click.IntRange(min=1), default=64, show_default=True,
              help="Target tokens generated per training prompt.")
@click.option("--type", "types", multiple=True, default=("Q8_0", "Q4_K_M"), show_default=True,
              help="Draft GGUF types to write and measure (repeat the option); AUTO: the quality-driven mix at "
                   "Q4_K_M's size, measured on --data.")
@click.option("--target-gguf", default=None, metavar="FILE",
              help="The target GGUF to measure against (default: TARGET converted at --target-type).")
@click.option("--target-type", default="Q8_0", show_default=True, help="Type the target is converted at.")
@click.option("--eval-prompts", type=click.IntRange(min=1), default=8, show_default=True,
              help="Held-out prompts measured.")
@click.option("--n-gen", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens generated per held-out prompt.")
@click.option("--draft-max", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most tokens drafted per target step.")
@click.option("--device", default="auto", show_default=True, help="Training device: auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (init, data order).")
@threads_option
@overwrite_option
@quiet_option
def cli(target: str, output: str, types: tuple[str, ...], quiet: bool, **kw) -> None:
    """Distil a speculative-decoding draft model from TARGET and measure its acceptance.

    The draft (the target's architecture and tokenizer, fewer layers or narrower) learns the target's
    next-token distribution on the target's own greedy continuations of prompts from --data, is written
    to DRAFT_DIR as a Hugging Face folder and as one GGUF per --type, and is measured through llama.cpp:
    the target decodes held-out prompts greedily alone and with each draft (same tokens), reporting
    acceptance and tok/s.
    --draft-model takes an existing small sibling instead (its vocabulary must be the target's).

    \b
    Examples:
      slimedge draft ./teacher --data corpus.txt -o ./draft --layers 1 --steps 300
      slimedge draft ./Qwen2.5-1.5B --data docs/ -o ./draft --draft-model ./Qwen2.5-0.5B
      slimedge build ./teacher --target cpu --draft ./draft/draft-q8_0.gguf -o bundle
    """
    from ..distill.draft import REPORT_NAME, DraftConfig, make_draft

    cfg = DraftConfig(target=target, output=output, types=tuple(t.upper() for t in types), **kw)
    res = make_draft(cfg, make_progress(quiet))
    r = res.report
    if "distill" in r:
        d = r["distill"]
        click.echo(d["student"])
        click.echo(f"params: target {d['teacher_params']:,} -> draft {d['student_params']:,}; {d['steps']} steps; "
                   f"held-out top-1 agreement {d['top1_agreement_start']:.3f} -> {d['top1_agreement']:.3f}")
    for name, m in r["measured"].items():
        click.echo(f"{name}: acceptance {m['acceptance']:.1%} ({m['accepted_per_step']:.2f} per target step), "
                   f"{m['draft_ts']:.1f} tok/s with the draft vs {m['nodraft_ts']:.1f} alone "
                   f"({m['speedup']:.2f}x), {m['size'] / 1e6:.1f} MB, "
                   f"{'same output' if m['same_output'] else 'OUTPUT DIFFERS'}")
    click.echo(f"fastest: {r['best']} ({r['heldout_prompts']} held-out prompts x {r['n_gen']} tokens)")
    click.echo(f"wrote {res.output} ({REPORT_NAME}); use: slimedge build {target} --draft "
               f"{res.output}/{r['measured'][r['best']]['gguf']}")
