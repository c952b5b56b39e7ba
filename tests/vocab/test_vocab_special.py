"""Which tokenizer file wins, and where special ids, add_bos/add_eos and the chat template come from."""

from __future__ import annotations

import json
import shutil

from gguf import TokenType

from tests import tokfactory
from slimedge.vocab import load_vocab


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_tokenizer_model_wins_over_spm_style_tokenizer_json(tmp_path, spm_dir, spm_json_dir):
    """TinyLlama ships both: the SentencePiece file is the source of truth."""
    d = tmp_path / "both"
    shutil.copytree(spm_json_dir, d)
    shutil.copy(spm_dir / "tokenizer.model", d / "tokenizer.model")
    v = load_vocab(d, {}, 1006)
    assert v.source.name == "tokenizer.model" and v.model == "llama"
    assert v.scores[259:262] == load_vocab(spm_dir, {}, 1006).scores[259:262]


def test_byte_level_tokenizer_json_wins_over_tokenizer_model(tmp_path, spm_dir, bpe_dirs):
    d = tmp_path / "both"
    shutil.copytree(bpe_dirs["qwen2"], d)
    shutil.copy(spm_dir / "tokenizer.model", d / "tokenizer.model")
    v = load_vocab(d, {}, 1005)
    assert (v.model, v.pre, v.source.name) == ("gpt2", "qwen2", "tokenizer.json")


def test_add_bos_from_post_processor(tmp_path, bpe_dirs):
    d = tmp_path / "m"
    shutil.copytree(bpe_dirs["llama3"], d)
    _edit_json(d / "tokenizer_config.json", lambda c: (c.pop("add_bos_token"), c.pop("add_eos_token")))
    v = load_vocab(d, {}, 1006)
    assert v.add_bos is True and v.add_eos is False
    _edit_json(d / "tokenizer_config.json", lambda c: c.update(add_bos_token=False))
    assert load_vocab(d, {}, 1006).add_bos is False


def test_special_ids_fall_back_to_config_json(tmp_path, bpe_dirs):
    d = tmp_path / "m"
    shutil.copytree(bpe_dirs["qwen2"], d)
    _edit_json(d / "tokenizer_config.json", lambda c: c.update(eos_token=None, pad_token=None))
    v = load_vocab(d, {"bos_token_id": 1000, "eos_token_id": [1002, 1000], "pad_token_id": None}, 1005)
    # the second eos id (<|endoftext|>) becomes the end-of-turn id, so llama.cpp stops at both
    assert v.special_ids == {"bos": 1000, "eos": 1002, "eot": 1000}
    assert v.add_bos is False  # qwen2 adds nothing, whatever bos is


def test_spm_added_tokens_json_only(tmp_path, spm_dir):
    """added_tokens.json carries no 'special' flag: <|...|> tokens count as control tokens."""
    d = tmp_path / "m"
    shutil.copytree(spm_dir, d)
    _edit_json(d / "tokenizer_config.json", lambda c: c.pop("added_tokens_decoder"))
    v = load_vocab(d, {}, 1010)
    assert v.tokens[1000:1006] == [c for c, _ in tokfactory.PHI3_ADDED]
    assert v.types[1000:1006] == [TokenType.CONTROL] * 6  # <|placeholder1|> looks special too
    assert v.tokens[1006:] == ["[PAD1006]", "[PAD1007]", "[PAD1008]", "[PAD1009]"]
    assert v.types[0] == TokenType.UNKNOWN and v.special_ids["unk"] == 0


def test_chat_template_from_jinja_file(tmp_path, bpe_dirs):
    d = tmp_path / "m"
    shutil.copytree(bpe_dirs["gpt2"], d)
    _edit_json(d / "tokenizer_config.json", lambda c: c.pop("chat_template"))
    assert load_vocab(d, {}, 1001).chat_template is None
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert load_vocab(d, {}, 1001).chat_template == "{{ messages[0]['content'] }}"
