"""WordPiece ``tokenizer.json`` (BERT and its sentence-transformers descendants) → tokenizer model "bert".

llama.cpp's WPM tokenizer splits on whitespace and punctuation, then matches each word, prefixed with the
phantom space ``▁``, greedily against the token texts. So the vocabulary is written the way llama.cpp's
converter writes it: a word-initial piece ``foo`` becomes ``▁foo``, a continuation ``##oo`` becomes ``oo``,
special tokens ([CLS], [SEP], ...) stay as they are. The BertNormalizer's options become
``tokenizer.ggml.normalizer.lowercase`` / ``strip_accents`` (llama.cpp defaults both to true, which a cased
model must not get). llama.cpp frames every text as ``bos … sep``: bos is the tokenizer's [CLS], sep its
[SEP] (from the post-processor, else tokenizer_config.json). ``token_type_count`` (BERT's segment
embeddings) is written with the tokenizer, as llama.cpp reads it from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFWriter, Keys, TokenType

from slimedge.errors import SlimedgeError

log = logging.getLogger(__name__)

PHANTOM = "\u2581"
LOWERCASE_KEY = "tokenizer.ggml.normalizer.lowercase"  # not in the gguf package's Keys yet
STRIP_ACCENTS_KEY = "tokenizer.ggml.normalizer.strip_accents"


def is_wordpiece(tokenizer_json: dict) -> bool:
    return (tokenizer_json.get("model") or {}).get("type") == "WordPiece"


def _find(node: dict | None, kind: str) -> dict | None:
    """The first ``kind`` node in a (possibly Sequence) normalizer/post-processor tree."""
    if not isinstance(node, dict):
        return None
    if node.get("type") == kind:
        return node
    for key in ("normalizers", "processors"):
        for child in node.get(key) or []:
            found = _find(child, kind)
            if found is not None:
                return found
    return None


def _framing(tokenizer_json: dict, tok_config: dict) -> tuple[str | None, str | None]:
    """(cls, sep) token texts: from the post-processor where it frames single texts, else the config."""
    post = tokenizer_json.get("post_processor")
    bert = _find(post, "BertProcessing") or _find(post, "RobertaProcessing")
    if bert is not None:
        return bert["cls"][0], bert["sep"][0]
    tmpl = _find(post, "TemplateProcessing")
    if tmpl is not None:
        single = tmpl.get("single") or []
        first = (single[0].get("SpecialToken") or {}).get("id") if single else None
        last = (single[-1].get("SpecialToken") or {}).get("id") if len(single) > 1 else None
        return first, last

    def text(key: str) -> str | None:
        v = tok_config.get(key)
        return v.get("content") if isinstance(v, dict) else v

    return text("cls_token"), text("sep_token")


@dataclass
class WordPieceVocab:
    """A "bert" vocabulary; ``add_to`` as :class:`slimedge.vocab.Vocab`'s."""

    tokens: list[str]
    types: list[int]
    special_ids: dict[str, int]
    lowercase: bool
    strip_accents: bool
    token_type_count: int
    source: Path
    model: str = "bert"
    pre: str = "default"
    chat_template: None = None

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def add_to(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        writer.add_uint32(Keys.Tokenizer.TOKEN_TYPE_COUNT, self.token_type_count)
        for kind, tid in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(tid)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_bool(Keys.Tokenizer.ADD_SEP, True)
        writer.add_bool(LOWERCASE_KEY, self.lowercase)
        writer.add_bool(STRIP_ACCENTS_KEY, self.strip_accents)


def read_wordpiece(tokenizer_json: dict, path: Path, tok_config: dict, hf_config: dict,
                   n_vocab: int) -> WordPieceVocab:
    """Lay a WordPiece tokenizer.json out over ``n_vocab`` embedding rows, as llama.cpp's WPM reads it."""
    model = tokenizer_json.get("model") or {}
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise SlimedgeError(f"{path}: model.vocab is missing or empty")
    prefix = model.get("continuing_subword_prefix", "##")
    if prefix != "##":
        raise SlimedgeError(f"{path}: WordPiece continuing_subword_prefix {prefix!r} is not supported "
                            "(llama.cpp's WPM tokenizer reads BERT's '##')")
    by_id: dict[int, str] = {tid: text for text, tid in vocab.items()}
    specials = {t["id"]: t["content"] for t in tokenizer_json.get("added_tokens") or [] if t.get("special")}
    by_id.update(specials)
    top = max(by_id) + 1
    if top > n_vocab:
        raise SlimedgeError(f"{path} has {top} tokens but the model's embedding has only {n_vocab} rows: "
                            "the tokenizer does not belong to this model")
    tokens, types = [], []
    for tid in range(n_vocab):
        text = by_id.get(tid)
        if text is None:
            tokens.append(f"[PAD{tid}]")
            types.append(int(TokenType.UNUSED))
        elif tid in specials:
            tokens.append(text)
            types.append(int(TokenType.CONTROL))
        else:
            tokens.append(text[len(prefix):] if text.startswith(prefix) else PHANTOM + text)
            types.append(int(TokenType.NORMAL))
    ids = {t: i for i, t in enumerate(tokens)}
    if len(ids) != len(tokens):
        raise SlimedgeError(f"{path}: two tokens have the same text once written for llama.cpp ('##x' and a "
                            "special 'x'); llama.cpp needs unique token texts")
    cls, sep = _framing(tokenizer_json, tok_config)
    unk = model.get("unk_token")
    special = {"bos": cls, "sep": sep, "unk": unk}
    for kind in ("pad", "mask"):
        v = tok_config.get(f"{kind}_token")
        special[kind] = v.get("content") if isinstance(v, dict) else v
    special_ids = {k: ids[v] for k, v in special.items() if v is not None and v in ids}
    if "bos" not in special_ids or "sep" not in special_ids:
        raise SlimedgeError(f"{path}: no [CLS]/[SEP] framing found (post_processor or cls_token/sep_token in "
                            "tokenizer_config.json); llama.cpp's WPM tokenizer needs both")
    special_ids["eos"] = special_ids["sep"]
    norm = _find(tokenizer_json.get("normalizer"), "BertNormalizer")
    lowercase = bool(norm.get("lowercase", True)) if norm else False
    strip = norm.get("strip_accents") if norm else None
    strip_accents = lowercase if strip is None else bool(strip)
    log.info("tokenizer %s: bert (WordPiece), %d tokens, special %s, lowercase %s", path, len(tokens),
             special_ids, lowercase)
    return WordPieceVocab(tokens, types, special_ids, lowercase, strip_accents,
                          int(hf_config.get("type_vocab_size") or 1), path)


__all__ = ["WordPieceVocab", "is_wordpiece", "read_wordpiece"]
