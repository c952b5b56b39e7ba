"""``slimedge sweep SRC --types ... --text FILE -o DIR``: many types, measured, tabulated and drawn."""

from __future__ import annotations

from pathlib import Path

import click

from .options import make_progress, quiet_option, threads_option


@click.command("sweep")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--types", default=None, help="Comma-separated llama.cpp mixes and auto mixes (auto:BITS or auto:MIX "
              "for that mix's size). Default: Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M,Q2_K,auto:4.5,auto:3.5; for an "
              "embedding model F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M.")
@click.option("--text", type=click.Path(path_type=Path), default=None,
              help="Held-out text: perplexity and KL (required, except for an embedding model).")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Calibration text for the auto mixes' sensitivities (default: --text, with a warning).")
@click.option("--imatrix", type=click.Path(path_type=Path), default=None, help="Importance matrix for every type.")
@click.option("--target", default=None, help="Target profile whose runtime settings the measurements use.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("-c", "--ctx", "n_ctx", type=click.IntRange(min=16), default=512, show_default=True)
@click.option("-r", "--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("-p", "--n-prompt", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("-n", "--n-gen", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--draft", type=click.Path(path_type=Path), default=None,
              help="A draft model GGUF (the same vocabulary, e.g. from slimedge draft): adds each type's generation "
                   "speed with speculative decoding, the speed-up, acceptance and whether the tokens were the same.")
@click.option("--draft-max", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --draft: most tokens drafted per target step.")
@threads_option
@quiet_option
def cli(src: Path, types: str | None, text: Path | None, calib: Path | None, imatrix: Path | None,
        target: str | None, out: Path, n_ctx: int, repeats: int, n_prompt: int, n_gen: int, draft: Path | None,
        draft_max: int, threads: int | None, quiet: bool) -> None:
    """Convert to many types, measure each through llama.cpp, draw KL and speed vs size.

    SRC (a Hugging Face folder) is converted to each of --types (files already in -o are reused), each
    is measured through llama.cpp against the unquantized model, and the table is printed and written
    as sweep.json/.csv/.md with the picture sweep.png/.svg. An embedding model needs no --text: each type
    is measured by the mean cosine of its vectors to the F32 model's and the agreement of nearest neighbours
    over held-out sentences (and embedding tokens/s).

    \b
    Example:
      slimedge sweep ./model --text heldout.txt --calib train.txt --imatrix imatrix.gguf -o sweep/
      slimedge sweep ./bge-small-en --types Q8_0,Q6_K,Q4_K_M -o sweep-bge/      # an embedding model
      slimedge sweep ./model --types Q8_0,Q4_K_M --text heldout.txt --draft draft/draft-q8_0.gguf -o sweep/
    """
    from ..bench.sweep import parse_types, run_sweep, table

    entries = parse_types(types) if types else None  # refuse a typo before converting anything
    records = run_sweep(src, entries, text, out, calib=calib, imatrix=imatrix, target=target, n_ctx=n_ctx,
                        repeats=repeats, n_prompt=n_prompt, n_gen=n_gen, threads=threads, draft=draft,
                        draft_max=draft_max, progress=make_progress(quiet))
    click.echo(table(records), nl=False)
    click.echo(f"wrote {out}/sweep.json, sweep.csv, sweep.md, sweep.png, sweep.svg", err=True)
