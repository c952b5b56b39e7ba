"""Helpers of the distillation tests (and tests/benchmarks/bench_distill.py): a fixed corpus text and a
short plain next-token training run that turns a random-init model into a teacher with some signal.

A module of its own, not conftest.py: several test folders have a conftest, so `from conftest import ...`
would find whichever was imported first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests import tokfactory

SEQ = 64  # training block length of train_teacher


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
