"""Importance-weighted (imatrix) k-quant paths (ggml's quantize_row_q*_K_impl). Not implemented yet."""

from __future__ import annotations


def supported(qtype) -> bool:
    return False
