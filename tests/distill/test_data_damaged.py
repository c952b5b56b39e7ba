"""Damaged data files for ``--data``: a corrupt Parquet, a text file named .parquet, truncated Arrow files.

Each is a one-line :class:`SlimedgeError` naming the file, from the reader and from ``slimedge distill``
(no traceback, no "this is a bug", no output folder); the intact files they were cut from read fine.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tests.factory import cached_hf_model

from slimedge.cli import main
from slimedge.distill.data import load_texts
from slimedge.errors import SlimedgeError

DOCS = [f"document {i}: the quick brown fox jumps over the lazy dog" for i in range(200)]


def _intact(folder):
    t = pa.table({"text": DOCS})
    pq.write_table(t, folder / "ok.parquet")
    with pa.OSFile(str(folder / "ok.arrow"), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    with pa.OSFile(str(folder / "ok_stream.arrow"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        w.write_table(t)
    return {n: (folder / n).read_bytes() for n in ("ok.parquet", "ok.arrow", "ok_stream.arrow")}


def _damaged(folder) -> list:
    ok = _intact(folder)
    pqb, arr, stream = ok["ok.parquet"], ok["ok.arrow"], ok["ok_stream.arrow"]
    mid = len(pqb) // 2
    cases = {"corrupt.parquet": pqb[:mid] + bytes(b ^ 0x5A for b in pqb[mid:mid + 64]) + pqb[mid + 64:],
             "notes.parquet": b"these are my notes, not a table\n" * 20,
             "half.parquet": pqb[:mid], "empty.parquet": b"",
             "half.arrow": arr[:len(arr) // 2], "half_stream.arrow": stream[:len(stream) - 40]}
    for name, data in cases.items():
        (folder / name).write_bytes(data)
    return [folder / n for n in cases]


def test_intact_files_read(tmp_path):
    _intact(tmp_path)
    for name in ("ok.parquet", "ok.arrow", "ok_stream.arrow"):
        assert load_texts(str(tmp_path / name)) == DOCS


def test_damaged_files_are_one_line_errors(tmp_path):
    for path in _damaged(tmp_path):
        with pytest.raises(SlimedgeError) as exc:
            load_texts(str(path))
        msg = str(exc.value)
        assert str(path) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("name", ["corrupt.parquet", "notes.parquet", "half.arrow"])
def test_distill_refuses_damaged_data_in_one_line(tmp_path, name):
    _damaged(tmp_path)
    teacher = cached_hf_model(arch="llama")
    out = tmp_path / "student"
    r = CliRunner().invoke(main, ["distill", "--teacher", str(teacher), "--data", str(tmp_path / name), "-o", str(out),
                                  "--layers", "1", "--steps", "2", "--token-cache", str(tmp_path / "tok")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    errors = [ln for ln in lines if ln.startswith("Error: ")]  # progress lines may come before it
    assert errors == [lines[-1]] and name in lines[-1], r.output
    assert "Traceback" not in r.output and "bug" not in r.output
    assert not out.exists()
