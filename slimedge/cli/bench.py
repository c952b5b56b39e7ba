"""``slimedge bench MODEL.gguf|BUNDLE [--ref REF] [--text FILE] [--json|--csv|--md]``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import make_progress, quiet_option, threads_option


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--ref", type=click.Path(path_type=Path), default=None,
              help="Unquantized reference (GGUF, HF folder or a Hub id in the local HF cache): adds KL "
                   "divergence, top-1 agreement, ΔPPL; for an embedding model, the cosine to its embeddings and "
                   "nearest-neighbour agreement (no --text needed).")
@click.option("--text", type=click.Path(path_type=Path), default=None,
              help="UTF-8 text for perplexity (at least one context of tokens).")
@click.option("-c", "--ctx", "n_ctx", type=click.IntRange(min=16), default=512, show_default=True,
              help="Context for perplexity/KL (llama-perplexity -c).")
@click.option("--chunks", type=click.IntRange(min=1), default=None, help="Score at most this many chunks.")
@click.option("-r", "--repeats", type=click.IntRange(min=1), default=None, help="Speed runs (default: 3 or the bundle's).")
@click.option("-p", "--n-prompt", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("-n", "--n-gen", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("-b", "--batch", "n_batch", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("-ngl", "--n-gpu-layers", "ngl", type=int, default=None, help="Layers on the GPU (default: 0 or the bundle's).")
@click.option("-fa", "--flash-attn", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Flash attention (default: the bundle's profile, else auto as in llama.cpp's tools).")
@click.option("--no-speed", is_flag=True, help="Skip the speed tests (quality only).")
@click.option("--json", "fmt", flag_value="json", help="Print JSON.")
@click.option("--csv", "fmt", flag_value="csv", help="Print CSV.")
@click.option("--md", "fmt", flag_value="md", help="Print a Markdown table (default).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write the report here too.")
@click.option("--no-record", is_flag=True, help="For a bundle: do not add the results to its manifest/README.")
@threads_option
@quiet_option
def cli(model: Path, ref: Path | None, text: Path | None, n_ctx: int, chunks: int | None, repeats: int | None,
        n_prompt: int, n_gen: int, n_batch: int, ngl: int | None, flash_attn: str | None, no_speed: bool, fmt: str | None,
        output: Path | None, no_record: bool, threads: int | None, quiet: bool) -> None:
    """Measure a GGUF or bundle through llama.cpp: speed, memory, quality.

    MODEL is a GGUF or a bundle folder; each run is a fresh process. Speed: load time, prompt processing (512 tokens) and generation (128 tokens) tokens/s, mean ±
    stddev over repeats; peak RSS; size and bits per weight. With --text: perplexity (llama.cpp's
    method). With --ref: mean KL divergence, top-1 agreement and ΔPPL against the reference. An embedding
    model is measured as one: tokens/s embedding held-out sentences, and with --ref the mean/min cosine to
    the reference's vectors and how often both pick the same nearest neighbour.

    \b
    Examples:
      slimedge bench tinyllama-q4km.gguf
      slimedge bench tinyllama-cpu/ --text wiki.test.raw --ref ./TinyLlama-1.1B --json
    """
    from ..bench.report import render
    from ..bench.runner import resolve_model, run_bench

    _, manifest = resolve_model(model)
    rt, bs = manifest.get("runtime", {}), manifest.get("target", {}).get("bench", {})
    rec = run_bench(model, ref=ref, text=text, n_ctx=n_ctx, n_threads=threads,
                    repeats=repeats or bs.get("repeats", 3), n_prompt=n_prompt, n_gen=n_gen, n_batch=n_batch,
                    n_gpu_layers=rt.get("n_gpu_layers", 0) if ngl is None else ngl,
                    flash_attn=rt.get("flash_attn") if flash_attn is None else flash_attn, cache_type_k=rt.get("cache_type_k", "f16"),
                    cache_type_v=rt.get("cache_type_v", "f16"), max_chunks=chunks, speed=not no_speed,
                    progress=make_progress(quiet))
    report = render([rec], fmt or "md")
    click.echo(report, nl=False)
    if output:
        output.write_text(report, encoding="utf-8")
    if manifest and not no_record:
        from ..bundle import record_bench

        record_bench(model, rec)
        click.echo(f"recorded in {model / 'manifest.json'} and README.md", err=True)
