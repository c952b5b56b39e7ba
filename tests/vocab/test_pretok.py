"""Pre-tokenizer identification from tokenizer.json split definitions (no llama.cpp needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimedge.errors import SlimedgeError
from slimedge.vocab import pretok

WHERE = Path("m/tokenizer.json")


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _bytelevel(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _seq(*steps: dict) -> dict:
    return {"type": "Sequence", "pretokenizers": list(steps)}


# llama.cpp's own spelling of the Llama 3 split (src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3)
LLAMA3_CPP = ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
              "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
GPT2_CPP = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"


def test_llamacpp_spelling_is_canonicalized():
    assert pretok.canonical(LLAMA3_CPP) == pretok.canonical(pretok.LLAMA3)
    assert pretok.canonical(GPT2_CPP) == pretok.canonical(pretok.GPT2)
    assert pretok.identify(_seq(_split(LLAMA3_CPP), _bytelevel(False)), True, WHERE) == "llama-bpe"


def test_literal_newlines_equal_escapes():
    literal = pretok.QWEN2.replace(r"\r", "\r").replace(r"\n", "\n")
    assert pretok.identify(_seq(_split(literal), _bytelevel(False)), False, WHERE) == "qwen2"


@pytest.mark.parametrize("pre, ignore_merges, name", [
    (_bytelevel(True), False, "gpt-2"),
    (_seq(_split(pretok.LLAMA3), _bytelevel(False)), True, "llama-bpe"),
    (_seq(_split(pretok.LLAMA3), _bytelevel(False)), False, "dbrx"),
    (_seq(_split(pretok.QWEN2), _bytelevel(False)), False, "qwen2"),
    (_seq({"type": "Digits", "individual_digits": True}, _bytelevel(True)), False, "starcoder"),
    (_seq(_split(pretok.GPT2), _bytelevel(False)), False, "gpt-2"),
])
def test_identify(pre, ignore_merges, name):
    assert pretok.identify(pre, ignore_merges, WHERE) == name


def test_ignore_merges_mismatch_warns(caplog):
    assert pretok.identify(_seq(_split(pretok.QWEN2), _bytelevel(False)), True, WHERE) == "qwen2"
    assert "ignore_merges=True differs" in caplog.text


@pytest.mark.parametrize("pre, message", [
    (_seq(_split(r"\S+"), _bytelevel(False)), r"split regex '\\\\S\+' matches none"),
    (_seq({"type": "Metaspace", "replacement": "▁"}), "'Metaspace' has no llama.cpp equivalent"),
    (_seq({"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": False},
          _bytelevel(False)), "plain-string pattern"),
    (_seq({**_split(pretok.QWEN2), "behavior": "Removed"}, _bytelevel(False)), "behavior='Removed'"),
    (_seq(_split(pretok.QWEN2)), "no ByteLevel step"),
    (None, "no ByteLevel step"),
])
def test_refused(pre, message):
    with pytest.raises(SlimedgeError, match=message):
        pretok.identify(pre, False, WHERE)
