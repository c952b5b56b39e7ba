"""``slimedge demo``: run teacher → Q4_K_M → distilled student → distilled + Q4_K_M on a built-in model.

The model is a small Llama the project trained on the Python standard library (shipped with the
package); the student is distilled on first run and cached. Prints the comparison table and writes
it as Markdown and JSON (``--out``).
"""

from __future__ import annotations

import click

from .options import make_progress, quiet_option, threads_option


@click.command("demo")
@click.option("-o", "--out", default="slimedge-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for demo_table.md, demo_table.json and demo_table.txt.")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help="Cache folder (default: $SLIMEDGE_CACHE, else ~/.cache/slimedge/demo).")
@click.option("--retrain-teacher", is_flag=True,
              help="Train the teacher from its recipe into the cache instead of using the shipped one.")
@click.option("--teacher", default=None, type=click.Path(file_okay=False),
              help="Use this Hugging Face teacher folder instead of the shipped one (Llama-like, rows of 256).")
@click.option("--fast", is_flag=True, help="A smoke run: few distillation and tuning steps, short bench.")
@click.option("--quant", default="Q4_K_M", show_default=True, help="Quantization of the quantized rows.")
@click.option("--distill-steps", type=click.IntRange(min=1), default=None,
              help="Student training steps (default 150; 6 with --fast).")
@threads_option
@quiet_option
def cli(out, cache, retrain_teacher, teacher, fast, quant, distill_steps, threads, quiet):
    """Run the whole pipeline on a built-in model and print the comparison table.

    \b
    Rows: the teacher as F16, Q4_K_M, Q4_K_M + imatrix, the auto mix at Q4_K_M's size and the
          tuned Q4_K_M; the distilled student as F16, Q4_K_M and tuned Q4_K_M.
    Quality (held-out perplexity, KL and top-1 agreement vs the F16 teacher), speed (generation
    tokens/s through llama.cpp) and size, each also as a ratio to the teacher.

    \b
    Examples:
      slimedge demo                     # first run trains and caches the student: minutes
      slimedge demo --fast -o /tmp/d    # a smoke run: few training steps, short bench
    """
    import logging

    from ..demo.pipeline import DemoConfig, run_demo

    kw = dict(out=out, cache=cache, retrain_teacher=retrain_teacher, teacher=teacher, quant=quant, threads=threads)
    if distill_steps:
        kw["distill_steps"] = distill_steps
    cfg = DemoConfig.fast(**kw) if fast else DemoConfig(**kw)
    if not quiet:
        logging.getLogger("slimedge.demo").setLevel(logging.INFO)
    result = run_demo(cfg, make_progress(quiet))
    click.echo(result.text, nl=False)
    if not quiet:
        click.echo(f"\nwritten: {result.markdown_path}, {result.json_path}  "
                   f"(wall {result.meta['wall_s']:.0f}s; cache {result.meta['cache']})")
