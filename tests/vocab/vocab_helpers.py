"""Helpers for vocabulary tests: sample strings, vocab-only GGUF writing, llama.cpp loading."""

from __future__ import annotations

import ctypes
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


class LlamaVocab:
    """A vocab-only model loaded by llama.cpp through llama-cpp-python's low-level API."""

    def __init__(self, path: Path):
        import llama_cpp as lc

        self._lc = lc
        lc.llama_backend_init()
        _quiet_llama_logs(lc)
        params = lc.llama_model_default_params()
        params.vocab_only = True
        self.model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)

    def close(self) -> None:
        if self.model:
            self._lc.llama_model_free(self.model)
            self.model = None

    def n_vocab(self) -> int:
        return self._lc.llama_vocab_n_tokens(self.vocab)

    def bos(self) -> int:
        return self._lc.llama_vocab_bos(self.vocab)

    def eos(self) -> int:
        return self._lc.llama_vocab_eos(self.vocab)

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode()

    def tokenize(self, text: str, add_special: bool = False, special: bool = True) -> list[int]:
        data = text.encode()
        cap = len(data) + 8
        out = (self._lc.llama_token * cap)()
        n = self._lc.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, special)
        assert n >= 0, n
        return list(out[:n])

    def piece(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        assert 0 <= n <= len(buf), n
        return buf.raw[:n]

    def pieces(self, ids: list[int], special: bool = True) -> bytes:
        """Concatenated token pieces: what streaming generation prints."""
        return b"".join(self.piece(t, special) for t in ids)

    def detokenize(self, ids: list[int], special: bool = True) -> bytes:
        """llama_detokenize (drops SentencePiece's leading space; may clean spaces for some BPE types)."""
        arr = (self._lc.llama_token * max(1, len(ids)))(*ids)
        cap = 16 * len(ids) + 16
        buf = ctypes.create_string_buffer(cap)
        n = self._lc.llama_detokenize(self.vocab, arr, len(ids), buf, cap, False, special)
        assert 0 <= n <= cap, n
        return buf.raw[:n]


def _quiet_llama_logs(lc) -> None:
    """Silence llama.cpp's loader chatter (it logs to stderr through a C callback)."""
    global _LOG_CB
    if _LOG_CB is None:
        _LOG_CB = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_LOG_CB, ctypes.c_void_p(0))


_LOG_CB = None


def load_llama(path: Path) -> LlamaVocab:
    return LlamaVocab(path)


def specials_regex(tokens) -> re.Pattern:
    """Alternation of token texts, longest first (how llama.cpp partitions special tokens)."""
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")
