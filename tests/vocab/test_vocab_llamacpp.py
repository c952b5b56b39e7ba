"""llama.cpp loads our vocabularies and tokenizes exactly like the source tokenizer.

BPE: `tokenizers` on tokenizer.json is the reference (``encode_special_tokens`` toggled to mirror
llama.cpp's ``special`` flag). SentencePiece: the `sentencepiece` library on tokenizer.model, with the
text split around added tokens first (SentencePiece knows nothing of them), as llama.cpp does.
"""

from __future__ import annotations

import itertools
import json
import unicodedata

import jinja2
import pytest
from gguf import GGUFReader, TokenType

from tests import tokfactory
from slimedge.vocab import load_vocab, pretok
from tests.vocab.vocab_helpers import SAMPLES, load_llama, specials_regex, write_vocab_gguf

EXPECTED_PRE = {"llama3": "llama-bpe", "gpt2": "gpt-2", "qwen2": "qwen2", "dbrx": "dbrx",
                "qwen35": "qwen35", "starcoder": "starcoder", "gpt4o": "gpt-4o", "tekken": "tekken",
                # family schemes that reuse a split: Llama 3.2 is Llama 3's, DeepSeek-R1-Distill-Qwen Qwen2's
                "llama32": "llama-bpe", "deepseek-r1-qwen": "qwen2", "smolvlm": "starcoder",
                # gpt-oss's o200k_harmony keeps GPT-4o's split (llama.cpp's converter writes gpt-4o for it too)
                "harmony": "gpt-4o"}
PAD = 24  # extra embedding rows past the tokenizer, as Phi-3 has


def _chat(template: str, bos: str | None, eos: str | None) -> str:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi there!  How are\tyou? 你好 🚀"},
                {"role": "assistant", "content": "Fine, 123456."}]
    return jinja2.Template(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos or "", eos_token=eos or "")


def _special_samples(specials: list[str], user: list[str]) -> list[str]:
    s, u = specials, user or ["x"]
    return [
        f"{s[0]}Hello{s[-1]}",
        f"{s[-1]} {s[0]}  spaced {s[-1]}\n{s[0]}\n",
        f"plain {u[0]}inside{u[-1]} and {s[0]}{s[-1]}{u[0]} tail",
        f"{s[0]}{s[0]} double",
        f"almost {s[0][:-1]} special",
    ]


@pytest.mark.parametrize("scheme", list(tokfactory.SCHEMES))
def test_bpe_matches_tokenizers(scheme, bpe_dirs, vocab_gguf):
    from tokenizers import Tokenizer

    d = bpe_dirs[scheme]
    sch = tokfactory.SCHEMES[scheme]
    ref = Tokenizer.from_file(str(d / "tokenizer.json"))
    n_tok = ref.get_vocab_size(with_added_tokens=True)
    vocab, llm = vocab_gguf(d, n_tok + PAD)
    assert vocab.pre == EXPECTED_PRE[scheme]
    assert llm.n_vocab() == n_tok + PAD

    chat = _chat(sch.chat_template, sch.bos, sch.eos)
    texts = SAMPLES + _special_samples(list(sch.specials), list(sch.user_tokens)) + [chat]
    for text in texts:
        for special in (True, False):
            ref.encode_special_tokens = not special
            want = ref.encode(text, add_special_tokens=False).ids
            got = llm.tokenize(text, add_special=False, special=special)
            assert got == want, (scheme, special, text)
            assert llm.pieces(got) == text.encode(), (scheme, special, text)
        ref.encode_special_tokens = False
        # add_special: bos (and eos) exactly where the source's post-processor puts them
        want = ref.encode(text, add_special_tokens=True).ids
        assert llm.tokenize(text, add_special=True, special=True) == want, (scheme, text)


def _has_marks(text: str) -> bool:
    """A combining mark on a letter (emoji variation selectors are marks too, but harmless)."""
    cat = [unicodedata.category(c)[0] for c in text]
    return any(c == "M" and p in "LM" for p, c in zip(cat, cat[1:]))


def _split_samples(pre: str) -> list[str]:
    """SAMPLES, less those hitting llama.cpp's documented \\p{M} gap for this pre-tokenizer."""
    row = next(k for k in pretok.KNOWN if k.name == pre)
    return [t for t in SAMPLES if row.marks_ok or not _has_marks(t)]


@pytest.mark.parametrize("scheme", list(tokfactory.SCHEMES))
def test_bpe_split_matches_exactly(scheme, saturated_dirs, vocab_gguf):
    """With every sample pre-token a single token, equal ids mean llama.cpp split exactly like tokenizers."""
    from tokenizers import Tokenizer

    d = saturated_dirs[scheme]
    ref = Tokenizer.from_file(str(d / "tokenizer.json"))
    vocab, llm = vocab_gguf(d, ref.get_vocab_size(with_added_tokens=True))
    samples = _split_samples(vocab.pre)
    assert len(samples) >= len(SAMPLES) - 1
    for text in samples:
        want = ref.encode(text, add_special_tokens=False).ids
        pieces = [p for p, _ in ref.pre_tokenizer.pre_tokenize_str(ref.normalizer.normalize_str(text)
                                                                    if ref.normalizer else text)]
        assert len(want) == len(pieces), "saturated vocabulary: one token per pre-token"
        assert llm.tokenize(text, special=False) == want, (scheme, text)


def test_samples_tell_pre_tokenizers_apart(saturated_dirs, tmp_path):
    """The samples are strong enough that any wrong pre-tokenizer name changes some tokenization."""
    from tokenizers import Tokenizer

    rows = {k.name: k for k in pretok.KNOWN}
    wrong: dict[tuple[str, str], int] = {}
    for scheme, d in saturated_dirs.items():
        ref = Tokenizer.from_file(str(d / "tokenizer.json"))
        vocab = load_vocab(d, {}, ref.get_vocab_size(with_added_tokens=True))
        for name in rows:
            vocab.pre = name
            llm = load_llama(write_vocab_gguf(vocab, tmp_path / f"{scheme}-{name}.gguf"))
            wrong[vocab.source.parent.name, name] = sum(
                llm.tokenize(t, special=False) != ref.encode(t, add_special_tokens=False).ids
                for t in _split_samples(name))
            llm.close()
    right = {s: EXPECTED_PRE[s] for s in saturated_dirs}
    for a, b in itertools.combinations(saturated_dirs, 2):
        if rows[right[a]].regexes != rows[right[b]].regexes:
            assert wrong[a, right[b]] + wrong[b, right[a]] > 0, (a, b)
    assert all(wrong[s, right[s]] == 0 for s in saturated_dirs)


@pytest.mark.parametrize("scheme", ["llama3", "qwen2", "gpt2"])
def test_bpe_metadata(scheme, bpe_dirs, vocab_gguf):
    d = bpe_dirs[scheme]
    sch = tokfactory.SCHEMES[scheme]
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(d / "tokenizer.json"))
    n_tok = ref.get_vocab_size(with_added_tokens=True)
    vocab, llm = vocab_gguf(d, n_tok)
    assert llm.meta("tokenizer.ggml.model") == "gpt2"
    assert llm.meta("tokenizer.chat_template") == sch.chat_template
    assert vocab.special_ids["eos"] == ref.token_to_id(sch.eos) == llm.eos()
    if sch.bos is not None:
        assert vocab.special_ids["bos"] == ref.token_to_id(sch.bos) == llm.bos()
    else:
        assert "bos" not in vocab.special_ids
    assert vocab.add_bos == sch.add_bos and vocab.add_eos is False
    for t in sch.specials:
        assert vocab.types[ref.token_to_id(t)] == TokenType.CONTROL
    for t in sch.user_tokens:
        assert vocab.types[ref.token_to_id(t)] == TokenType.USER_DEFINED
    merges = json.loads((d / "tokenizer.json").read_text())["model"]["merges"]
    assert vocab.merges == [" ".join(m) if isinstance(m, list) else m for m in merges]


def _spm_reference(sp, text: str, table: dict[str, int]) -> list[int]:
    if not table:
        return sp.encode(text)
    ids: list[int] = []
    for i, part in enumerate(specials_regex(table).split(text)):
        if i % 2:
            ids.append(table[part])
        elif part:
            ids += sp.encode(part)
    return ids


@pytest.mark.parametrize("source", ["tokenizer.model", "tokenizer.json"])
def test_spm_matches_sentencepiece(source, spm_dir, spm_json_dir, vocab_gguf):
    """Both the SentencePiece file and transformers' tokenizer.json re-save of it (scores from merges)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    base = sp.vocab_size()
    added = {c: base + i for i, (c, _) in enumerate(tokfactory.PHI3_ADDED)}
    user = {c: added[c] for c, special in tokfactory.PHI3_ADDED if not special}
    control = {c: added[c] for c, special in tokfactory.PHI3_ADDED if special}
    control.update({"<unk>": 0, "<s>": 1, "</s>": 2})
    n_vocab = base + len(added) + PAD
    vocab, llm = vocab_gguf(spm_dir if source == "tokenizer.model" else spm_json_dir, n_vocab)
    assert vocab.model == "llama" and vocab.pre == "default" and vocab.source.name == source
    assert llm.n_vocab() == n_vocab

    chat = _chat(tokfactory._PHI3_TEMPLATE, "<s>", "</s>")
    specials = ["<|user|>", "<|end|>", "<s>", "</s>"]
    texts = SAMPLES + _special_samples(specials, list(user)) + [chat]
    for text in texts:
        for special in (True, False):
            table = {**user, **control} if special else user
            want = _spm_reference(sp, text, table)
            got = llm.tokenize(text, add_special=False, special=special)
            assert got == want, (special, text)
        ids = sp.encode(text)
        assert llm.detokenize(ids) == sp.decode(ids).encode(), text
        assert llm.tokenize(text, add_special=True, special=False) == [1] + _spm_reference(sp, text, user)


@pytest.mark.parametrize("source", ["tokenizer.model", "tokenizer.json"])
def test_spm_metadata(source, spm_dir, spm_json_dir, vocab_gguf):
    base = 1000
    n_vocab = base + len(tokfactory.PHI3_ADDED) + PAD
    vocab, llm = vocab_gguf(spm_dir if source == "tokenizer.model" else spm_json_dir, n_vocab)
    assert llm.meta("tokenizer.ggml.model") == "llama"
    assert llm.meta("tokenizer.chat_template") == tokfactory._PHI3_TEMPLATE
    assert (llm.bos(), llm.eos()) == (1, 2)
    assert vocab.special_ids == {"bos": 1, "eos": 2, "unk": 0}
    assert vocab.add_bos is True and vocab.add_eos is False and vocab.add_space_prefix is True
    assert vocab.types[:3] == [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    assert vocab.types[3:259] == [TokenType.BYTE] * 256 and vocab.tokens[3 + 0x41] == "<0x41>"
    assert vocab.tokens[base + 4] == "<|user|>" and vocab.types[base + 4] == TokenType.CONTROL
    assert vocab.types[base + 5] == TokenType.USER_DEFINED


def test_padded_vocab_in_file(spm_dir, bpe_dirs, tmp_path):
    """Rows past the tokenizer are [PAD{id}] tokens of type UNUSED, in the file llama.cpp reads."""
    for d, n_tok in ((spm_dir, 1006), (bpe_dirs["qwen2"], 1005)):
        vocab = load_vocab(d, {}, n_tok + 58)
        path = write_vocab_gguf(vocab, tmp_path / f"{d.name}.gguf")
        reader = GGUFReader(path)
        f_tokens = reader.fields["tokenizer.ggml.tokens"]
        f_types = reader.fields["tokenizer.ggml.token_type"]
        texts = [bytes(f_tokens.parts[i]).decode() for i in f_tokens.data]
        types = [int(f_types.parts[i][0]) for i in f_types.data]
        assert len(texts) == n_tok + 58
        assert texts[n_tok:] == [f"[PAD{i}]" for i in range(n_tok, n_tok + 58)]
        assert set(types[n_tok:]) == {TokenType.UNUSED}
        assert TokenType.UNUSED not in types[:n_tok]
