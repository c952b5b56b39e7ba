"""Bad tokenizer folders give one-line SlimedgeErrors naming the file and what to do."""

from __future__ import annotations

import json
import shutil

import pytest

import tokfactory
from slimedge.errors import SlimedgeError
from slimedge.vocab import load_vocab


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_no_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SlimedgeError, match="no tokenizer.model or tokenizer.json in .*copy the tokenizer "
                                            "files next to config.json"):
        load_vocab(tmp_path, {}, 100)


def test_corrupt_tokenizer_json(tmp_path, bpe_dirs):
    d = _copy(bpe_dirs["gpt2"], tmp_path / "m")
    text = (d / "tokenizer.json").read_text()
    (d / "tokenizer.json").write_text(text[: len(text) // 2])
    with pytest.raises(SlimedgeError, match=r"tokenizer.json is not valid JSON \(line \d+"):
        load_vocab(d, {}, 1001)


def test_corrupt_tokenizer_model(tmp_path, spm_dir):
    d = _copy(spm_dir, tmp_path / "m")
    (d / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff garbage" * 10)
    with pytest.raises(SlimedgeError, match="tokenizer.model is not a SentencePiece model"):
        load_vocab(d, {}, 1006)


def test_empty_tokenizer_model(tmp_path, spm_dir):
    d = _copy(spm_dir, tmp_path / "m")
    (d / "tokenizer.model").write_bytes(b"")
    with pytest.raises(SlimedgeError, match="tokenizer.model is not a SentencePiece model"):
        load_vocab(d, {}, 1006)


def test_corrupt_tokenizer_config(tmp_path, spm_dir):
    d = _copy(spm_dir, tmp_path / "m")
    (d / "tokenizer_config.json").write_text("{ not json")
    with pytest.raises(SlimedgeError, match="tokenizer_config.json is not valid JSON"):
        load_vocab(d, {}, 1006)


def test_unknown_split_regex_names_file_and_regex(tmp_path):
    d = tokfactory.train_bpe(tmp_path / "m", "qwen2", vocab_size=400)
    data = json.loads((d / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|[^\w\s]+|\s+"
    (d / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(SlimedgeError) as e:
        load_vocab(d, {}, 500)
    msg = str(e.value)
    assert "tokenizer.json" in msg and r"'\\w+|[^\\w\\s]+|\\s+'" in msg and "llama-bpe" in msg
    assert "\n" not in msg


def test_tokenizer_larger_than_embedding(tmp_path, bpe_dirs):
    with pytest.raises(SlimedgeError, match="has 1000 tokens but the model's embedding has only 900 rows"):
        load_vocab(bpe_dirs["gpt2"], {}, 900)


def test_added_tokens_past_embedding_are_dropped(bpe_dirs, caplog):
    v = load_vocab(bpe_dirs["qwen2"], {}, 1002)  # 1000 trained + 2 of the 5 added tokens
    assert v.tokens[1000:] == ["<|endoftext|>", "<|im_start|>"]
    assert "past the model's 1002 embedding rows" in caplog.text
    assert "eos" not in v.special_ids  # <|im_end|> (1002) did not fit


def test_duplicate_token_text(tmp_path, bpe_dirs):
    d = _copy(bpe_dirs["gpt2"], tmp_path / "m")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"]["1001"] = {"content": "<|endoftext|>", "special": True}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlimedgeError, match="tokens 1000 and 1001 are both '<|endoftext|>'"):
        load_vocab(d, {}, 1002)


def test_wordpiece_without_tokenizer_model(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["hello world", "some more words"],
                            trainers.WordPieceTrainer(vocab_size=60, special_tokens=["[UNK]"],
                                                      show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(SlimedgeError, match="is a WordPiece tokenizer that is neither byte-level nor SentencePiece-style"):
        load_vocab(tmp_path, {}, 100)


def test_add_prefix_space_refused(tmp_path, bpe_dirs):
    d = _copy(bpe_dirs["gpt2"], tmp_path / "m")
    data = json.loads((d / "tokenizer.json").read_text())
    data["pre_tokenizer"]["add_prefix_space"] = True
    (d / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(SlimedgeError, match="add_prefix_space=true"):
        load_vocab(d, {}, 1001)
