"""Fixtures for the distillation tests: a tiny llama teacher trained for a few seconds, and its data.

The teacher is tests/factory.py's random-init llama (SentencePiece tokenizer trained locally), widened
to 4 layers and then trained briefly on tokfactory's fixed corpus so its predictions carry signal
a student can learn. Built once per session, as is its tokenizer (``tok``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.distill.distill_kit import corpus_text, train_teacher
from tests.factory import cached_hf_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models run fastest on one thread when the cores are shared; restore afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "corpus.txt"
    p.write_text(corpus_text(), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, corpus_file) -> Path:
    src = cached_hf_model(arch="llama", num_hidden_layers=4, seed=1)
    return train_teacher(src, tmp_path_factory.mktemp("teacher") / "t", corpus_file.read_text())


@pytest.fixture(scope="session")
def tok():
    """The tokenizer of the test teacher (tests/factory.py's llama, SentencePiece)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cached_hf_model(arch="llama", num_hidden_layers=4, seed=1))
