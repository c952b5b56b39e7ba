"""Data reading (text, folder, JSONL), tokenization with EOS, packing, held-out split, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimedge.distill.data import load_texts, pack, split, tokenize
from slimedge.distill.tokens import prepare
from slimedge.errors import SlimedgeError


def test_pack_and_split():
    ids = np.arange(23)
    b = pack(ids, 5)
    assert b.shape == (4, 5) and b[1, 0] == 5 and b[-1, -1] == 19
    tr, ev = split(pack(np.arange(100), 5), 0.1)
    assert tr.shape == (18, 5) and ev.shape == (2, 5) and ev[0, 0] == 90
    tr, ev = split(pack(np.arange(10), 5), 0.1)
    assert len(tr) == 1 and len(ev) == 1


def test_sources_agree(tmp_path, tok):
    docs = ["The first document talks about boats.", "A second one, about trains and rails."]
    (tmp_path / "a.txt").write_text(docs[0])
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "1.txt").write_text(docs[0])
    (folder / "sub" / "2.md").write_text(docs[1])
    (folder / ".hidden.txt").write_text("ignored")
    (folder / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(docs)) + "\n\n")
    assert load_texts(str(tmp_path / "a.txt")) == docs[:1]
    assert load_texts(str(folder)) == docs
    assert load_texts(str(tmp_path / "d.jsonl")) == docs
    ids, n = tokenize(docs, tok)
    assert n == 2
    eos = tok.eos_token_id
    assert list(ids).count(eos) == 2 and ids[-1] == eos
    first = tok(docs[0])["input_ids"]
    assert list(ids[: len(first)]) == first


def test_prepare_blocks_and_fingerprint(tmp_path, tok):
    (tmp_path / "c.txt").write_text("word " * 400)
    b = prepare(str(tmp_path / "c.txt"), tok, 32, 0.25)
    assert b.train.shape[1] == 32 and len(b.eval) >= 1
    assert len(b.train) + len(b.eval) == b.n_tokens // 32
    assert b.fingerprint() == prepare(str(tmp_path / "c.txt"), tok, 32, 0.25).fingerprint()
    assert b.fingerprint() != prepare(str(tmp_path / "c.txt"), tok, 16, 0.25).fingerprint()


def test_bad_data(tmp_path, tok):
    with pytest.raises(SlimedgeError, match="data not found"):
        load_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(SlimedgeError, match="contains no text"):
        load_texts(str(tmp_path / "empty.txt"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(SlimedgeError, match="no data files"):
        load_texts(str(tmp_path / "emptydir"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(SlimedgeError, match=r"bad.jsonl:2 has no string \"text\""):
        load_texts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"\n')
    with pytest.raises(SlimedgeError, match="broken.jsonl:1 is not valid JSON"):
        load_texts(str(tmp_path / "broken.jsonl"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(SlimedgeError, match="not UTF-8"):
        load_texts(str(tmp_path / "bin.txt"))
    (tmp_path / "short.txt").write_text("just a few words")
    with pytest.raises(SlimedgeError, match="too short"):
        prepare(str(tmp_path / "short.txt"), tok, 64)


def test_blocks_can_start_with_bos_in_memory_and_from_the_file(tmp_path, tok):
    """``with_first``: every read (rows, a row, columns, the whole array, chunks) sees the block's first token
    replaced, the rest as the token file has them; ``None`` reads them unchanged."""
    from slimedge.distill.data import BlockView

    (tmp_path / "c.txt").write_text("word another " * 300)
    b = prepare(str(tmp_path / "c.txt"), tok, 32, 0.25)
    plain = np.asarray(b.train)
    mem = BlockView(np.asarray(b.train.tokens), b.train.start, b.train.n, 32)
    for view in (b.train, mem):
        first = view.with_first(7)
        want = plain.copy()
        want[:, 0] = 7
        assert (np.asarray(first) == want).all() and (first[:] == want).all()
        assert (first[[2, 0]] == want[[2, 0]]).all() and (first[1] == want[1]).all()
        assert (first[1:3, 1:5] == want[1:3, 1:5]).all() and (first.columns(5)[:] == want[:, :5]).all()
        assert (np.concatenate(list(first.chunks(rows=2))) == want).all()
        assert (view.with_first(None)[:] == plain).all() and (view[:] == plain).all()
    assert (plain[:, 0] != 7).any()


def test_spread_samples_cover_the_corpus_and_subsets_read_those_blocks(tmp_path, tok):
    from slimedge.distill.data import BlockSubset, spread

    assert list(spread(10, 4)) == [0, 2, 5, 7] and list(spread(10, 0)) == list(range(10))
    assert list(spread(3, 5)) == [0, 1, 2]
    idx = spread(1000, 32)
    assert len(set(idx)) == 32 and idx[0] == 0 and idx[-1] > 950 and (np.diff(idx) > 0).all()
    (tmp_path / "c.txt").write_text("word another " * 300)
    view = prepare(str(tmp_path / "c.txt"), tok, 32, 0.25).train.with_first(5)
    sub = BlockSubset(view, spread(len(view), 3))
    full = np.asarray(view)
    assert len(sub) == 3 and sub.shape == (3, 32)
    assert (np.asarray(sub) == full[spread(len(view), 3)]).all()
    assert (sub[1] == full[sub.index[1]]).all() and (sub[[2, 0], :4] == full[sub.index[[2, 0]], :4]).all()
    assert (sub[1:] == full[sub.index[1:]]).all() and (sub[:, 0] == 5).all()
