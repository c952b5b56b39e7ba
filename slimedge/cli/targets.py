"""``slimedge targets [NAME|PATH]``: list the shipped target profiles, or show one (validated)."""

from __future__ import annotations

import click


@click.command("targets")
@click.argument("target", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the profile(s) as JSON.")
def cli(target: str | None, as_json: bool) -> None:
    """List the target profiles, or show one (a shipped name or a .toml path) in full.

    \b
    Examples:
      slimedge targets
      slimedge targets arm64
      slimedge targets ./my-board.toml        # validate your own profile
      slimedge build ./model --target ./my-board.toml -o bundle
    """
    import json

    from ..targets import list_targets, load_target

    if target:
        t = load_target(target)
        if as_json:
            click.echo(json.dumps(t.to_dict(), indent=2))
            return
        click.echo(f"{t.name}: {t.description}  ({t.path})")
        for section, values in t.to_dict().items():
            if isinstance(values, dict):
                click.echo(f"[{section}]")
                for k, v in values.items():
                    click.echo(f"  {k} = {v}")
        return
    ts = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in ts], indent=2))
        return
    rows = [("name", "arch", "accel", "RAM budget", "VRAM", "type", "ctx", "ngl", "description")]
    for t in ts:
        h, r = t.hardware, t.runtime
        rows.append((t.name, h.arch, h.accelerator, f"{h.memory_budget_gb:g} GiB", f"{h.vram_gb:g} GiB",
                     t.quantization.type, str(r.n_ctx), str(r.n_gpu_layers), t.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    click.echo("\nYour own profile: copy one of these (`slimedge targets cpu --json`, or the TOML in "
               "slimedge/data/targets/) and pass its path as --target.")
