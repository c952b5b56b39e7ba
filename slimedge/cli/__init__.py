"""The ``slimedge`` command line: a click group whose commands load lazily.

Each command lives in its own module in this package (``slimedge/cli/<name>.py``) and exposes a
click command named ``cli``. Commands hold no logic a library user would need; they parse options,
call the library, and print.

Examples::

    slimedge convert ./TinyLlama -o tinyllama-q4_k_m.gguf --type Q4_K_M
    slimedge inspect tinyllama-q4_k_m.gguf
    slimedge demo
"""

from __future__ import annotations

import importlib

import click

from .. import __version__

# command name -> (module, one-line help shown in `slimedge -h` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("convert", "Convert a Hugging Face model (or F32/F16/BF16 GGUF) to GGUF, quantized."),
    "inspect": ("inspect", "Show a GGUF file's metadata, tensors, sizes and bits per weight."),
    "distill": ("distill", "Distill a small student model from a teacher (logit, feature, response)."),
    "targets": ("targets", "List the target profiles (shipped ones and how to use your own)."),
    "build": ("build", "Build a runnable bundle for a target device from a model."),
    "verify": ("verify", "Check a bundle's checksums and that its model loads."),
    "bench": ("bench", "Measure a GGUF or bundle through llama.cpp: speed, memory, quality."),
    "demo": ("demo", "Run the whole pipeline on a built-in model and print the comparison table."),
}

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _backend_line() -> str:
    try:
        from ..quant.backend import backend_info

        return f"quant backend: {backend_info()}"
    except Exception as exc:  # the version line must never fail
        return f"quant backend: unavailable ({exc})"


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs or shows help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
        return module.cli

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, helptext) for name, (_, helptext) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"slimedge {__version__}\n{_backend_line()}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the active quantization backend, then exit.")
def main() -> None:
    """slimedge: turn a language model into a file that runs well on a laptop, desktop or ARM board.

    \b
    Pipeline: load → distill → quantize/convert → target/bundle → bench.
    Start with `slimedge demo`, or `slimedge convert MODEL_DIR -o model.gguf --type Q4_K_M`.
    """
