"""SentencePiece-style BPE saved as ``tokenizer.json`` (no ``tokenizer.model``) → llama-style token list.

transformers 5 saves Llama/Mistral/Phi-3 tokenizers as a ``tokenizer.json`` BPE with a Metaspace
pre-tokenizer (``▁`` for space, no splitting) and byte fallback (``<0x0A>`` pieces) — and drops
``tokenizer.model``. llama.cpp's "llama" tokenizer wants per-token scores instead of merges: it
repeatedly joins the adjacent pair whose joined text is the highest-scoring token. Giving each token
the score ``-rank`` of the first merge that produces it makes that the merge order of the BPE. This is
exact for tokenizers converted from SentencePiece, whose merges list every pair that joins to a token,
ordered by the original scores.

Gemma 4 gets llama.cpp's own "gemma4" tokenizer instead (as llama.cpp's converter writes it): the same tokens,
with the BPE merges applied as such over each line (``tokenizer.ggml.merges``), and its chat-format markers
(:data:`GEMMA4_VISIBLE`) typed USER_DEFINED so that llama.cpp renders them for its chat parser.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from gguf import TokenType

from slimedge.errors import SlimedgeError
from slimedge.vocab.spm import SpmModel

log = logging.getLogger(__name__)

_SPACE = "\u2581"
_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_UNREACHABLE = -1e9  # score of multi-character tokens no merge produces (the BPE never emits them)


def _metaspace(tokenizer_json: dict) -> dict | None:
    """The Metaspace pre-tokenizer, or a synthetic one for the older Prepend+Replace normalizer form."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Metaspace":
            return step
    norm = tokenizer_json.get("normalizer") or {}
    parts = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    kinds = [p.get("type") for p in parts]
    if "Replace" in kinds and any(p.get("content") == _SPACE for p in parts if p.get("type") == "Replace"):
        scheme = "always" if "Prepend" in kinds else "never"
        return {"type": "Metaspace", "replacement": _SPACE, "prepend_scheme": scheme, "split": False}
    return None


def is_spm_style(tokenizer_json: dict) -> bool:
    """True for a BPE tokenizer.json that spells spaces as ``▁`` (Metaspace or Replace normalizer)."""
    return (tokenizer_json.get("model") or {}).get("type") == "BPE" and _metaspace(tokenizer_json) is not None


def read_hf_spm(tokenizer_json: dict, path: Path) -> SpmModel:
    model = tokenizer_json["model"]
    meta = _metaspace(tokenizer_json)
    assert meta is not None
    if meta.get("replacement", _SPACE) != _SPACE:
        raise SlimedgeError(f"{path}: Metaspace replacement {meta.get('replacement')!r} is not '▁', "
                            "which llama.cpp's SentencePiece tokenizer requires")
    scheme = meta.get("prepend_scheme", "always" if meta.get("add_prefix_space", True) else "never")
    if scheme == "first":
        log.warning("%s: Metaspace prepend_scheme 'first' — llama.cpp also prepends '▁' after special "
                    "tokens, so text right after one may tokenize differently", path)
    if meta.get("split", False):
        log.warning("%s: Metaspace split=true — llama.cpp merges across words, so some text may "
                    "tokenize differently", path)
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise SlimedgeError(f"{path}: BPE options dropout/continuing_subword_prefix/end_of_word_suffix "
                            "have no llama.cpp equivalent")

    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise SlimedgeError(f"{path}: model.vocab is missing or empty")
    n = max(vocab.values()) + 1
    tokens: list[str | None] = [None] * n
    for text, tid in vocab.items():
        tokens[tid] = text
    rank: dict[str, int] = {}
    for i, m in enumerate(model.get("merges") or []):
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(left + right, i)

    unk = model.get("unk_token")
    byte_fallback = bool(model.get("byte_fallback", False))
    scores: list[float] = []
    types: list[int] = []
    for tid, text in enumerate(tokens):
        if text is None:
            text = tokens[tid] = f"[PAD{tid}]"
            scores.append(_UNREACHABLE)
            types.append(int(TokenType.UNUSED))
            continue
        if text in rank:
            scores.append(-float(rank[text]))
        else:
            scores.append(0.0 if len(text) == 1 else _UNREACHABLE)
        if byte_fallback and _BYTE.fullmatch(text):
            types.append(int(TokenType.BYTE))
        elif text == unk:
            types.append(int(TokenType.UNKNOWN))
        else:
            types.append(int(TokenType.NORMAL))
    if byte_fallback and types.count(TokenType.BYTE) != 256:
        log.warning("%s: byte_fallback is set but the vocabulary has %d byte pieces, not 256",
                    path, types.count(TokenType.BYTE))
    ids = {"unk": vocab.get(unk) if unk else None}
    return SpmModel(tokens=tokens, scores=scores, types=types, ids=ids,  # type: ignore[arg-type]
                    add_space_prefix=scheme != "never")


# Gemma 4's chat-format markers, always rendered (llama.cpp's converter types them USER_DEFINED)
GEMMA4_VISIBLE = frozenset({"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                            "<tool_response|>", '<|"|>'})


def is_gemma4(hf_config: dict, tokenizer_json: dict | None) -> bool:
    """A Gemma 4 checkpoint with a SentencePiece-style tokenizer.json (what llama.cpp converts as "gemma4")."""
    names = hf_config.get("architectures") or [""]
    return (tokenizer_json is not None and str(names[0]).startswith("Gemma4")
            and is_spm_style(tokenizer_json))


def as_gemma4(vocab, tokenizer_json: dict) -> None:
    """Turn the SentencePiece-style vocabulary read from Gemma 4's tokenizer.json into llama.cpp's "gemma4"."""
    merges = (tokenizer_json.get("model") or {}).get("merges") or []
    vocab.model, vocab.pre, vocab.add_space_prefix = "gemma4", "gemma4", False
    vocab.merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    for tid, text in enumerate(vocab.tokens):
        if text in GEMMA4_VISIBLE:
            vocab.types[tid] = int(TokenType.USER_DEFINED)
