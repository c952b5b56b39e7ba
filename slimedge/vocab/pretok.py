"""Identify llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``) from a tokenizer.json definition.

llama.cpp splits text before byte-level BPE with a fixed list of regexes per pre-tokenizer type
(src/llama-vocab.cpp). Hugging Face's ``tokenizer.json`` states its split in ``pre_tokenizer``:
``ByteLevel(use_regex=true)`` (GPT-2's regex), ``Split(Regex, "Isolated")`` entries, ``Digits`` and
``Sequence`` of those. We flatten that definition to its list of split regexes, put each regex into a
canonical spelling, and look the list up in :data:`KNOWN` — so a tokenizer trained by anyone with a
known scheme converts, not only the vocabularies llama.cpp's own converter has hashed.

Canonical spelling: literal CR/LF/TAB become ``\\r``/``\\n``/``\\t``; the case-folded contractions
llama.cpp spells ``(?:'[sS]|'[tT]|...)`` become Hugging Face's ``(?i:'s|'t|...)``; a trailing ``|\\s+``
after ``\\s+(?!\\S)`` is dropped (under "Isolated" splitting an unmatched whitespace run becomes its
own piece anyway, so both spellings split identically).

Known llama.cpp limitation: its "gpt-4o" and "tekken" splits rewrite the letter classes without
``\\p{M}``, so words with combining marks split differently there (``marks_ok=False``, logged).

Several llama.cpp names share one regex list and differ in ``ignore_merges`` (whole-word lookup before
merging); the name whose flag equals the tokenizer's ``model.ignore_merges`` wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from slimedge.errors import SlimedgeError

log = logging.getLogger(__name__)

_CONTRACTIONS_HF = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CONTRACTIONS_CPP = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

# Regexes in Hugging Face spelling (raw strings: backslashes are regex escapes).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
          r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DIGITS_EACH = r"\p{N}"
DIGITS_RUN = r"\p{N}+"


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # value of tokenizer.ggml.pre that llama.cpp maps to this split
    regexes: tuple[str, ...]
    ignore_merges: bool  # what llama.cpp sets for this name
    marks_ok: bool = True  # False: llama.cpp's version of the regex drops \p{M} from its letter classes


# One row per llama.cpp name we emit; rows sharing regexes are told apart by ignore_merges.
KNOWN: tuple[PreTokenizer, ...] = (
    PreTokenizer("llama-bpe", (LLAMA3,), True),
    PreTokenizer("dbrx", (LLAMA3,), False),
    PreTokenizer("qwen2", (QWEN2,), False),
    PreTokenizer("qwen35", (QWEN35,), False),
    PreTokenizer("gpt-2", (GPT2,), False),
    PreTokenizer("starcoder", (DIGITS_EACH, GPT2), False),
    PreTokenizer("gpt-4o", (GPT4O,), False, marks_ok=False),
    PreTokenizer("tekken", (TEKKEN,), True, marks_ok=False),
)


# Names llama.cpp's converter writes for one family's tokenizer where llama.cpp treats the name exactly as the
# split's generic one (same regexes, ignore_merges and add_bos in src/llama-vocab.cpp): (generic name, the
# HF config's model_type) -> the family's name, so the file says what llama.cpp's converter says
FAMILY_NAMES = {("llama-bpe", "lfm2"): "lfm2", ("llama-bpe", "lfm2_moe"): "lfm2",
                ("llama-bpe", "falcon_h1"): "falcon-h1"}


def family_name(name: str, model_type: str | None) -> str:
    """``name``, or the family's own spelling of it (:data:`FAMILY_NAMES`) for this ``model_type``."""
    return FAMILY_NAMES.get((name, str(model_type or "")), name)


def canonical(regex: str) -> str:
    """One spelling per regex (see module docstring)."""
    r = regex.replace("\r", r"\r").replace("\n", r"\n").replace("\t", r"\t")
    r = r.replace(_CONTRACTIONS_CPP, _CONTRACTIONS_HF)
    if r.endswith(r"\s+(?!\S)|\s+"):
        r = r[: -len(r"|\s+")]
    return r


def split_regexes(pre: dict | None, where: Path) -> list[str]:
    """Flatten a tokenizer.json ``pre_tokenizer`` into its ordered split regexes.

    Raises SlimedgeError for parts llama.cpp has no equivalent of, or when no ByteLevel step exists.
    """
    out: list[str] = []
    saw_bytelevel = False

    def walk(node: dict) -> None:
        nonlocal saw_bytelevel
        kind = node.get("type")
        if kind == "Sequence":
            for child in node.get("pretokenizers", []):
                walk(child)
        elif kind == "ByteLevel":
            saw_bytelevel = True
            if node.get("add_prefix_space", False):
                raise SlimedgeError(
                    f"{where}: ByteLevel pre-tokenizer has add_prefix_space=true, which llama.cpp's BPE "
                    "tokenizer does not implement; set it to false in tokenizer.json if the model allows")
            if node.get("use_regex", True):
                out.append(GPT2)
        elif kind == "Split":
            pattern = node.get("pattern", {})
            if "Regex" not in pattern:
                raise SlimedgeError(f"{where}: Split pre-tokenizer with a plain-string pattern {pattern!r} "
                                    "is not supported; slimedge recognizes regex splits only")
            if str(node.get("behavior", "")).lower() != "isolated" or node.get("invert", False):
                raise SlimedgeError(
                    f"{where}: Split pre-tokenizer with behavior={node.get('behavior')!r}, "
                    f"invert={node.get('invert')!r} is not supported (llama.cpp splits 'Isolated', not inverted)")
            out.append(pattern["Regex"])
        elif kind == "Digits":
            out.append(DIGITS_EACH if node.get("individual_digits", False) else DIGITS_RUN)
        else:
            raise SlimedgeError(f"{where}: pre-tokenizer step {kind!r} has no llama.cpp equivalent; "
                                "slimedge converts byte-level BPE (ByteLevel, Split regex, Digits)")

    if pre:
        walk(pre)
    if not saw_bytelevel:
        raise SlimedgeError(f"{where}: pre_tokenizer has no ByteLevel step, so this is not a byte-level "
                            "BPE tokenizer; provide tokenizer.model (SentencePiece) instead")
    return out


def identify(pre: dict | None, ignore_merges: bool, where: Path) -> str:
    """The llama.cpp pre-tokenizer name for a tokenizer.json ``pre_tokenizer`` definition."""
    regexes = tuple(canonical(r) for r in split_regexes(pre, where))
    rows = [k for k in KNOWN if tuple(canonical(r) for r in k.regexes) == regexes]
    if not rows:
        shown = " + ".join(repr(r) for r in regexes) or "(none)"
        names = ", ".join(k.name for k in KNOWN)
        raise SlimedgeError(
            f"{where}: pre-tokenizer split regex {shown} matches none that llama.cpp implements "
            f"(slimedge recognizes: {names}); retrain the tokenizer with one of those schemes")
    row = next((r for r in rows if r.ignore_merges == ignore_merges), None)
    if row is not None:
        if not row.marks_ok:
            log.warning("%s: llama.cpp's %r split treats combining marks (\\p{M}) as non-letters, so text "
                        "with them (Khmer, Devanagari, Thai, ...) may tokenize differently", where, row.name)
        return row.name
    log.warning("%s: split regex is llama.cpp's %r but ignore_merges=%s differs from it; words that are "
                "whole vocabulary entries may tokenize differently", where, rows[0].name, ignore_merges)
    return rows[0].name
