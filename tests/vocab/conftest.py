"""Fixtures for vocabulary tests: locally trained tokenizers and vocab-only GGUF files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tokfactory
from slimedge.vocab import load_vocab
from tests.vocab.vocab_helpers import SAMPLES, load_llama, write_vocab_gguf


@pytest.fixture(scope="session")
def bpe_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bpe")
    return {s: tokfactory.train_bpe(root / s, s) for s in tokfactory.SCHEMES}


@pytest.fixture(scope="session")
def saturated_dirs(tmp_path_factory) -> dict[str, Path]:
    """BPEs trained on the sample strings until every pre-token is one token: ids then show the split."""
    root = tmp_path_factory.mktemp("saturated")
    return {s: tokfactory.train_bpe(root / s, s, vocab_size=20000, corpus=SAMPLES) for s in tokfactory.SCHEMES}


@pytest.fixture(scope="session")
def spm_dir(tmp_path_factory) -> Path:
    return tokfactory.train_spm(tmp_path_factory.mktemp("spm") / "tok")


@pytest.fixture(scope="session")
def spm_json_dir(spm_dir, tmp_path_factory) -> Path:
    """The SentencePiece tokenizer as transformers 5 saves it: tokenizer.json only, no tokenizer.model."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("spmjson") / "tok"
    AutoTokenizer.from_pretrained(spm_dir).save_pretrained(out)
    assert not (out / "tokenizer.model").exists()
    return out


@pytest.fixture
def vocab_gguf(tmp_path):
    """Build and load a vocab-only GGUF: ``vocab_gguf(model_dir, n_vocab) -> (Vocab, Llama)``."""
    def make(model_dir: Path, n_vocab: int, hf_config: dict | None = None):
        vocab = load_vocab(model_dir, hf_config or {}, n_vocab)
        path = write_vocab_gguf(vocab, tmp_path / f"{model_dir.name}-{n_vocab}.gguf")
        return vocab, load_llama(path)
    return make
