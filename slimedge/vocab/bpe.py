"""Byte-level BPE ``tokenizer.json`` → token list, merges and pre-tokenizer name (tokenizer model "gpt2").

Vocabulary tokens are stored exactly as in ``model.vocab`` (GPT-2's byte-to-unicode spelling, e.g.
``Ġthe``); llama.cpp decodes them back to bytes. Merges become ``"left right"`` strings (both the old
string list and the newer list-of-pairs format are read). The pre-tokenizer name comes from
:mod:`slimedge.vocab.pretok`. Added tokens are handled by the caller (they carry raw text).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from slimedge.errors import SlimedgeError
from slimedge.vocab import pretok

log = logging.getLogger(__name__)


@dataclass
class BpeModel:
    vocab: dict[str, int]  # byte-level token text → id (base vocabulary, without added tokens)
    merges: list[str]  # "left right", in priority order
    pre: str  # tokenizer.ggml.pre


def is_byte_level(tokenizer_json: dict) -> bool:
    """True when tokenizer.json is a BPE whose pre-tokenizer or decoder is ByteLevel."""
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        return False

    def has_bytelevel(node: dict | None, key: str) -> bool:
        if not node:
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has_bytelevel(child, key) for child in node.get(key, []) or [])

    return (has_bytelevel(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
            or has_bytelevel(tokenizer_json.get("decoder"), "decoders"))


def read_bpe(tokenizer_json: dict, path: Path) -> BpeModel:
    """Read the BPE model and pre-tokenizer of a parsed tokenizer.json at ``path``."""
    model = tokenizer_json.get("model") or {}
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise SlimedgeError(f"{path}: BPE option {key}={model[key]!r} has no llama.cpp equivalent")
    norm = tokenizer_json.get("normalizer")
    if norm and norm.get("type") != "NFC":
        log.warning("%s: normalizer %r is not applied by llama.cpp; text it would change may tokenize "
                    "differently", path, norm.get("type"))

    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise SlimedgeError(f"{path}: model.vocab is missing or empty")
    merges_in = model.get("merges") or []
    merges: list[str] = []
    for m in merges_in:
        if isinstance(m, str):
            left, sep, right = m.partition(" ")
        elif isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(s, str) for s in m):
            left, sep, right = m[0], " ", m[1]
        else:
            raise SlimedgeError(f"{path}: merge entry {m!r} is neither 'a b' nor ['a', 'b']")
        if not sep or not left or not right or " " in left or " " in right:
            raise SlimedgeError(f"{path}: merge entry {m!r} cannot be written for llama.cpp "
                                "(parts must be non-empty and free of spaces)")
        merges.append(f"{left} {right}")
    if not merges:
        log.warning("%s: BPE model has no merges; every token will be a single byte", path)

    pre = pretok.identify(tokenizer_json.get("pre_tokenizer"), bool(model.get("ignore_merges", False)), path)
    return BpeModel(dict(vocab), merges, pre)
