"""``slimedge report BUNDLE``: memory estimate beside each device's measured memory and speed; card re-rendered."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--no-card", is_flag=True, help="Only print; leave README.md and manifest.json as they are.")
def cli(bundle: Path, as_json: bool, no_card: bool) -> None:
    """Show a bundle's memory estimate beside each device's measured memory and speed.

    Measurements come from bench/*.json (written on a device by `python BUNDLE/run --bench --json`)
    and from `slimedge bench BUNDLE` records. Unless --no-card, README.md is re-rendered with them
    (and the manifest's checksums refreshed; bench/ itself is never checksummed).

    \b
    Examples:
      python tinyllama-cpu/run --bench --json      # on the device: writes tinyllama-cpu/bench/HOST-DATE.json
      slimedge report tinyllama-cpu
    """
    import json

    from ..bundle.manifest import read_manifest
    from ..bundle.card import device_table
    from ..bundle.report import rows, update_card

    if not bundle.is_dir():
        raise click.ClickException(f"{bundle}: not a bundle folder")
    m = read_manifest(bundle)
    rs = rows(bundle, m) if no_card else update_card(bundle)
    if as_json:
        click.echo(json.dumps(rs, indent=2))
        return
    est = m["memory_estimate"]
    click.echo(f"{m['name']} {m['quantization']['type']} for {m['target']['name']}: estimated RAM "
               f"{est['total_ram'] / 2**20:,.0f} MiB" + (f", VRAM {est['total_vram'] / 2**20:,.0f} MiB"
                                                        if est.get("total_vram") else ""))
    if not rs:
        click.echo(f"no measurements yet: run `python {bundle / 'run'} --bench --json` on the device")
        return
    click.echo(device_table(rs))
    if not no_card:
        click.echo(f"card updated: {bundle / 'README.md'}")
