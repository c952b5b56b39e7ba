"""Helpers for vocabulary tests: sample strings, vocab-only GGUF writing, llama.cpp loading."""

from __future__ import annotations

import re
from pathlib import Path

import gguf

from slimedge.vocab import Vocab

# Sample strings: ASCII, Unicode (accents, Cyrillic, CJK, emoji incl. ZWJ and skin tones), digit runs,
# runs of spaces and tabs, leading/trailing spaces, newlines, code, contractions, llama.cpp's own
# pre-tokenizer check string.
SAMPLES = [
    "Hello world",
    " Hello world",
    "   three leading spaces and trailing   ",
    "\ttab\t\tseparated\t\t\tvalues\t",
    "line one\nline two\n\nline four\r\nwindows\rcr",
    "digits 1 12 123 1234 12345 123456789 3.14159 2026-11-25 1,000,000",
    "Ça coûte 12,50 € — naïve café, Größe, jalapeño",
    "Привет, мир! Как дела?",
    "你好，世界！这是一个用于测试的中文句子。",
    "こんにちは世界。東京は大きな都市です。안녕하세요",
    "emoji 😀🚀 👍🏽 👨‍👩‍👧 ❤️ 🇫🇷 🦙🦙",
    "def f(x):\n    return x**2  # square\n\n\tif x:\n\t\tpass\n",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like tea? We'Ve a'lL",
    "    ",
    "\n\n\n",
    " \n \t \n",
    "UPPER lower MiXeD CamelCaseWords HTTPServer",
    "symbols: ~!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/ ------======= ......!!!!!!??????",
    ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
     "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
     "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
     "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"),
]


def write_vocab_gguf(vocab: Vocab, path: Path, name: str = "vocab-test") -> Path:
    """A GGUF with llama-architecture hyperparameters and the vocabulary, no tensors."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    vocab.add_to(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def load_llama(path: Path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def specials_regex(tokens) -> re.Pattern:
    """Alternation of token texts, longest first (how llama.cpp partitions special tokens)."""
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")
