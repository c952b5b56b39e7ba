"""The shared tiny model (tests/conftest.py ``hf_model``) converted once per session (Q4_K_M, F32)."""

from __future__ import annotations

import pytest

from slimedge.convert import convert
from slimedge.quant.mixes import QuantSpec


@pytest.fixture(scope="session")
def ggufs(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-models")
    out = {}
    for t in ("Q4_K_M", "F32"):
        out[t] = root / f"tiny-{t.lower()}.gguf"
        convert(hf_model, out[t], QuantSpec(ftype=t))
    return out
