"""Benchmarks for embedding models: speed at batch and quality against the float model's embeddings.

Perplexity and generation speed mean nothing for an embedder. For a GGUF that states a pooling type (or
is an encoder-only architecture), ``slimedge bench`` instead embeds :data:`SENTENCES` (held-out sentences
of mixed topics, languages and lengths, none in any test model's training text) in fresh child processes
(:mod:`slimedge.bench.child`, job ``embed``) and reports tokens/s of the whole batch, its peak RSS and,
with ``--ref``, the same sentences through the reference (F32 GGUF, or an HF folder converted to one):

* ``embed_cosine_mean`` / ``embed_cosine_min``: cosine of each sentence's vector to the reference's;
* ``embed_nn_agreement``: the share of sentences whose nearest neighbour (cosine, among the other
  sentences) is the same under the model as under the reference — whether retrieval would rank alike.

So Q8_0 and Q4_K_M of an embedder compare the way perplexity/KL compare them for a chat model.
"""

from __future__ import annotations

import numpy as np

ENCODER_ARCHS = ("bert", "nomic-bert", "nomic-bert-moe", "modern-bert", "jina-bert-v2", "jina-bert-v3", "neo-bert",
                 "eurobert", "gemma-embedding")  # as slimedge/bundle/launcher.py's (a bundle file: no imports)

SENTENCES = (
    "The central bank raised interest rates by a quarter point on Tuesday.",
    "Inflation figures came in higher than economists had expected.",
    "A new species of frog was discovered in the rainforest of Ecuador.",
    "Biologists found an unknown amphibian living in South American jungles.",
    "How do I reset my router's admin password?",
    "Steps to restore the default login of a home Wi-Fi modem.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Mix the dry ingredients before adding butter and eggs.",
    "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.",
    "Le musée du Louvre est fermé le mardi.",
    "El partido de fútbol terminó empatado a dos goles.",
    "東京の天気は明日雨になるでしょう。",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The quarterly report shows revenue growth of twelve percent.",
    "She plays the violin in the city orchestra every weekend.",
    "Compile the project with optimizations enabled and run the tests.",
)


def is_embedding(meta: dict) -> bool:
    """Whether GGUF metadata ``meta`` is an embedding model's (a pooling type, or an encoder-only arch)."""
    arch = meta.get("general.architecture")
    return meta.get(f"{arch}.pooling_type") is not None or arch in ENCODER_ARCHS


def compare(vectors: np.ndarray, ref: np.ndarray) -> dict:
    """Cosines to the reference and nearest-neighbour agreement (rows = sentences)."""
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    agree = float(np.mean(sa.argmax(1) == sb.argmax(1)))
    return {"embed_cosine_mean": float(cos.mean()), "embed_cosine_min": float(cos.min()),
            "embed_nn_agreement": agree}


def embed_job(model, common: dict, repeats: int) -> dict:
    """The child job embedding :data:`SENTENCES` with ``model`` (the whole sentence in one micro-batch)."""
    return dict(common, kind="embed", model=str(model), n_ctx=512, n_batch=512, n_ubatch=512,
                sentences=list(SENTENCES), repeats=repeats)
