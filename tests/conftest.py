"""Shared fixtures. Tiny models and tokenizers are built locally (no network, no hub)."""

import os
import textwrap

import pytest

# Quantization backends the suite runs against: both by default; SLIMEDGE_PUREPYTHON=1 runs the
# whole suite on the NumPy path only (tests/quant/test_kernels.py still checks the kernels themselves).
_PURE = os.environ.get("SLIMEDGE_PUREPYTHON", "").strip().lower() not in ("", "0", "false", "no")
BACKENDS = ["numpy"] if _PURE else ["c", "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test once per quantization backend ("c", "numpy"); yields the name.

    Switches ``slimedge.quant.backend`` for the test's duration (monkeypatched, so restored after).
    The "c" case fails, not skips, when the extension is missing: CI builds it.
    """
    from slimedge.quant import backend as qb

    if request.param == "c":
        from slimedge import _kernels

        monkeypatch.setattr(qb, "_K", _kernels)
        monkeypatch.setattr(qb, "_WHY_NOT", "")
    else:
        monkeypatch.setattr(qb, "_K", None)
        monkeypatch.setattr(qb, "_WHY_NOT", "selected by the test")
    return request.param


# The tiny Llama that tests/bench and tests/bundle share (rows a multiple of 256, so the k-quant mixes
# apply); built once per session and cached on disk by tests/factory.py.
TINY_LLAMA = dict(arch="llama", kquant=True, max_position_embeddings=4096)


@pytest.fixture(scope="session")
def hf_model():
    """A tiny local Hugging Face Llama folder (random init, locally trained tokenizer)."""
    from tests.factory import cached_hf_model

    return cached_hf_model(**TINY_LLAMA)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """Python standard-library source: thousands of tokens with the tiny tokenizer."""
    p = tmp_path_factory.mktemp("text") / "text.txt"
    p.write_text(open(textwrap.__file__, encoding="utf-8").read(), encoding="utf-8")
    return p


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory):
    """Tests never write into the user's ~/.cache (distill's token files, the demo cache): XDG_CACHE_HOME and
    SLIMEDGE_CACHE point into this session's temporary folder unless a test sets its own."""
    root = tmp_path_factory.mktemp("cache-home")
    old = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "SLIMEDGE_CACHE")}
    os.environ["XDG_CACHE_HOME"] = str(root)
    os.environ["SLIMEDGE_CACHE"] = str(root / "slimedge-demo")
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
