"""Tokenizers → GGUF ``tokenizer.*`` metadata, so llama.cpp tokenizes exactly like the source tokenizer.

``load_vocab(model_dir, hf_config, n_vocab)`` picks the tokenizer in a Hugging Face folder:

1. ``tokenizer.json`` holding a byte-level BPE → tokenizer model "gpt2" (tokens, merges, token types,
   pre-tokenizer name identified from the split regex, see :mod:`slimedge.vocab.pretok`);
2. else ``tokenizer.model`` (SentencePiece) → tokenizer model "llama" (tokens, scores, types);
3. else a SentencePiece-style ``tokenizer.json`` (Metaspace ``▁``, byte fallback; what transformers 5
   saves for Llama/Mistral/Phi-3) → tokenizer model "llama", scores from merge order (:mod:`.hfspm`);
4. a WordPiece ``tokenizer.json`` (BERT) → tokenizer model "bert" (:mod:`.wordpiece`), checked first; a
   unigram ``tokenizer.json`` without ``tokenizer.model`` (XLM-RoBERTa) → "t5" (:mod:`.unigram`);
5. else a one-line SlimedgeError.

Added tokens (from tokenizer.json, added_tokens.json, tokenizer_config.json) take their ids: special
ones become CONTROL, others USER_DEFINED (llama.cpp always matches those in raw text, as Hugging Face
does). ``n_vocab`` is the model's embedding row count; ids the tokenizer leaves empty up to it become
``[PAD{id}]`` tokens of type UNUSED, as llama.cpp's converter writes them (Phi-3 pads 32011 → 32064).
A tokenizer that covers less than :data:`MIN_COVERAGE` of the rows is refused: real models pad a few
dozen or hundred ids (Phi-3 0.2%, Qwen2 0.2%), while a truncated or mismatched tokenizer leaves most
rows without a token, and such a file would load in llama.cpp but could not tokenize anything.

Every ``eos_token_id`` of ``generation_config.json`` (Llama 3 lists three) ends generation in llama.cpp:
the extra ones are written as the eot/eom ids (see :func:`slimedge.vocab.special.end_of_generation`).

``Vocab.add_to(writer)`` adds every ``tokenizer.*`` key to a ``gguf.GGUFWriter``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGUFWriter, Keys, TokenType

from slimedge.errors import SlimedgeError
from slimedge.vocab import pretok, special
from slimedge.vocab.bpe import is_byte_level, read_bpe
from slimedge.vocab.hfspm import as_gemma4, is_gemma4, is_spm_style, read_hf_spm
from slimedge.vocab.spm import SpmModel, read_spm
from slimedge.vocab.unigram import is_unigram, read_unigram
from slimedge.vocab.wordpiece import is_wordpiece, read_wordpiece

__all__ = ["Vocab", "load_vocab"]

log = logging.getLogger(__name__)

_PAD_SCORE = -1000.0  # score of added and padding tokens in SentencePiece vocabularies
MIN_COVERAGE = 0.9  # least share of the embedding rows the tokenizer must give a token


@dataclass
class Vocab:
    """Everything llama.cpp needs to tokenize like the source tokenizer."""

    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str  # tokenizer.ggml.pre: "default" for SentencePiece, e.g. "llama-bpe"/"qwen2"/"gpt-2" for BPE
    tokens: list[str]  # one per embedding row
    types: list[int]  # gguf.TokenType per token
    scores: list[float] | None = None  # SentencePiece merge scores (None for BPE)
    merges: list[str] | None = None  # BPE merges "left right" (None for SentencePiece)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad/eot/eom → id
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None  # SentencePiece dummy prefix (None for BPE)
    chat_template: str | list | None = None
    source: Path | None = None  # the tokenizer file read

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def add_to(self, writer: GGUFWriter) -> None:
        """Add all tokenizer.* keys to ``writer``."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        for kind, tid in self.special_ids.items():
            if kind in ("eot", "eom"):
                writer.add_uint32(Keys.Tokenizer.EOT_ID if kind == "eot" else Keys.Tokenizer.EOM_ID, tid)
            else:
                getattr(writer, f"add_{kind}_token_id")(tid)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


def load_vocab(model_dir: Path, hf_config: dict, n_vocab: int) -> Vocab:
    """Read the tokenizer in ``model_dir`` and lay it out over ``n_vocab`` embedding rows."""
    model_dir = Path(model_dir)
    tj_path, spm_path = model_dir / "tokenizer.json", model_dir / "tokenizer.model"
    tokenizer_json = special.read_json(tj_path) if tj_path.is_file() else None
    if tokenizer_json is not None and not isinstance(tokenizer_json, dict):
        raise SlimedgeError(f"{tj_path} must hold a JSON object")
    tok_config = special.read_tokenizer_config(model_dir)

    if tokenizer_json is not None and is_wordpiece(tokenizer_json):  # BERT-style embedders
        return read_wordpiece(tokenizer_json, tj_path, tok_config, hf_config, n_vocab)
    if tokenizer_json is not None and is_byte_level(tokenizer_json):
        vocab = _load_bpe(model_dir, tj_path, tokenizer_json, tok_config, n_vocab)
        vocab.pre = pretok.family_name(vocab.pre, hf_config.get("model_type"))
        default_bos = False
    elif spm_path.is_file() and not is_gemma4(hf_config, tokenizer_json):
        vocab = _load_spm(model_dir, spm_path, read_spm(spm_path), tokenizer_json, tok_config, n_vocab)
        default_bos = True
    elif tokenizer_json is not None and is_unigram(tokenizer_json):  # XLM-RoBERTa-style embedders
        return read_unigram(tokenizer_json, tj_path, tok_config, hf_config, n_vocab)
    elif tokenizer_json is not None and is_spm_style(tokenizer_json):
        sp = read_hf_spm(tokenizer_json, tj_path)
        vocab = _load_spm(model_dir, tj_path, sp, tokenizer_json, tok_config, n_vocab)
        if is_gemma4(hf_config, tokenizer_json):
            as_gemma4(vocab, tokenizer_json)
        default_bos = True
    elif tokenizer_json is not None:
        kind = (tokenizer_json.get("model") or {}).get("type")
        raise SlimedgeError(
            f"{tj_path} is a {kind} tokenizer that is neither byte-level nor SentencePiece-style BPE and "
            "there is no tokenizer.model: slimedge converts byte-level or SentencePiece-style BPE "
            "tokenizer.json or SentencePiece tokenizer.model; copy the model's tokenizer.model next to "
            "config.json")
    else:
        raise SlimedgeError(f"no tokenizer.model or tokenizer.json in {model_dir}: "
                            "copy the tokenizer files next to config.json")

    token_ids = {t: i for i, t in enumerate(vocab.tokens)}
    own = vocab.special_ids  # the tokenizer's own ids, replaced below by the resolved ones
    vocab.special_ids = special.special_ids(tok_config, hf_config, token_ids, own, vocab.n_vocab)
    eos = special.eos_ids(model_dir, hf_config)
    if "eos" not in vocab.special_ids and eos and 0 <= eos[0] < vocab.n_vocab:
        vocab.special_ids["eos"] = eos[0]
    vocab.special_ids.update(special.end_of_generation(eos, vocab.tokens, vocab.special_ids))
    if vocab.model == "llama" and "unk" in vocab.special_ids:
        vocab.types[vocab.special_ids["unk"]] = int(TokenType.UNKNOWN)
    vocab.add_bos, vocab.add_eos = special.add_bos_eos(
        tok_config, tokenizer_json, vocab.tokens, vocab.special_ids, default_bos)
    vocab.chat_template = special.chat_template(model_dir, tok_config)
    log.info("tokenizer %s: %s/%s, %d tokens, special %s", vocab.source, vocab.model, vocab.pre,
             vocab.n_vocab, vocab.special_ids)
    return vocab


def _load_spm(model_dir: Path, path: Path, sp: SpmModel, tokenizer_json: dict | None, tok_config: dict,
              n_vocab: int) -> Vocab:
    _check_fits(path, len(sp.tokens), n_vocab)
    tokens: list[str | None] = list(sp.tokens) + [None] * (n_vocab - len(sp.tokens))
    scores = list(sp.scores) + [_PAD_SCORE] * (n_vocab - len(sp.tokens))
    types = list(sp.types) + [int(TokenType.UNUSED)] * (n_vocab - len(sp.tokens))
    for tid, tok in _added_in_range(model_dir, tokenizer_json, tok_config, n_vocab):
        if tid < len(sp.tokens) and tok.content == sp.tokens[tid] and sp.types[tid] in (
                TokenType.UNKNOWN, TokenType.CONTROL):
            continue  # <unk>/<s>/</s> restated by the config: keep SentencePiece's own entry
        content = tok.content if tok.special else tok.content.replace("\u2581", " ")
        tokens[tid] = content
        scores[tid] = _PAD_SCORE
        types[tid] = int(TokenType.CONTROL if tok.special else TokenType.USER_DEFINED)
    _check_coverage(path, tokens)
    return Vocab(model="llama", pre="default", tokens=_fill_pads(tokens, path), types=types,
                 scores=scores, special_ids={k: v for k, v in sp.ids.items() if v is not None},
                 add_space_prefix=sp.add_space_prefix, source=path)


def _load_bpe(model_dir: Path, path: Path, tokenizer_json: dict, tok_config: dict, n_vocab: int) -> Vocab:
    bpe = read_bpe(tokenizer_json, path)
    top = max(bpe.vocab.values())
    _check_fits(path, top + 1, n_vocab)
    tokens: list[str | None] = [None] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for text, tid in bpe.vocab.items():
        if not isinstance(tid, int) or tid < 0:
            raise SlimedgeError(f"{path}: vocabulary entry {text!r} has invalid id {tid!r}")
        tokens[tid] = text
        types[tid] = int(TokenType.NORMAL)
    for tid, tok in _added_in_range(model_dir, tokenizer_json, tok_config, n_vocab):
        tokens[tid] = tok.content
        types[tid] = int(TokenType.CONTROL if tok.special else TokenType.USER_DEFINED)
    _check_coverage(path, tokens)
    return Vocab(model="gpt2", pre=bpe.pre, tokens=_fill_pads(tokens, path), types=types,
                 merges=bpe.merges, source=path)


def _check_fits(path: Path, n_tok: int, n_vocab: int) -> None:
    if n_tok > n_vocab:
        raise SlimedgeError(f"{path} has {n_tok} tokens but the model's embedding has only {n_vocab} rows: "
                            "the tokenizer does not belong to this model")


def _check_coverage(path: Path, tokens: list[str | None]) -> None:
    """Refuse a tokenizer that gives a token to fewer than MIN_COVERAGE of the embedding rows."""
    n_rows, covered = len(tokens), sum(t is not None for t in tokens)
    if covered < MIN_COVERAGE * n_rows:
        raise SlimedgeError(
            f"{path} gives tokens to only {covered} of the model's {n_rows} embedding rows (slimedge needs at "
            f"least {MIN_COVERAGE:.0%}; the rest would be padding): the tokenizer is truncated or does not "
            "belong to this model; restore it from the model's source")


def _added_in_range(model_dir: Path, tokenizer_json: dict | None, tok_config: dict, n_vocab: int):
    for tid, tok in sorted(special.added_tokens(model_dir, tokenizer_json, tok_config).items()):
        if tid >= n_vocab:
            log.warning("added token %d %r is past the model's %d embedding rows: left out",
                        tid, tok.content, n_vocab)
            continue
        yield tid, tok


def _fill_pads(tokens: list[str | None], path: Path) -> list[str]:
    """Name empty ids ``[PAD{id}]`` and make sure every token text is unique (llama.cpp needs that)."""
    out = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    seen: dict[str, int] = {}
    for i, t in enumerate(out):
        if t == "":
            raise SlimedgeError(f"{path}: token {i} is empty; llama.cpp cannot load empty tokens")
        j = seen.setdefault(t, i)
        if j != i:
            raise SlimedgeError(f"{path}: tokens {j} and {i} are both {t!r}; llama.cpp needs unique token "
                                "texts (fix the added tokens in tokenizer_config.json)")
    return out
