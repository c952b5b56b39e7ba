"""``slimedge verify BUNDLE``: every checksum, then a test load through llama.cpp."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--no-load", is_flag=True, help="Check checksums only; do not load the model.")
def cli(bundle: Path, no_load: bool) -> None:
    """Check a bundle's checksums and that llama.cpp loads its model.

    BUNDLE is a bundle or release folder, or a bundle's .tar.gz: every file is checked against
    manifest.json (a changed or missing file is named; an archive with entries escaping its folder is
    refused), then each GGUF is loaded in a fresh llama.cpp process.

    \b
    Examples:
      slimedge verify tinyllama-cpu
      slimedge verify tinyllama-cpu.tar.gz --no-load
    """
    from ..bundle import verify_bundle

    rep = verify_bundle(bundle, load=not no_load)
    for rel in rep.extra_files:
        click.echo(f"note: {rel} is not listed in the manifest (not checked)", err=True)
    load = f"; llama.cpp loads the model ({rep.n_vocab} tokens vocabulary)" if rep.loaded else ""
    click.echo(f"{bundle}: OK — {len(rep.files_checked)} files match their sha256{load}")
