"""``slimedge verify BUNDLE``: every checksum, then a test load through llama.cpp."""

from __future__ import annotations

from pathlib import Path

import click

from .options import user_errors


@click.command("verify", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--no-load", is_flag=True, help="Check checksums only; do not load the model.")
@user_errors
def cli(bundle: Path, no_load: bool) -> None:
    """Check BUNDLE (a folder or .tar.gz): files against manifest.json, then that llama.cpp loads the model.

    A changed or missing file is named; an archive with entries escaping its folder is refused.
    """
    from ..bundle import verify_bundle

    rep = verify_bundle(bundle, load=not no_load)
    for rel in rep.extra_files:
        click.echo(f"note: {rel} is not listed in the manifest (not checked)", err=True)
    load = f"; llama.cpp loads the model ({rep.n_vocab} tokens vocabulary)" if rep.loaded else ""
    click.echo(f"{bundle}: OK — {len(rep.files_checked)} files match their sha256{load}")
