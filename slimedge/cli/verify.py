"""``slimedge verify BUNDLE``: every checksum, then a test load through llama.cpp (or a loose model/mmproj pair)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--no-load", is_flag=True, help="Check checksums only; do not load the model.")
@click.option("--mmproj", type=click.Path(path_type=Path), default=None, metavar="MMPROJ.gguf",
              help="With a model GGUF instead of a bundle: check that this vision projector belongs to it.")
def cli(bundle: Path, no_load: bool, mmproj: Path | None) -> None:
    """Check a bundle's checksums and that llama.cpp loads its model.

    BUNDLE is a bundle or release folder, or a bundle's .tar.gz: every file is checked against
    manifest.json (a changed or missing file is named; an archive with entries escaping its folder is
    refused), then each GGUF is loaded in a fresh llama.cpp process.

    \b
    Examples:
      slimedge verify tinyllama-cpu
      slimedge verify tinyllama-cpu.tar.gz --no-load
      slimedge verify gemma3-q4km.gguf --mmproj mmproj-gemma3-F16.gguf     # a loose model/projector pair
    """
    if mmproj is not None:
        return _pair(bundle, mmproj)
    from ..bundle import verify_bundle

    rep = verify_bundle(bundle, load=not no_load)
    for rel in rep.extra_files:
        click.echo(f"note: {rel} is not listed in the manifest (not checked)", err=True)
    load = f"; llama.cpp loads the model ({rep.n_vocab} tokens vocabulary)" if rep.loaded else ""
    click.echo(f"{bundle}: OK — {len(rep.files_checked)} files match their sha256{load}")


def _pair(model: Path, mmproj: Path) -> None:
    """A model GGUF and an mmproj: one line saying they pair, or the error naming why not."""
    from ..bundle.projector import pairing_problem, projector_facts
    from ..errors import SlimedgeError
    from ..source import is_gguf

    for f in (model, mmproj):
        if not f.is_file() or not is_gguf(f):
            raise SlimedgeError(f"{f}: not a GGUF file; give the model GGUF and its mmproj GGUF")
    problem = pairing_problem(model, mmproj)
    if problem:
        raise SlimedgeError(problem)
    facts = projector_facts(mmproj)
    click.echo(f"{mmproj}: OK — the {facts['projector_type']} projector of {model.name} ({facts['n_embd']} wide "
               "embeddings)")
