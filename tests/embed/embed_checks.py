"""Checks every embedding family shares: llama.cpp's pooled vectors against sentence-transformers'.

``st_reference(dir)`` encodes :data:`SENTENCES` with ``SentenceTransformer`` (the float model, its own
tokenizer, pooling and normalization); ``gguf_embeddings(path)`` loads the GGUF in llama-cpp-python with
``embedding=True`` and the pooling the file states, and embeds the same sentences; ``cosines`` compares them
row by row. ``token_ids_match`` compares the two tokenizers on every sentence (special framing included).
"""

from __future__ import annotations

import numpy as np

from tests.embed.embed_factory import SENTENCES


def st_reference(model_dir, sentences=SENTENCES) -> tuple[np.ndarray, object]:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    return np.asarray(st.encode(list(sentences), show_progress_bar=False), dtype=np.float64), st


def load_gguf(path):
    import llama_cpp

    return llama_cpp.Llama(str(path), embedding=True, n_ctx=128, n_threads=2, verbose=False)


def gguf_embeddings(llm, sentences=SENTENCES) -> np.ndarray:
    return np.asarray(llm.embed(list(sentences)), dtype=np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def token_ids_mismatches(st, llm, sentences=SENTENCES) -> list[tuple[str, list, list]]:
    """(sentence, source ids, llama.cpp ids) for every sentence the two tokenize differently."""
    out = []
    for s in sentences:
        want, got = list(st.tokenizer(s)["input_ids"]), llm.tokenize(s.encode("utf-8"))
        if want != got:
            out.append((s, want, got))
    return out


def check_converted(src, out, ftype: str, floor: float):
    """``src`` converted to ``out`` at ``ftype``: llama.cpp's pooled embeddings have cosine ≥ ``floor`` to
    sentence-transformers' and the tokenizer's ids are the source's. Returns the loaded llama.cpp model."""
    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec

    convert(src, out, QuantSpec(ftype))
    ref, st = st_reference(src)
    llm = load_gguf(out)
    cos = cosines(gguf_embeddings(llm), ref)
    assert cos.min() >= floor, cos
    assert token_ids_mismatches(st, llm) == []
    return llm
