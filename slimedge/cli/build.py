"""``slimedge build SRC --target NAME|PATH -o BUNDLE_DIR``: a runnable bundle for a target device."""

from __future__ import annotations

from pathlib import Path

import click

from .options import make_progress, overwrite_option, quiet_option, threads_option, tune_options


@click.command("build")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--target", "target", required=True, metavar="NAME|PATH",
              help="Target profile: a shipped name (see `slimedge targets`) or a .toml file.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--type", "qtype", default=None, metavar="TYPE",
              help="Quantization (Q4_K_M, Q8_0, ...); 'fit': the best of the profile's candidates that fits; "
                   "'auto' (with --calib): the quality-driven mix that fills the target's budget. Default: the "
                   "profile's.")
@click.option("--imatrix", "imatrix", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Importance matrix (slimedge imatrix / llama-imatrix) for the quantizers.")
@click.option("--calib", type=click.Path(path_type=Path), default=None, metavar="FILE|DIR",
              help="With --type auto: the text the quality-driven mix's per-tensor sensitivities are measured on.")
@click.option("--archive", is_flag=True, help="Also write BUNDLE_DIR.tar.gz.")
@click.option("--types", default=None, metavar="T1,T2,...",
              help="Several types (e.g. Q8_0,Q6_K,Q4_K_M,Q3_K_M): write a release folder for the Hugging Face Hub "
                   "instead of a bundle (one Model-Name-TYPE.gguf each, manifest, model card).")
@click.option("--text", type=click.Path(path_type=Path), default=None,
              help="With --types: measure perplexity and KL divergence vs the unquantized model on this text.")
@click.option("--lmstudio", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="With --types: also lay the files out for LM Studio as DIR/PUBLISHER/NAME-GGUF/FILE.gguf.")
@click.option("--base-model", default=None, metavar="REPO_ID", help="With --types: the card's base_model "
              "(default: the Hub id of a cached Hub model, else the folder's name).")
@click.option("--quantized-by", default=None, metavar="NAME",
              help="With --types: the card's quantized_by and the LM Studio publisher (default: slimedge).")
@click.option("--lora", "loras", multiple=True, type=click.Path(path_type=Path), metavar="ADAPTER",
              help="A LoRA adapter to bundle and apply (repeatable): a PEFT folder trained on SRC (an HF folder) "
                   "or an adapter GGUF (slimedge convert ADAPTER --base BASE).")
@click.option("--lora-scale", "lora_scales", multiple=True, type=float, metavar="S",
              help="Scale of the --lora at the same position (repeatable; default 1.0).")
@click.option("--draft", type=click.Path(path_type=Path), default=None, metavar="DRAFT_DIR|DRAFT.gguf",
              help="A small model with SRC's vocabulary to bundle as a speculative-decoding draft (an HF folder is "
                   "converted at Q8_0): run/serve decode speculatively, output unchanged.")
@click.option("--draft-max", type=int, default=None, metavar="K",
              help="With --draft: most tokens drafted per step (default 8; adapted below it to acceptance).")
@click.option("--mmproj", type=click.Path(path_type=Path), default=None, metavar="MMPROJ.gguf",
              help="A vision projector GGUF (llama.cpp's mmproj) to bundle with the model (a GGUF SRC needs it for "
                   "images; a vision-language HF folder's own projector is converted without it).")
@click.option("--mmproj-type", type=click.Choice(["f16", "bf16", "q8_0", "f32"], case_sensitive=False),
              default="f16", show_default=True, help="Type of the projector converted from a vision-language SRC (bundle or --types release).")
@click.option("--no-mmproj", is_flag=True, help="Leave a vision-language SRC's projector out (a text-only bundle or release).")
@tune_options
@threads_option
@overwrite_option
@quiet_option
def cli(src: Path, target: str, out: Path, qtype: str | None, imatrix: Path | None, calib: Path | None, archive: bool,
        types: str | None, text: Path | None, lmstudio: Path | None, base_model: str | None,
        quantized_by: str | None, loras: tuple[Path, ...], lora_scales: tuple[float, ...], draft: Path | None,
        draft_max: int | None, mmproj: Path | None, mmproj_type: str, no_mmproj: bool, tune, threads: int | None,
        overwrite: bool, quiet: bool) -> None:
    """Build a runnable bundle (or a Hub release folder) of a model for a target device.

    SRC is a Hugging Face folder or a GGUF. The bundle holds model.gguf, manifest.json (checksums, profile, memory estimate), a `run`
    launcher (llama-cpp-python), an Ollama Modelfile and a README. A model whose memory estimate
    exceeds the target's budget is refused with the numbers.

    \b
    Examples:
      slimedge build ./TinyLlama-1.1B --target cpu -o tinyllama-cpu
      slimedge build ./TinyLlama-1.1B --target arm64-small --type fit -o tinyllama-pi --archive
      slimedge build ./TinyLlama-1.1B --target arm64 --type auto --calib wiki.txt -o tinyllama-arm
      slimedge build model-f16.gguf --target ./my-board.toml -o bundle
      slimedge build ./TinyLlama-1.1B --target cpu --types Q8_0,Q6_K,Q4_K_M,Q3_K_M -o release --text wiki.txt
      slimedge build ./TinyLlama-1.1B --target laptop-gpu --type Q4_K_M --tune wiki.txt -o tinyllama-tuned
      slimedge build ./TinyLlama-1.1B --target cpu --lora ./my-lora --lora-scale 0.8 -o tinyllama-my-lora
      slimedge build ./Qwen2.5-1.5B --target cpu --draft ./Qwen2.5-0.5B --draft-max 8 -o qwen-spec
      slimedge build ./gemma-3-4b-it --target cpu -o gemma3-vision          # model.gguf + mmproj.gguf
      slimedge build gemma-3-4b-it-Q4_K_M.gguf --target cpu --mmproj mmproj-gemma-3-4b-it-F16.gguf -o g3v
    """
    import json

    if types is not None:
        if tune is not None:
            raise click.UsageError("--tune applies to a bundle (or `slimedge convert`), not to a --types release")
        if loras:
            raise click.UsageError("--lora applies to a bundle, not to a --types release")
        if draft is not None:
            raise click.UsageError("--draft applies to a bundle, not to a --types release")
        if mmproj is not None:
            raise click.UsageError("--mmproj applies to a bundle, not to a --types release")
        return _release(src, target, out, types, qtype, archive, text, lmstudio, base_model, quantized_by, threads,
                        overwrite, quiet, imatrix, mmproj_type.lower(), no_mmproj)
    if draft_max is not None and draft is None:
        raise click.UsageError("--draft-max sets the draft's tokens per step: give --draft too")
    if len(lora_scales) > len(loras):
        raise click.UsageError(f"{len(lora_scales)} --lora-scale for {len(loras)} --lora: one scale per adapter")
    for flag, value in (("--text", text), ("--lmstudio", lmstudio), ("--base-model", base_model),
                        ("--quantized-by", quantized_by)):
        if value is not None:
            raise click.UsageError(f"{flag} applies to a release folder: give --types too")
    from ..bundle import build_bundle

    path = build_bundle(src, target, out, type=qtype, archive=archive, overwrite=overwrite, threads=threads,
                        progress=make_progress(quiet), imatrix=imatrix, calib=calib, tune=tune,
                        loras=[(p, lora_scales[i] if i < len(lora_scales) else 1.0) for i, p in enumerate(loras)],
                        draft=draft, draft_max=draft_max, mmproj=mmproj, mmproj_type=mmproj_type.lower(),
                        no_mmproj=no_mmproj)
    m = json.loads((path / "manifest.json").read_text())
    q, est = m["quantization"], m["memory_estimate"]
    if q.get("tuned"):
        click.echo(f"tuned: held-out KL vs teacher {q['tuned']['kl_before']:.5f} -> {q['tuned']['kl_after']:.5f}")
    click.echo(f"bundle {path}: {q['type']} ({q['chosen_by']}), {q['model_size'] / 2**20:.1f} MiB, "
               f"{q['bpw']:.2f} bpw; estimated RAM {est['required_ram'] / 2**20:.0f} MiB"
               + (f", VRAM {est['total_vram'] / 2**20:.0f} MiB" if est["total_vram"] else "")
               + f" for target {m['target']['name']}" + (" (model and draft)" if m.get("draft") else "")
               + (" (model and vision projector)" if m.get("mmproj") else ""))
    if archive:
        click.echo(f"archive {path.parent / (path.name + '.tar.gz')}")
    click.echo(f"run it: {next_step(path, m)}   check it: slimedge verify {path}")


def next_step(path: Path, manifest: dict) -> str:
    """The first command to try on a new bundle: an embedding, an image question, or a prompt."""
    run = f"python {path / 'run'}"
    if manifest.get("embedding"):
        return f'{run} --embed "some text"'
    if manifest.get("mmproj"):
        return f'{run} --image photo.jpg "Describe this image."'
    return f'{run} "Hello"'


def _release(src, target, out, types, qtype, archive, text, lmstudio, base_model, quantized_by, threads, overwrite,
             quiet, imatrix, mmproj_type="f16", no_mmproj=False) -> None:
    """--types: a release folder (slimedge.bundle.release) instead of a bundle."""
    import json

    from ..bundle.release import build_release, lmstudio_folder

    if qtype is not None or archive:
        raise click.UsageError("--types writes a release folder: leave --type and --archive out")
    path = build_release(src, target, out, types, text=text, lmstudio=lmstudio, base_model=base_model,
                         quantized_by=quantized_by, overwrite=overwrite, threads=threads, progress=make_progress(quiet),
                         imatrix=imatrix, mmproj_type=mmproj_type, no_mmproj=no_mmproj)
    m = json.loads((path / "manifest.json").read_text())
    for e in m["models"]:
        quality = "" if e.get("perplexity") is None else f", PPL {e['perplexity']:.4f}, KLD {e['kld_mean']:.5f}"
        click.echo(f"{path / e['file']}: {e['size'] / 2**20:.1f} MiB, {e['bpw']:.2f} bpw{quality}")
    if m.get("mmproj"):
        mm = m["mmproj"]
        click.echo(f"{path / mm['file']}: vision projector ({mm['projector_type']}, {mm['type']}), "
                   f"{mm['size'] / 2**20:.1f} MiB, pairs with every file above")
    if lmstudio is not None:
        click.echo(f"LM Studio layout: {lmstudio_folder(lmstudio, m['quantized_by'], m['name'])}")
    click.echo(f"release {path}: model card {path / 'README.md'}   check it: slimedge verify {path}")
