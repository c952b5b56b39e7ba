"""``convert --tune`` / ``build --tune``: a quantized file tuned against its teacher (:mod:`slimedge.tune`)
before it is written.

:func:`convert_and_tune` converts into a hidden temporary sibling of the output (:class:`slimedge.publish.Publication`:
a later run removes it if this one dies), tunes that into the output and removes it; :func:`tune_quantized` tunes
an already quantized GGUF (a bundle packing one as it is). The teacher is ``--tune-teacher``, else the Hugging
Face folder being converted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from .api import TuneConfig, TuneResult, tune


@dataclass
class TuneOptions:
    """``--tune DATA`` of ``convert``/``build``: tune the quantized file right after converting it."""

    data: str                       # calibration data
    teacher: str | None = None      # the teacher's HF folder (None: the model being converted is its own teacher)
    steps: int = 300


def tune_teacher(src, opts: TuneOptions) -> str:
    """The teacher ``--tune`` tunes against: ``--tune-teacher``, else the HF folder being converted."""
    from ..source import is_gguf

    if opts.teacher is not None:
        return str(opts.teacher)
    if is_gguf(src):
        raise SlimedgeError(f"--tune: {src} is a GGUF, so it cannot be its own teacher; give --tune-teacher HF_DIR "
                            "(the float model it was made from)")
    return str(src)


def tune_quantized(src, quantized, out, opts: TuneOptions, *, threads: int | None = None, overwrite: bool = False,
                   progress: Progress = NULL_PROGRESS) -> TuneResult:
    """Tune the already quantized GGUF ``quantized`` (made from ``src``) into ``out`` with ``opts``."""
    return tune(TuneConfig(gguf=str(quantized), teacher=tune_teacher(src, opts), data=str(opts.data),
                           output=str(out), steps=opts.steps, threads=threads, overwrite=overwrite), progress)


def convert_and_tune(src, out, spec, opts: TuneOptions, *, threads: int | None = None, overwrite: bool = False,
                     progress: Progress = NULL_PROGRESS, imatrix=None):
    """``slimedge convert --tune``: convert ``src`` with ``spec`` into a hidden temporary sibling of ``out``, tune
    that against ``opts.teacher`` (default ``src``) into ``out`` and remove it. Returns (ConvertResult, TuneResult)."""
    from pathlib import Path

    from ..convert import convert
    from ..publish import Publication
    from ..source.hub import resolve_source
    from ..writer import check_output_path

    src, out = resolve_source(src), Path(out)
    check_output_path(out, overwrite)
    tune_teacher(src, opts)  # a GGUF source without --tune-teacher: refused before converting
    scratch = Publication(out.with_name(out.name + ".untuned"))  # a later run removes it if this one dies
    try:
        conv = convert(src, scratch.path, spec, threads=threads, overwrite=True, progress=progress, imatrix=imatrix)
        tuned = tune_quantized(src, scratch.path, out, opts, threads=threads, overwrite=overwrite, progress=progress)
    finally:
        scratch.abort()
    import dataclasses

    return dataclasses.replace(conv, out=out), tuned
