"""``slimedge imatrix SRC --data TEXT -o imatrix.gguf``: llama-imatrix's importance matrix, computed in torch.

Parses options, reads the calibration text (a file, a folder of text files, or JSONL with a "text"
field: :func:`slimedge.distill.data.load_texts`, documents joined by blank lines), calls
:func:`slimedge.calib.imatrix.compute_imatrix` and writes the file
(:mod:`slimedge.quant.imatrix_file`: GGUF, or llama.cpp's legacy .dat with ``--output-format dat`` or a
``.dat`` name).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .options import make_progress, overwrite_option, quiet_option, threads_option


@click.command("imatrix")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), metavar="FILE|DIR",
              help="Calibration text: a text file, a folder of .txt/.md files, or JSONL with a \"text\" field.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output imatrix file.")
@click.option("--ctx", type=click.IntRange(min=16), default=512, show_default=True,
              help="Tokens per chunk (llama-imatrix's -c).")
@click.option("--chunks", type=click.IntRange(min=1), default=None, help="At most this many chunks (default: all).")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda", help="Torch device.")
@click.option("--output-format", "fmt", type=click.Choice(["gguf", "dat"]), default=None,
              help="File format (default: dat for a .dat name, else gguf).")
@click.option("--process-output", is_flag=True, help="Also measure output.weight (llama-imatrix's --process-output).")
@threads_option
@overwrite_option
@quiet_option
def cli(src: Path, data: Path, out: Path, ctx: int, chunks: int | None, device: str, fmt: str | None,
        process_output: bool, threads: int | None, overwrite: bool, quiet: bool) -> None:
    """Compute an importance matrix (llama-imatrix's) on calibration text, for --imatrix.

    SRC is a Hugging Face model folder. Collects what llama.cpp's llama-imatrix collects (per-column sums of squared inputs of every weight
    matrix, with their counts) and writes its file format, for `slimedge convert --imatrix` and
    `llama-quantize --imatrix`.

    \b
    Examples:
      slimedge imatrix ./TinyLlama-1.1B --data calib.txt -o imatrix.gguf
      slimedge imatrix ./TinyLlama-1.1B --data docs/ -o imatrix.gguf --ctx 512 --chunks 100
      slimedge convert ./TinyLlama-1.1B -o q4km.gguf --type Q4_K_M --imatrix imatrix.gguf
    """
    from ..calib.imatrix import compute_imatrix
    from ..distill.data import load_texts
    from ..quant.imatrix_file import write_imatrix, write_imatrix_legacy
    from ..writer import check_output_path

    check_output_path(out, overwrite)  # before any work
    text = "\n\n".join(load_texts(str(data)))
    t0 = time.monotonic()
    imx = compute_imatrix(src, text, ctx=ctx, chunks=chunks, device=device, threads=threads, dataset=str(data),
                          process_output=process_output, progress=make_progress(quiet))
    seconds = time.monotonic() - t0
    legacy = fmt == "dat" or (fmt is None and out.suffix.lower() == ".dat")
    (write_imatrix_legacy if legacy else write_imatrix)(out, imx, overwrite=overwrite)
    if not quiet:
        n_tok = imx.chunk_count * imx.chunk_size
        click.echo(f"wrote {out}: {len(imx.entries)} tensors, {imx.chunk_count} chunks of {imx.chunk_size} tokens, "
                   f"{seconds:.1f} s ({n_tok / max(seconds, 1e-9):.0f} tokens/s)", err=True)
