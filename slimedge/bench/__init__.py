"""Benchmarks through llama.cpp (llama-cpp-python), each measurement in a fresh child process.

:func:`run_bench` measures a GGUF or bundle: load time, prompt processing and generation tokens/s
(mean ± stddev), peak RSS, size and bits per weight; with a text, perplexity; with a reference
model, KL divergence, top-1 agreement and ΔPPL. :mod:`slimedge.bench.report` writes records as
JSON, CSV or Markdown.
"""

from __future__ import annotations

__all__ = ["run_bench", "FIELDS"]


def __getattr__(name: str):
    if name in ("run_bench", "FIELDS"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
