"""Corpus-scale data: token files (bounded chunks, reuse, keys), Parquet/Arrow/datasets input, held-out documents."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from slimedge.distill import data as data_mod
from slimedge.distill import tokens as tokens_mod
from slimedge.distill.data import load_texts, pack, split, tokenize
from slimedge.distill.tokens import prepare
from slimedge.errors import SlimedgeError

WORDS = ("river stone garden lamp window quiet orange market signal paper bridge winter engine "
         "harbor candle forest silver number letter moment").split()


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 60)))) + "." for _ in range(n)]


def _jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "n": i}) + "\n" for i, d in enumerate(docs)))
    return path


def test_token_file_equals_in_memory_tokenization(tmp_path, tok, monkeypatch):
    docs = _docs(300)
    src = _jsonl(tmp_path / "d.jsonl", docs)
    ids, n_docs = tokenize(docs, tok)
    monkeypatch.setattr(tokens_mod, "CHUNK_CHARS", 500)  # many small chunks
    tf = tokens_mod.token_file(str(src), tok, cache_dir=str(tmp_path / "c1"))
    assert tf.n_documents == n_docs == 300 and tf.tokens.dtype == np.uint16
    assert np.array_equal(np.asarray(tf.tokens, np.int64), ids)
    starts = [0] + list(np.cumsum([len(tok(d)["input_ids"]) + 1 for d in docs]))
    assert list(tf.docs) == starts
    monkeypatch.setattr(tokens_mod, "CHUNK_CHARS", 1 << 20)  # one chunk: same file content
    tf2 = tokens_mod.token_file(str(src), tok, cache_dir=str(tmp_path / "c2"))
    assert np.array_equal(np.asarray(tf2.tokens), np.asarray(tf.tokens))


def test_token_file_reused_and_keyed(tmp_path, tok, monkeypatch):
    src = _jsonl(tmp_path / "d.jsonl", _docs(50))
    cache = str(tmp_path / "cache")
    a = tokens_mod.token_file(str(src), tok, cache_dir=cache)
    real, calls = tokens_mod.build_token_file, []
    monkeypatch.setattr(tokens_mod, "build_token_file", lambda *x, **k: calls.append(1) or real(*x, **k))
    assert tokens_mod.token_file(str(src), tok, cache_dir=cache).path == a.path and not calls  # reused
    _jsonl(src, _docs(50, seed=1))  # other content → another key → built
    other = tokens_mod.token_file(str(src), tok, cache_dir=cache)
    assert other.path != a.path and calls == [1]
    _jsonl(src, _docs(50))  # the first content again: found again
    assert tokens_mod.token_file(str(src), tok, cache_dir=cache).path == a.path and calls == [1]
    assert data_mod.fingerprint(str(src), "text")[0] != data_mod.fingerprint(str(src), "body")[0]
    assert sorted(os.listdir(cache)) == sorted([os.path.basename(a.path), os.path.basename(other.path)])


def test_single_document_blocks_as_before(tmp_path, tok):
    (tmp_path / "c.txt").write_text(" ".join(_docs(80)))
    b = prepare(str(tmp_path / "c.txt"), tok, 32, 0.2)
    ids, _ = tokenize(load_texts(str(tmp_path / "c.txt")), tok)
    tr, ev = split(pack(ids, 32), 0.2)
    assert b.held_out_by == "blocks"
    assert np.array_equal(np.asarray(b.train), tr) and np.array_equal(np.asarray(b.eval), ev)
    h = hashlib.sha256()  # the fingerprint of the arrays as the in-memory code computed it
    for a in (tr, ev):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    assert b.fingerprint() == h.hexdigest()
    assert b.train[np.array([1, 0])].dtype == np.int64 and b.train[:2].shape == (2, 32)


def test_eval_held_out_by_whole_documents(tmp_path, tok):
    docs = _docs(400, seed=3)
    src = _jsonl(tmp_path / "d.jsonl", docs)
    b = prepare(str(src), tok, 16, 0.1)
    assert b.held_out_by == "documents"
    tf = tokens_mod.open_token_file(b.token_file)
    cut = b.eval.start
    assert cut in set(tf.docs.tolist())  # the held-out part starts at a document start
    assert b.train.start + len(b.train) * 16 <= cut  # training blocks end before it
    n_blocks = tf.n_tokens // 16
    assert abs(len(b.eval) - int(np.ceil(0.1 * n_blocks))) <= 60 // 16 + 2  # about the asked share
    first_eval_doc = int(np.searchsorted(tf.docs, cut))
    held = docs[first_eval_doc:]
    assert np.array_equal(np.asarray(b.eval).reshape(-1), np.asarray(tf.tokens[cut: cut + len(b.eval) * 16], np.int64))
    train_text_ids = np.asarray(b.train).reshape(-1)
    eval_first = np.asarray(tokenize(held[:1], tok)[0])
    assert np.array_equal(np.asarray(b.eval).reshape(-1)[: len(eval_first)], eval_first)
    assert len(train_text_ids) <= cut


def test_split_point_rules():
    # nearest document start to the block-aligned cut (block 8 of 10 at seq 10 → token 80)
    assert data_mod.split_point(100, np.array([0, 30, 77, 86]), 10, 0.2) == (77, "documents")
    assert data_mod.split_point(100, np.array([0, 75, 85]), 10, 0.2) == (75, "documents")  # tie → earlier
    assert data_mod.split_point(100, np.array([0]), 10, 0.2) == (80, "blocks")  # one document
    assert data_mod.split_point(100, np.array([0, 5, 95]), 10, 0.2) == (80, "blocks")  # no side would keep a block


def _arrow_table(docs, field="text"):
    import pyarrow as pa

    return pa.table({field: docs, "id": list(range(len(docs)))})


def test_parquet_arrow_and_datasets_folder(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs(120, seed=5)
    table = _arrow_table(docs, "body")
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=50)
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as f:  # IPC stream (what datasets writes)
        with pa.ipc.new_stream(f, table.schema) as w:
            for b in table.to_batches(max_chunksize=40):
                w.write_batch(b)
    with pa.OSFile(str(tmp_path / "f.arrow"), "wb") as f:  # IPC file format
        with pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
    ds = tmp_path / "ds"
    ds.mkdir()
    half = len(docs) // 2
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        with pa.OSFile(str(ds / f"data-0000{i}-of-00002.arrow"), "wb") as f:
            with pa.ipc.new_stream(f, part.schema) as w:
                w.write_table(part)
    (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00002.arrow"},
                                                               {"filename": "data-00001-of-00002.arrow"}]}))
    (ds / "dataset_info.json").write_text("{}")
    dd = tmp_path / "dd"
    (dd / "train").mkdir(parents=True)
    for name in os.listdir(ds):
        (dd / "train" / name).write_bytes((ds / name).read_bytes())
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    jl = _jsonl(tmp_path / "d.jsonl", docs, "body")
    for src in ("d.parquet", "s.arrow", "f.arrow", "ds", "dd", "d.jsonl"):
        assert load_texts(str(tmp_path / src), "body") == docs, src
    want = np.asarray(tokens_mod.token_file(str(jl), tok, field="body").tokens)
    got = np.asarray(tokens_mod.token_file(str(ds), tok, field="body").tokens)
    assert np.array_equal(want, got)
    with pytest.raises(SlimedgeError, match=r"d.parquet has no column 'text' \(columns: body, id\)"):
        load_texts(str(tmp_path / "d.parquet"))
    with pytest.raises(SlimedgeError, match="column 'id' holds int64, not text"):
        load_texts(str(tmp_path / "s.arrow"), "id")
    with pytest.raises(SlimedgeError, match=r'd.jsonl:1 has no string "text" field'):
        load_texts(str(jl))


def test_large_text_file_read_in_pieces(tmp_path, tok, monkeypatch):
    lines = _docs(400, seed=7)
    text = "\n".join(lines) + "\n"
    (tmp_path / "big.txt").write_text(text)
    monkeypatch.setattr(data_mod, "PIECE_CHARS", 2000)
    pieces = list(data_mod.iter_pieces(str(tmp_path / "big.txt")))
    assert len(pieces) > 5 and "".join(p[0] for p in pieces) == text  # nothing lost, cut at line ends
    assert all(p[0].endswith("\n") for p in pieces) and max(len(p[0]) for p in pieces) < 2000 + 400
    assert [p[1] for p in pieces] == [True] + [False] * (len(pieces) - 1)
    assert [p[2] for p in pieces] == [False] * (len(pieces) - 1) + [True]
    tf = tokens_mod.token_file(str(tmp_path / "big.txt"), tok)
    ids = np.asarray(tf.tokens, np.int64)
    assert tf.n_documents == 1 and ids[0] == tok.bos_token_id and list(ids).count(tok.bos_token_id) == 1
    assert list(ids).count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
    whole = tokenize([text], tok)[0]
    assert abs(len(ids) - len(whole)) <= 2 * len(pieces)  # at most the cut points differ


def test_bad_token_cache(tmp_path, tok):
    src = _jsonl(tmp_path / "d.jsonl", _docs(20))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SlimedgeError, match="cannot write the token file under .*afile"):
        tokens_mod.token_file(str(src), tok, cache_dir=str(tmp_path / "afile"))


def test_block_view_reads_like_an_array(tmp_path, tok):
    src = _jsonl(tmp_path / "d.jsonl", _docs(200, seed=9))
    b = prepare(str(src), tok, 16, 0.1)
    arr = np.asarray(b.train)
    assert arr.dtype == np.int64 and arr.shape == b.train.shape
    rows = np.array([3, 0, 3, len(arr) - 1])
    for idx in (rows, rows.tolist(), slice(2, 9), 5, -1, (rows, slice(None, 7)), (slice(1, 4), slice(None, 3))):
        got, want = b.train[idx], arr[idx]
        assert got.dtype == np.int64 and np.array_equal(got, want), idx
    narrow = b.train.columns(10)
    assert narrow.shape == (len(arr), 10) and np.array_equal(narrow[rows], arr[rows, :10])
    with pytest.raises(IndexError):
        b.train[[len(arr)]]


@pytest.mark.slow  # distills a student for two steps
def test_distill_from_parquet_with_data_field(tmp_path, teacher_dir):
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from slimedge.cli import main

    docs = _docs(300, seed=11)
    pq.write_table(_arrow_table(docs, "body"), tmp_path / "train.parquet", row_group_size=64)
    args = ["--teacher", str(teacher_dir), "--data", str(tmp_path / "train.parquet"), "--data-field", "body",
            "--layers", "1", "--steps", "2", "--seq-len", "32", "--batch-size", "4", "--quiet",
            "--token-cache", str(tmp_path / "tok"), "-o", str(tmp_path / "out")]
    r = CliRunner().invoke(main, ["distill"] + args)
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "out" / "distill_report.json").read_text())
    assert rep["data"]["documents"] == 300 and rep["data"]["held_out_by"] == "documents"
    assert rep["data"]["token_file"].startswith(str(tmp_path / "tok")) and rep["settings"]["data_field"] == "body"
    r = CliRunner().invoke(main, ["distill"] + args[:5] + ["nope"] + args[6:] + ["--overwrite"])
    assert r.exit_code != 0 and "has no column 'nope' (columns: body, id)" in r.output
