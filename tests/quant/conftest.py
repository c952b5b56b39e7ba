"""Fixtures of the quantization tests."""

import pytest


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """name -> path of each synthetic F32 GGUF in ``tests.quant.mix_models.MODELS`` (llama.cpp's logs off)."""
    from tests.convert.convert_util import silence_llama
    from tests.quant.mix_models import MODELS, write_f32_gguf

    silence_llama()
    root = tmp_path_factory.mktemp("mixes")
    out = {}
    for c in MODELS:
        out[c.name] = root / f"{c.name}-f32.gguf"
        write_f32_gguf(out[c.name], c)
    return out
