"""Fixtures for the distillation tests: a tiny llama teacher trained for a few seconds, and its data.

The teacher is tests/factory.py's random-init llama (SentencePiece tokenizer trained locally), widened
to 4 layers and then trained briefly on tokfactory's fixed corpus so its predictions carry signal
a student can learn. Built once per session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tokfactory
from factory import cached_hf_model

SEQ = 64


def corpus_text(n_chars: int = 60_000) -> str:
    text, size = [], 0
    for line in tokfactory.corpus_lines():
        text.append(line)
        size += len(line) + 1
        if size >= n_chars:
            break
    return "\n".join(text) + "\n"


def train_teacher(src: Path, dst: Path, text: str, steps: int = 60, seed: int = 0) -> Path:
    """Copy the model folder ``src`` to ``dst`` after ``steps`` of plain next-token training on ``text``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster than 2 threads on shared cores
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ids = torch.tensor(tok(text, verbose=False)["input_ids"])
    n = len(ids) // SEQ
    blocks = ids[: n * SEQ].reshape(n, SEQ)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        rows = torch.randint(0, n, (16,))
        loss = model(input_ids=blocks[rows], labels=blocks[rows]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    torch.set_num_threads(threads)
    shutil.copytree(src, dst)
    model.save_pretrained(dst)
    return dst


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
