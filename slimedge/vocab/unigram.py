"""SentencePiece-unigram ``tokenizer.json`` (XLM-RoBERTa, bge-m3, multilingual-e5) → tokenizer model "t5".

llama.cpp's UGM tokenizer runs SentencePiece's unigram search itself: it needs every piece with its
log-probability score, the piece types (the unknown piece, control pieces), the normalizer's compiled
character map (``Precompiled``'s ``precompiled_charsmap``, written byte for byte as
``tokenizer.ggml.precompiled_charsmap``), whether a ``▁`` is prepended (``Metaspace`` with prepend scheme
"always"/"first", or the older ``add_prefix_space``) and whether runs of spaces collapse (a ``Replace`` of
``" {2,}"`` in the normalizer). The ids are tokenizer.json's (XLM-R's fairseq order: <s> <pad> </s> <unk>
first, <mask> last), framed ``<s> … </s>`` as its post-processor says. Rows past the tokenizer are
``[PAD{id}]`` (UNUSED), as llama.cpp's converter writes them.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType, Keys, TokenType

from slimedge.errors import SlimedgeError
from slimedge.vocab.wordpiece import _find, _framing

log = logging.getLogger(__name__)


def is_unigram(tokenizer_json: dict) -> bool:
    return (tokenizer_json.get("model") or {}).get("type") == "Unigram"


@dataclass
class UnigramVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    special_ids: dict[str, int]
    add_space_prefix: bool
    remove_extra_ws: bool
    charsmap: bytes
    token_type_count: int
    source: Path
    model: str = "t5"
    pre: str = "default"
    chat_template: None = None

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        writer.add_uint32(Keys.Tokenizer.TOKEN_TYPE_COUNT, self.token_type_count)
        writer.add_add_space_prefix(self.add_space_prefix)
        writer.add_bool(Keys.Tokenizer.REMOVE_EXTRA_WS, self.remove_extra_ws)
        if self.charsmap:
            writer.add_kv(Keys.Tokenizer.PRECOMPILED_CHARSMAP, list(self.charsmap), GGUFValueType.ARRAY,
                          GGUFValueType.UINT8)
        for kind, tid in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(tid)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(True)


def _space_prefix(pre: dict | None) -> bool:
    meta = _find_pre(pre, "Metaspace")
    if meta is None:
        return True
    if "prepend_scheme" in meta:
        return meta["prepend_scheme"] in ("always", "first")
    return bool(meta.get("add_prefix_space", True))


def _find_pre(node: dict | None, kind: str) -> dict | None:
    if not isinstance(node, dict):
        return None
    if node.get("type") == kind:
        return node
    for child in node.get("pretokenizers") or []:
        found = _find_pre(child, kind)
        if found is not None:
            return found
    return None


def _collapses_spaces(norm: dict | None) -> bool:
    nodes = (norm.get("normalizers") or []) if isinstance(norm, dict) else []
    return any(n.get("type") == "Replace" and (n.get("pattern") or {}).get("Regex") == " {2,}" for n in nodes)


def read_unigram(tokenizer_json: dict, path: Path, tok_config: dict, hf_config: dict, n_vocab: int) -> UnigramVocab:
    """Lay a unigram tokenizer.json out over ``n_vocab`` embedding rows, as llama.cpp's UGM reads it."""
    model = tokenizer_json.get("model") or {}
    vocab = model.get("vocab")
    if not isinstance(vocab, list) or not vocab:
        raise SlimedgeError(f"{path}: model.vocab is missing or empty")
    if len(vocab) > n_vocab:
        raise SlimedgeError(f"{path} has {len(vocab)} tokens but the model's embedding has only {n_vocab} rows: "
                            "the tokenizer does not belong to this model")
    if model.get("byte_fallback"):
        raise SlimedgeError(f"{path}: a unigram tokenizer with byte_fallback has no llama.cpp UGM equivalent")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores, types = [-10000.0] * n_vocab, [int(TokenType.UNUSED)] * n_vocab
    for tid, (piece, score) in enumerate(vocab):
        tokens[tid], scores[tid], types[tid] = piece, float(score), int(TokenType.NORMAL)
    unk = model.get("unk_id")
    if unk is not None:
        types[unk] = int(TokenType.UNKNOWN)
    for t in tokenizer_json.get("added_tokens") or []:
        tid = t["id"]
        if tid < n_vocab and tid != unk:
            tokens[tid] = t["content"]
            types[tid] = int(TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED)
    ids = {t: i for i, t in enumerate(tokens)}
    norm = tokenizer_json.get("normalizer")
    pre = _find(norm, "Precompiled")
    charsmap = base64.b64decode(pre["precompiled_charsmap"]) if pre and pre.get("precompiled_charsmap") else b""
    if norm and not charsmap:
        log.warning("%s: normalizer without a precompiled charsmap; llama.cpp will not normalize text", path)
    cls, sep = _framing(tokenizer_json, tok_config)
    special = {"bos": cls, "eos": sep, "sep": sep}
    for kind in ("pad", "mask", "unk"):
        v = tok_config.get(f"{kind}_token")
        special[kind] = v.get("content") if isinstance(v, dict) else v
    special_ids = {k: ids[v] for k, v in special.items() if v is not None and v in ids}
    if "bos" not in special_ids or "eos" not in special_ids:
        raise SlimedgeError(f"{path}: no <s>/</s> framing found (post_processor or cls_token/sep_token in "
                            "tokenizer_config.json)")
    return UnigramVocab(tokens, scores, types, special_ids, _space_prefix(tokenizer_json.get("pre_tokenizer")),
                        _collapses_spaces(norm), charsmap, int(hf_config.get("type_vocab_size") or 1), path)
