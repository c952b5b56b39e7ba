"""Special tokens, added tokens, add_bos/add_eos and the chat template of a Hugging Face tokenizer folder.

Sources, later ones overriding earlier ones where they overlap:
- added tokens: ``tokenizer.json`` ``added_tokens`` → ``added_tokens.json`` (no "special" flag: a token
  that looks like ``<|...|>`` counts as special) → ``tokenizer_config.json`` ``added_tokens_decoder``;
- bos/eos/unk/pad: ``tokenizer_config.json`` ``*_token`` (string or {"content": ...}) resolved to ids
  over the final token list, then the tokenizer's own ids (SentencePiece), then ``config.json``
  ``*_token_id`` (first entry of a list);
- eot/eom: the other ``eos_token_id`` entries of ``generation_config.json``/``config.json``, so llama.cpp
  stops at each (:func:`end_of_generation`);
- add_bos/add_eos: ``tokenizer_config.json`` ``add_*_token``, else the tokenizer.json post-processor
  (TemplateProcessing starting with bos / ending with eos), else the tokenizer family's default;
- chat template: ``tokenizer_config.json`` ``chat_template``, else ``chat_template.jinja``, else
  ``chat_template.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimedge.errors import SlimedgeError

log = logging.getLogger(__name__)

SPECIAL_KINDS = ("bos", "eos", "unk", "pad")


@dataclass(frozen=True)
class AddedToken:
    content: str
    special: bool  # special → CONTROL (matched only when parsing specials); else USER_DEFINED
    normalized: bool = False


def read_json(path: Path) -> Any:
    """Parse a JSON file or raise a one-line SlimedgeError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SlimedgeError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); "
                            "restore the file from the model's source") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SlimedgeError(f"cannot read {path}: {e}") from None


def read_tokenizer_config(model_dir: Path) -> dict:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise SlimedgeError(f"{path} must hold a JSON object")
    return cfg


def looks_special(content: str) -> bool:
    """Tokens of the ``<|...|>`` family are control tokens even where a file forgets to say so."""
    return ((content.startswith("<|") and content.endswith("|>"))
            or (content.startswith("<｜") and content.endswith("｜>")))


def added_tokens(model_dir: Path, tokenizer_json: dict | None, tok_config: dict) -> dict[int, AddedToken]:
    """All added tokens by id, merged from the three files (see module docstring)."""
    out: dict[int, AddedToken] = {}

    def put(tid: Any, tok: AddedToken, where: str) -> None:
        try:
            tid = int(tid)
        except (TypeError, ValueError):
            raise SlimedgeError(f"{model_dir / where}: added token {tok.content!r} has a non-integer id "
                                f"{tid!r}") from None
        if tid < 0:
            raise SlimedgeError(f"{model_dir / where}: added token {tok.content!r} has negative id {tid}")
        old = out.get(tid)
        if old is not None and old.content != tok.content:
            log.warning("%s: added token %d %r replaces %r", where, tid, tok.content, old.content)
        out[tid] = tok

    stripped: list[str] = []
    for entry in (tokenizer_json or {}).get("added_tokens", []) or []:
        put(entry.get("id"), AddedToken(entry["content"], bool(entry.get("special", False)),
                                        bool(entry.get("normalized", False))), "tokenizer.json")
        if entry.get("lstrip") or entry.get("rstrip"):
            stripped.append(entry["content"])
    if stripped:
        log.warning("tokenizer.json: added tokens %s strip neighbouring spaces; GGUF cannot say so and "
                    "llama.cpp strips only for models named Phi-3 (general.name), so spaces next to them "
                    "may tokenize differently", ", ".join(stripped[:5]))
    path = model_dir / "added_tokens.json"
    if path.is_file():
        data = read_json(path)
        if not isinstance(data, dict):
            raise SlimedgeError(f"{path} must map token text to id")
        for content, tid in data.items():
            put(tid, AddedToken(content, looks_special(content)), "added_tokens.json")
    for tid, entry in (tok_config.get("added_tokens_decoder") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise SlimedgeError(f"{model_dir / 'tokenizer_config.json'}: added_tokens_decoder[{tid}] "
                                "lacks a 'content' string")
        put(tid, AddedToken(entry["content"], bool(entry.get("special", False)),
                            bool(entry.get("normalized", False))), "tokenizer_config.json")
    return out


def _token_text(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def special_ids(tok_config: dict, hf_config: dict, token_ids: dict[str, int],
                own_ids: dict[str, int | None], n_vocab: int) -> dict[str, int]:
    """bos/eos/unk/pad ids (absent kinds are left out)."""
    out: dict[str, int] = {}
    for kind in SPECIAL_KINDS:
        text = _token_text(tok_config.get(f"{kind}_token"))
        tid = token_ids.get(text) if text is not None else None
        if text is not None and tid is None:
            log.warning("tokenizer_config.json: %s_token %r is not in the vocabulary", kind, text)
        if tid is None:
            tid = own_ids.get(kind)
        if tid is None:
            cfg = hf_config.get(f"{kind}_token_id")
            if isinstance(cfg, list):
                cfg = cfg[0] if cfg else None
            tid = cfg if isinstance(cfg, int) and not isinstance(cfg, bool) else None
        if tid is not None:
            if not 0 <= tid < n_vocab:
                log.warning("%s token id %d is outside the vocabulary (%d tokens): left out", kind, tid, n_vocab)
                continue
            out[kind] = tid
    return out


# token texts llama.cpp's vocabulary loader (src/llama-vocab.cpp) puts in its end-of-generation set by
# themselves; every other end-of-generation token has to be named as eos, eot or eom in the GGUF
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
})
# of these, the texts it would pick as the end-of-turn token
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
             "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>")


def eos_ids(model_dir: Path, hf_config: dict) -> list[int]:
    """Every end-of-generation id the model states: ``eos_token_id`` of ``generation_config.json`` (what
    ``generate`` stops at), then of ``config.json``; each an int or a list (Llama 3: end-of-text,
    end-of-message, end-of-turn). In order, without repeats."""
    out: list[int] = []
    path = model_dir / "generation_config.json"
    gen = read_json(path) if path.is_file() else {}
    for where, cfg in ((path.name, gen), ("config.json", hf_config)):
        value = cfg.get("eos_token_id") if isinstance(cfg, dict) else None
        for tid in value if isinstance(value, list) else [value]:
            if tid is None:
                continue
            if not isinstance(tid, int) or isinstance(tid, bool):
                log.warning("%s: eos_token_id entry %r is not a token id: ignored", where, tid)
            elif tid not in out:
                out.append(tid)
    return out


def end_of_generation(eos: list[int], tokens: list[str], ids: dict[str, int]) -> dict[str, int]:
    """eot/eom ids that make llama.cpp stop at every id of ``eos`` (``ids``: the resolved bos/eos/...).

    llama.cpp ends generation at its known texts (:data:`EOG_TEXTS`) and at the eos, eot and eom ids, so
    the end-of-turn token (``<|eot_id|>``, ``<|im_end|>``...) becomes eot, ``<|eom_id|>`` eom, and any other
    id the model stops at takes a free one of the two; ids left over are warned about.
    """
    out: dict[str, int] = {}
    for t in eos:
        if not 0 <= t < len(tokens):
            log.warning("eos_token_id %d is outside the vocabulary (%d tokens): left out", t, len(tokens))
    rest = [t for t in eos if 0 <= t < len(tokens) and t != ids.get("eos")]
    unknown = [t for t in rest if tokens[t] not in EOG_TEXTS]
    for kind, texts in (("eom", ("<|eom_id|>",)), ("eot", EOT_TEXTS)):
        if 2 - len(out) > len(unknown):  # a known text takes its slot only where no other id needs it
            tid = next((t for text in texts for t in rest if tokens[t] == text), None)
            if tid is not None:
                out[kind] = tid
    for kind in ("eot", "eom"):
        if unknown and kind not in out:
            out[kind] = unknown.pop(0)
    if unknown:
        log.warning("generation_config.json: llama.cpp will not stop at token(s) %s: GGUF names at most eos, eot "
                    "and eom, and these texts are not ones llama.cpp knows", ", ".join(
                        f"{t} {tokens[t]!r}" for t in unknown))
    return out


def _template_specials(post: dict | None) -> tuple[str | None, str | None]:
    """First and last SpecialToken ids of a TemplateProcessing 'single' template, if any."""
    if not post:
        return None, None
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in procs:
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            first = single[0].get("SpecialToken", {}).get("id") if single else None
            last = single[-1].get("SpecialToken", {}).get("id") if single else None
            return first, last
    return None, None


def add_bos_eos(tok_config: dict, tokenizer_json: dict | None, tokens: list[str],
                ids: dict[str, int], default_bos: bool) -> tuple[bool, bool]:
    """Whether llama.cpp should prepend bos / append eos when asked to add special tokens."""
    first, last = _template_specials((tokenizer_json or {}).get("post_processor"))
    result = []
    for kind, edge, default in (("bos", first, default_bos), ("eos", last, False)):
        flag = tok_config.get(f"add_{kind}_token")
        if not isinstance(flag, bool):
            tid = ids.get(kind)
            flag = (edge == tokens[tid]) if (edge is not None and tid is not None) else (
                False if tokenizer_json and tokenizer_json.get("post_processor") else default)
        if flag and kind not in ids:
            log.warning("add_%s_token is set but the tokenizer has no %s token: not adding it", kind, kind)
            flag = False
        result.append(flag)
    return result[0], result[1]


def chat_template(model_dir: Path, tok_config: dict) -> str | list | None:
    tmpl = tok_config.get("chat_template")
    if tmpl is None:
        jinja = model_dir / "chat_template.jinja"
        js = model_dir / "chat_template.json"
        if jinja.is_file():
            tmpl = jinja.read_text(encoding="utf-8")
        elif js.is_file():
            data = read_json(js)
            tmpl = data.get("chat_template") if isinstance(data, dict) else None
    if tmpl is not None and not isinstance(tmpl, (str, list)):
        log.warning("tokenizer_config.json: chat_template is neither text nor a list: ignored")
        return None
    return tmpl
