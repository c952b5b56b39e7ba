"""Bad tokenizer folders give one-line SlimedgeErrors naming the file and what to do."""

from __future__ import annotations

import json
import shutil

import pytest

from tests import tokfactory
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
    # WordPiece converts as llama.cpp's "bert" vocabulary (slimedge.vocab.wordpiece), which needs [CLS]/[SEP]
    with pytest.raises(SlimedgeError, match=r"no \[CLS\]/\[SEP\] framing found"):
        load_vocab(tmp_path, {}, 100)


def test_add_prefix_space_refused(tmp_path, bpe_dirs):
    d = _copy(bpe_dirs["gpt2"], tmp_path / "m")
    data = json.loads((d / "tokenizer.json").read_text())
    data["pre_tokenizer"]["add_prefix_space"] = True
    (d / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(SlimedgeError, match="add_prefix_space=true"):
        load_vocab(d, {}, 1001)


def test_truncated_tokenizer_model_refused_by_sentencepiece(tmp_path, spm_dir):
    """The first 300 bytes of a real model still parse as 18 pieces; sentencepiece refuses them, so do we."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    d = _copy(spm_dir, tmp_path / "m")
    head = (spm_dir / "tokenizer.model").read_bytes()[:300]
    (d / "tokenizer.model").write_bytes(head)
    proto = pb.ModelProto()
    proto.ParseFromString(head)
    assert 0 < len(proto.pieces) < 100  # what got through before: a few real tokens, the rest padding
    with pytest.raises(SlimedgeError) as e:
        load_vocab(d, {}, 1006)
    msg = str(e.value)
    assert f"{d / 'tokenizer.model'} is a damaged or truncated SentencePiece model" in msg
    assert "sentencepiece cannot load it" in msg and "\n" not in msg


def test_tokenizer_covering_too_few_rows_refused(tmp_path, spm_dir, bpe_dirs):
    with pytest.raises(SlimedgeError) as e:  # 1006 ids (1000 pieces + 6 added) over 4096 rows
        load_vocab(spm_dir, {}, 4096)
    msg = str(e.value)
    assert "tokenizer.model gives tokens to only 1006 of the model's 4096 embedding rows" in msg
    assert "at least 90%" in msg and "\n" not in msg
    with pytest.raises(SlimedgeError, match=r"tokenizer.json gives tokens to only 1001 of the model's 2000 "
                                            r"embedding rows"):
        load_vocab(bpe_dirs["gpt2"], {}, 2000)


def test_padding_like_phi3_stays_allowed(spm_dir, bpe_dirs):
    v = load_vocab(spm_dir, {}, 1006 + 58)  # Phi-3 pads 32011 ids to 32064 rows
    assert v.n_vocab == 1064 and v.tokens[-1] == "[PAD1063]"
    v = load_vocab(spm_dir, {}, 1117)  # just above 90% covered
    assert v.n_vocab == 1117
    with pytest.raises(SlimedgeError, match="only 1006 of the model's 1118"):  # just below
        load_vocab(spm_dir, {}, 1118)
    assert load_vocab(bpe_dirs["gpt2"], {}, 1024).n_vocab == 1024
