"""Tokenizers trained locally for tests: byte-level BPE (three pre-tokenizer schemes) and SentencePiece.

No network, no hub: the training text is a fixed set of Python standard-library sources read from disk
plus a fixed multilingual paragraph (accents, Cyrillic, Greek, Arabic, CJK, emoji) so merges exist for
multi-byte characters. Training is single-threaded and deterministic and takes well under 2 s.

- ``train_bpe(dir, scheme="llama3"|"gpt2"|"qwen2"|..., vocab_size=1000)`` (all in ``SCHEMES``) writes ``tokenizer.json``,
  ``tokenizer_config.json`` (with a chat template) and ``special_tokens_map.json``. The scheme fixes the
  pre-tokenizer split regex, normalizer, special tokens (appended after the trained vocabulary, i.e.
  beyond the base vocabulary, as in the real models), bos/eos/pad and add_bos.
- ``train_spm(dir, vocab_size=1000, added_tokens=PHI3_ADDED)`` writes a llama-style ``tokenizer.model``
  (BPE, byte_fallback, split digits, dummy prefix, identity normalization; <unk>=0 <s>=1 </s>=2) and
  ``tokenizer_config.json`` / ``special_tokens_map.json``; ``added_tokens`` (content, special) are given
  ids after the SentencePiece vocabulary, like Phi-3's ``<|user|>``/``<|end|>``. ``corpus`` (lines) replaces
  the standard training text, e.g. for a real-size vocabulary (the benchmarks' 32000-token TinyLlama shape).

- ``train_gemma_spm(dir, vocab_size=1000)`` writes a Gemma-style ``tokenizer.model``: no dummy prefix, byte
  fallback, split digits, <pad>=0 <eos>=1 <bos>=2 <unk>=3, then ``GEMMA_SYMBOLS`` (``<start_of_turn>``,
  ``<end_of_turn>``, ...) as user-defined pieces inside the model, marked special in ``tokenizer_config.json``
  (``GemmaTokenizer``, add_bos, Gemma's turn template).

``AutoTokenizer.from_pretrained(dir)`` loads either folder.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Standard-library modules whose sources form the training text (present on every CPython install).
_CORPUS_MODULES = ("textwrap", "string", "heapq", "fractions", "shlex", "glob", "fnmatch", "calendar")

_MULTILINGUAL = """\
Ça coûte 12,50 € — très cher! Größe, Straße, naïve café, résumé, jalapeño, smörgåsbord.
Привет, мир! Как дела? Это тестовая строка на русском языке.
Γειά σου Κόσμε! Καλημέρα σε όλους.
مرحبا بالعالم، هذا نص تجريبي.
你好，世界！这是一个用于测试的中文句子。我们喜欢学习语言模型。
こんにちは世界。日本語のテキストです。東京は大きな都市です。
안녕하세요 세계! 한국어 문장입니다.
Emoji: 😀 😃 😄 🚀 🎉 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧 — done.
Numbers: 0 1 12 123 1234 12345 3.14159 2026-11-25 1,000,000 0x1F.
Whitespace:\tTabs\t\tand  double  spaces,   triple,    quad.
"""

PHI3_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|assistant|>", True),
    ("<|system|>", True),
    ("<|end|>", True),
    ("<|user|>", True),
    ("<|placeholder1|>", False),
)

# --- pre-tokenizer split regexes as published in the real models' tokenizer.json ---------------------
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
    "<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GPT2_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_DEEPSEEK_R1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '<｜User｜>' + "
    "message['content'] }}{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + "
    "eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}"
)
_PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content']"
    " + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BpeScheme:
    """What distinguishes one family of byte-level BPE tokenizers."""

    split_regex: str | None  # explicit Split regex; None = ByteLevel's built-in GPT-2 regex
    specials: tuple[str, ...]  # special tokens appended after the trained vocabulary
    bos: str | None
    eos: str
    pad: str | None
    add_bos: bool
    chat_template: str
    nfc: bool = False  # NFC normalizer (Qwen2)
    digits: bool = False  # Digits(individual_digits) step before the split (StarCoder, SmolLM)
    ignore_merges: bool = False  # whole-word lookup before merging (Llama 3)
    user_tokens: tuple[str, ...] = field(default=())  # non-special added tokens


SCHEMES: dict[str, BpeScheme] = {
    "llama3": BpeScheme(
        split_regex=LLAMA3_REGEX,
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, add_bos=True,
        chat_template=_LLAMA3_TEMPLATE, ignore_merges=True,
    ),
    "gpt2": BpeScheme(
        split_regex=None, specials=("<|endoftext|>",), bos="<|endoftext|>", eos="<|endoftext|>",
        pad=None, add_bos=False, chat_template=_GPT2_TEMPLATE,
    ),
    "qwen2": BpeScheme(
        split_regex=QWEN2_REGEX, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
        chat_template=_CHATML_TEMPLATE, nfc=True, user_tokens=("<tool_call>", "</tool_call>"),
    ),
    # Llama 3.1/3.2: Llama 3's split with the end-of-message token (generation_config lists 3 eos ids)
    "llama32": BpeScheme(
        split_regex=LLAMA3_REGEX,
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, add_bos=True,
        chat_template=_LLAMA3_TEMPLATE, ignore_merges=True,
    ),
    # DeepSeek-R1-Distill-Qwen: Qwen2's split and vocabulary kind, DeepSeek's bos/eos (bos added), <think> tags
    "deepseek-r1-qwen": BpeScheme(
        split_regex=QWEN2_REGEX,
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<｜begin▁of▁sentence｜>",
                  "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>",
        pad="<｜end▁of▁sentence｜>", add_bos=True, chat_template=_DEEPSEEK_R1_TEMPLATE,
        user_tokens=("<think>", "</think>"),
    ),
    # Further schemes llama.cpp implements (one per pre-tokenizer name slimedge recognizes).
    "dbrx": BpeScheme(  # Llama 3's regex without ignore_merges
        split_regex=LLAMA3_REGEX, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos="<|endoftext|>", eos="<|endoftext|>", pad=None, add_bos=False, chat_template=_CHATML_TEMPLATE,
    ),
    "qwen35": BpeScheme(
        split_regex=QWEN35_REGEX, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False, chat_template=_CHATML_TEMPLATE,
        nfc=True,
    ),
    "starcoder": BpeScheme(
        split_regex=None, digits=True, specials=("<|endoftext|>", "<fim_prefix>", "<fim_suffix>"),
        bos="<|endoftext|>", eos="<|endoftext|>", pad=None, add_bos=False, chat_template=_GPT2_TEMPLATE,
    ),
    "gpt4o": BpeScheme(
        split_regex=GPT4O_REGEX, specials=("<|begin_of_text|>", "<|eot|>", "<|header_start|>", "<|header_end|>"),
        bos="<|begin_of_text|>", eos="<|eot|>", pad=None, add_bos=True, chat_template=_GPT2_TEMPLATE,
    ),
    # gpt-oss's o200k_harmony: GPT-4o's split, the harmony format's specials; <|return|> ends an answer
    "harmony": BpeScheme(
        split_regex=GPT4O_REGEX, specials=("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>",
                                           "<|channel|>", "<|start|>", "<|end|>", "<|message|>", "<|call|>"),
        bos="<|startoftext|>", eos="<|return|>", pad="<|endoftext|>", add_bos=False,
        chat_template=_GPT2_TEMPLATE,
    ),
    # SmolVLM / Idefics3: SmolLM's split (GPT-2's, digits apart), ChatML, the image-prompt tokens libmtmd looks up
    "smolvlm": BpeScheme(
        split_regex=None, digits=True,
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                  "<global-img>", "<row_1_col_1>", "<end_of_utterance>"),
        bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>", add_bos=False,
        chat_template=_CHATML_TEMPLATE,
    ),
    "tekken": BpeScheme(
        split_regex=TEKKEN_REGEX, specials=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>", eos="</s>", pad=None, add_bos=True, chat_template=_GPT2_TEMPLATE, ignore_merges=True,
    ),
}


@functools.lru_cache(maxsize=1)
def corpus_lines() -> tuple[str, ...]:
    """The fixed training text, one line per item (~135 kB)."""
    lines: list[str] = []
    for name in _CORPUS_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        lines.extend(Path(spec.origin).read_text(encoding="utf-8").splitlines())
    lines.extend(_MULTILINGUAL.splitlines() * 8)
    return tuple(line for line in lines if line.strip())


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added_token_entry(content: str, special: bool) -> dict:
    return {"content": content, "lstrip": False, "normalized": not special, "rstrip": False,
            "single_word": False, "special": special}


def train_bpe(dir: Path, scheme: str = "llama3", vocab_size: int = 1000,
              corpus: Iterable[str] | None = None) -> Path:
    """Train a byte-level BPE of the given scheme into ``dir``; returns ``dir``.

    ``vocab_size`` counts the trained tokens (256 byte symbols + merges); special and user tokens are
    appended after them. ``corpus`` replaces the standard training text (each line is used twice so
    that every pre-token can merge into one token when ``vocab_size`` is large enough).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers

    sch = SCHEMES[scheme]
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    if sch.nfc:
        tok.normalizer = normalizers.NFC()
    steps = [pre_tokenizers.Digits(individual_digits=True)] if sch.digits else []
    if sch.split_regex is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps += [pre_tokenizers.Split(Regex(sch.split_regex), behavior="isolated", invert=False),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]
    tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    lines = corpus_lines() if corpus is None else [*corpus, *corpus]
    tok.train_from_iterator(lines, trainer=trainer)

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sch.specials])
    if sch.user_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=True) for t in sch.user_tokens])
    if sch.bos is not None and sch.add_bos:
        bos_id = tok.token_to_id(sch.bos)
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{sch.bos}:0 $A:0", pair=f"{sch.bos}:0 $A:0 {sch.bos}:1 $B:1",
                special_tokens=[(sch.bos, bos_id)],
            ),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = sch.ignore_merges
    _write_json(dir / "tokenizer.json", data)

    added = {str(tok.token_to_id(t)): _added_token_entry(t, True) for t in sch.specials}
    added.update({str(tok.token_to_id(t)): _added_token_entry(t, False) for t in sch.user_tokens})
    special_map = {"bos_token": sch.bos, "eos_token": sch.eos}
    if sch.pad is not None:
        special_map["pad_token"] = sch.pad
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": sch.add_bos,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": sch.bos,
        "eos_token": sch.eos,
        "pad_token": sch.pad,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": sch.chat_template,
    }
    _write_json(dir / "tokenizer_config.json", config)
    _write_json(dir / "special_tokens_map.json", {k: v for k, v in special_map.items() if v is not None})
    return dir


def train_spm(dir: Path, vocab_size: int = 1000,
              added_tokens: tuple[tuple[str, bool], ...] = PHI3_ADDED,
              corpus: Iterable[str] | None = None) -> Path:
    """Train a llama-style SentencePiece BPE model into ``dir``; returns ``dir``.

    ``added_tokens`` are (content, special) pairs given ids ``vocab_size, vocab_size + 1, ...`` in
    ``tokenizer_config.json`` and ``added_tokens.json`` (SentencePiece itself knows nothing of them).
    ``corpus`` (one sentence per item, used once each) replaces the standard training text; it must be
    large enough for ``vocab_size`` pieces (SentencePiece refuses a vocabulary the text cannot fill).
    """
    import io

    import sentencepiece as spm

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines() if corpus is None else corpus), model_writer=buf,
        model_type="bpe", vocab_size=vocab_size, character_coverage=0.9995,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", max_sentencepiece_length=16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
        minloglevel=2,
    )
    (dir / "tokenizer.model").write_bytes(buf.getvalue())

    added_ids = {content: vocab_size + i for i, (content, _) in enumerate(added_tokens)}
    added = {str(i): _added_token_entry(t, True) for i, t in enumerate(("<unk>", "<s>", "</s>"))}
    for content, special in added_tokens:
        added[str(added_ids[content])] = _added_token_entry(content, special)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "legacy": True,
        "sp_model_kwargs": {},
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": _PHI3_TEMPLATE,
    }
    _write_json(dir / "tokenizer_config.json", config)
    if added_ids:
        _write_json(dir / "added_tokens.json", added_ids)
    _write_json(dir / "special_tokens_map.json",
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    return dir


GEMMA_SYMBOLS = ("<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>")
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>") + GEMMA_SYMBOLS  # ids 0, 1, 2, ... in this order
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def train_gemma_spm(dir: Path, vocab_size: int = 1000) -> Path:
    """Train a Gemma-style SentencePiece BPE model into ``dir`` (see the module docstring); returns ``dir``."""
    import io

    import sentencepiece as spm

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=buf,
        model_type="bpe", vocab_size=vocab_size, character_coverage=0.9995,
        byte_fallback=True, split_digits=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", max_sentencepiece_length=16,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=list(GEMMA_SYMBOLS),
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2,
    )
    (dir / "tokenizer.model").write_bytes(buf.getvalue())
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added_token_entry(t, True) for i, t in enumerate(GEMMA_SPECIALS)},
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": _GEMMA_TEMPLATE,
    }
    _write_json(dir / "tokenizer_config.json", config)
    _write_json(dir / "special_tokens_map.json",
                {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})
    return dir


def train_wordpiece(dir: Path, vocab_size: int = 1000, lowercase: bool = True) -> Path:
    """Train a BERT-style WordPiece tokenizer into ``dir`` (BertNormalizer, BertPreTokenizer, [CLS] $A [SEP]);
    [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 as trained; writes ``tokenizer.json`` and ``tokenizer_config.json``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(dir / "tokenizer.json"))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "model_max_length": 512,
              "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
              "mask_token": "[MASK]", "clean_up_tokenization_spaces": True}
    _write_json(dir / "tokenizer_config.json", config)
    return dir


def train_xlmr_unigram(dir: Path, vocab_size: int = 1000) -> int:
    """Train an XLM-RoBERTa-style tokenizer into ``dir``: a SentencePiece unigram (nmt_nfkc normalization) laid
    out in fairseq order (<s>=0 <pad>=1 </s>=2 <unk>=3, pieces shifted by one, <mask> last), written as the
    ``tokenizer.json`` transformers saves for XLM-R (Precompiled + collapse-spaces normalizer, Metaspace,
    ``<s> $A </s>``); returns the number of ids."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus_lines()), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", normalization_rule_name="nmt_nfkc", minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    pieces = [(p.piece, p.score) for p in proto.pieces]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces[3:] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<s>", "<pad>", "</s>", "<unk>")])
    tok.add_special_tokens([AddedToken("<mask>", special=True, normalized=False, lstrip=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0 </s>:0", pair="<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(dir / "tokenizer.json"))
    _write_json(dir / "tokenizer_config.json", {
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 128, "bos_token": "<s>", "eos_token": "</s>",
        "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"})
    return len(vocab)
