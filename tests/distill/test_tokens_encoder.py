"""The token file's batch encoder: ids equal to ``tokenizer(texts)`` whichever way the special tokens are added."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.factory import cached_hf_model

from slimedge.distill import tokens as tokens_mod
from slimedge.distill.data import tokenize

TEXTS = ["def f(x):\n    return x + 1\n", "  leading spaces and\ttabs", "<s> x </s> <bos> <|endoftext|>",
         "emoji 😀 ünïcödé 中文", "a", "x" * 3000]


def test_affixes_of_known_post_processors():
    tpl = {"type": "TemplateProcessing",
           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "</s>", "type_id": 0}}],
           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                              "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}
    assert tokens_mod._affixes(None) == ([], [])
    assert tokens_mod._affixes({"type": "ByteLevel", "trim_offsets": False}) == ([], [])
    assert tokens_mod._affixes(tpl) == ([1], [2])
    assert tokens_mod._affixes({"type": "BertProcessing", "cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}) == (
        [101], [102])
    seq = {"type": "Sequence", "processors": [{"type": "ByteLevel"}, tpl,
                                              {"type": "RobertaProcessing", "cls": ["<c>", 7], "sep": ["<e>", 8]}]}
    assert tokens_mod._affixes(seq) == ([7, 1], [2, 8])
    assert tokens_mod._affixes({"type": "SomethingNew"}) is None
    assert tokens_mod._affixes({"type": "Sequence", "processors": [tpl, {"type": "SomethingNew"}]}) is None
    two = dict(tpl, single=tpl["single"] + [{"Sequence": {"id": "A", "type_id": 1}}])
    assert tokens_mod._affixes(two) is None


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2", "smollm3", "gemma2"])
def test_encoder_ids_equal_tokenizer(arch):
    """BOS from a template (llama, gemma), none (ByteLevel), a Sequence of both (smollm3): the encoder's
    ids, with and without special tokens, are the tokenizer's own."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cached_hf_model(arch=arch, seed=1))
    enc = tokens_mod._Encoder(tok)
    assert enc.fast is not None and enc.affix is not None
    enc.probe(TEXTS)
    assert enc.fast is not None and enc.affix is not None  # the probe kept the fast path
    for special in (True, False):
        want = tok(TEXTS, add_special_tokens=special)["input_ids"]
        got = enc(TEXTS, special)
        assert all(g.dtype == np.uint32 for g in got)
        assert [list(g) for g in got] == [list(w) for w in want]
    if arch in ("llama", "gemma2", "smollm3"):
        assert enc.affix[0] == [tok.bos_token_id]


@pytest.mark.slow
def test_probe_falls_back_when_the_affix_is_wrong(tmp_path):
    """An affix that does not reproduce the special-token encoding is dropped by the probe (same ids)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cached_hf_model(arch="llama", seed=1))
    enc = tokens_mod._Encoder(tok)
    enc.affix = ([5], [6])
    enc.probe(TEXTS)
    assert enc.fast is not None and enc.affix is None
    assert [list(x) for x in enc(TEXTS, True)] == [list(w) for w in tok(TEXTS)["input_ids"]]


@pytest.mark.slow
def test_token_file_with_byte_level_tokenizer(tmp_path):
    """qwen2's ByteLevel tokenizer (no BOS): the token file equals the in-memory tokenization."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cached_hf_model(arch="qwen2", seed=1))
    docs = TEXTS * 20
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    ids, n = tokenize(docs, tok)
    tf = tokens_mod.token_file(str(src), tok, cache_dir=str(tmp_path / "c"))
    assert tf.n_documents == n and np.array_equal(np.asarray(tf.tokens, np.int64), ids)
