"""Training data: read text, tokenize with the teacher's tokenizer, pack into blocks, hold some out.

Accepted inputs: one text file, a folder of text files (``*.txt``, ``*.md``, ``*.text``, ``*.jsonl``,
read recursively in sorted order), or a JSONL file whose lines are objects with a ``"text"`` field.
Each document is tokenized on its own (with the tokenizer's usual special tokens), followed by the
EOS token; all documents are concatenated and cut into ``seq_len`` blocks (the remainder is dropped).
The last ``eval_fraction`` of the blocks (at least one) are held out for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from ..errors import SlimedgeError

TEXT_SUFFIXES = (".txt", ".md", ".text", ".jsonl")


@dataclass
class Blocks:
    train: np.ndarray          # [n_train, seq_len] int64 token ids
    eval: np.ndarray           # [n_eval, seq_len] int64 token ids
    n_tokens: int              # tokens produced by the tokenizer (before dropping the remainder)
    n_documents: int

    def fingerprint(self) -> str:
        """sha256 of the blocks: identifies the data a teacher cache was built from."""
        h = hashlib.sha256()
        for a in (self.train, self.eval):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()


def _read_jsonl(path: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise SlimedgeError(f"{path}:{n} is not valid JSON; each line must be an object "
                                    'like {"text": "..."}') from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise SlimedgeError(f'{path}:{n} has no string "text" field; each line must be an object '
                                    'like {"text": "..."}')
            texts.append(obj["text"])
    return texts


def _read_file(path: str) -> list[str]:
    try:
        if path.endswith(".jsonl"):
            return _read_jsonl(path)
        with open(path, encoding="utf-8") as f:
            return [f.read()]
    except UnicodeDecodeError:
        raise SlimedgeError(f"{path} is not UTF-8 text; pass text, a folder of .txt files or JSONL") from None
    except OSError as exc:
        raise SlimedgeError(f"cannot read data file {path}: {exc.strerror or exc}") from None


def load_texts(path: str) -> list[str]:
    """Documents of a text file, JSONL file, or folder (recursively, sorted)."""
    if not os.path.exists(path):
        raise SlimedgeError(f"data not found: {path}; pass a text file, a folder of text files or JSONL")
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in sorted(names)
                      if not n.startswith(".") and n.lower().endswith(TEXT_SUFFIXES)]
        if not files:
            raise SlimedgeError(f"no text files ({', '.join(TEXT_SUFFIXES)}) in data folder {path}")
        texts = [t for f in sorted(files) for t in _read_file(f)]
    else:
        texts = _read_file(path)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise SlimedgeError(f"data {path} contains no text; give it some documents")
    return texts


def tokenize(texts: list[str], tokenizer) -> tuple[np.ndarray, int]:
    """All documents' token ids, each followed by EOS: (ids [n] int64, number of documents)."""
    eos = tokenizer.eos_token_id
    parts = []
    for i in range(0, len(texts), 256):
        enc = tokenizer(texts[i:i + 256], add_special_tokens=True, verbose=False)["input_ids"]
        for ids in enc:
            if eos is not None and (not ids or ids[-1] != eos):
                ids = list(ids) + [eos]
            parts.append(np.asarray(ids, dtype=np.int64))
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), len(texts)


def pack(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut ``ids`` into full blocks ``[n, seq_len]`` (the remainder is dropped)."""
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def split(blocks: np.ndarray, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out): the last ``ceil(eval_fraction·n)`` blocks (at least one) are held out."""
    n_eval = max(1, int(np.ceil(len(blocks) * eval_fraction)))
    return blocks[:-n_eval], blocks[-n_eval:]


def prepare(path: str, tokenizer, seq_len: int, eval_fraction: float = 0.1) -> Blocks:
    """Read, tokenize, pack and split ``path``; :class:`SlimedgeError` when there is too little."""
    texts = load_texts(path)
    ids, n_docs = tokenize(texts, tokenizer)
    blocks = pack(ids, seq_len)
    if len(blocks) < 2:
        raise SlimedgeError(
            f"data {path} is too short: {len(ids)} tokens make {len(blocks)} block(s) of --seq-len {seq_len}; "
            f"need at least {2 * seq_len} tokens (one training and one held-out block): add text or lower --seq-len")
    train, held = split(blocks, eval_fraction)
    return Blocks(train=train, eval=held, n_tokens=int(len(ids)), n_documents=n_docs)
