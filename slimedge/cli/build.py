"""``slimedge build SRC --target NAME|PATH -o BUNDLE_DIR``: a runnable bundle for a target device."""

from __future__ import annotations

from pathlib import Path

import click

from .options import make_progress, overwrite_option, quiet_option, threads_option, user_errors


@click.command("build", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--target", "target", required=True, metavar="NAME|PATH",
              help="Target profile: a shipped name (see `slimedge targets`) or a .toml file.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--type", "qtype", default=None, metavar="TYPE",
              help="Quantization (Q4_K_M, Q8_0, ...) or 'auto': the best of the profile's candidates that fits. "
                   "Default: the profile's.")
@click.option("--imatrix", "imatrix", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Importance matrix (slimedge imatrix / llama-imatrix) for the quantizers.")
@click.option("--archive", is_flag=True, help="Also write BUNDLE_DIR.tar.gz.")
@threads_option
@overwrite_option
@quiet_option
@user_errors
def cli(src: Path, target: str, out: Path, qtype: str | None, imatrix: Path | None, archive: bool,
        threads: int | None, overwrite: bool, quiet: bool) -> None:
    """Build a bundle of SRC (Hugging Face folder or GGUF) for a target device.

    The bundle holds model.gguf, manifest.json (checksums, profile, memory estimate), a `run`
    launcher (llama-cpp-python), an Ollama Modelfile and a README. A model whose memory estimate
    exceeds the target's budget is refused with the numbers.

    \b
    Examples:
      slimedge build ./TinyLlama-1.1B --target cpu -o tinyllama-cpu
      slimedge build ./TinyLlama-1.1B --target arm64-small --type auto -o tinyllama-pi --archive
      slimedge build model-f16.gguf --target ./my-board.toml -o bundle
    """
    import json

    from ..bundle import build_bundle

    path = build_bundle(src, target, out, type=qtype, archive=archive, overwrite=overwrite, threads=threads,
                        progress=make_progress(quiet), imatrix=imatrix)
    m = json.loads((path / "manifest.json").read_text())
    q, est = m["quantization"], m["memory_estimate"]
    click.echo(f"bundle {path}: {q['type']} ({q['chosen_by']}), {q['model_size'] / 2**20:.1f} MiB, "
               f"{q['bpw']:.2f} bpw; estimated RAM {est['required_ram'] / 2**20:.0f} MiB"
               + (f", VRAM {est['total_vram'] / 2**20:.0f} MiB" if est["total_vram"] else "")
               + f" for target {m['target']['name']}")
    if archive:
        click.echo(f"archive {path.parent / (path.name + '.tar.gz')}")
    click.echo(f"run it: python {path / 'run'} \"Hello\"   check it: slimedge verify {path}")
