"""Distillation data: read documents, tokenize them into a token file, cut blocks, hold some out.

Accepted inputs (``--data``; ``--data-field`` names the text column/field, default ``"text"``):

* a text file (``.txt``/``.md``/``.text`` or any other name): one document;
* a JSONL file (``.jsonl``): one document per line, an object with a string field;
* a Parquet (``.parquet``) or Arrow (``.arrow``, IPC stream or file) file: one document per row;
* a Hugging Face ``datasets`` folder written by ``save_to_disk`` (``state.json`` + ``dataset_info.json``
  + Arrow files; a ``DatasetDict`` folder gives its ``train`` split, else its first);
* a folder of such files, read recursively in sorted order (hidden names skipped).

Parquet, Arrow and ``datasets`` folders are read with ``pyarrow`` (part of the ``distill`` extra),
a record batch at a time. Documents are read one by one (a text file over ``PIECE_CHARS`` characters
in line-aligned pieces, tokenized without special tokens after the first piece), tokenized in bounded
chunks into an on-disk token file (:mod:`slimedge.distill.tokens`, reused while tokenizer and data are
unchanged), each followed by EOS (:func:`slimedge.distill.tokens.prepare` does it all: this module reads and cuts,
it does not import the token file's module). The token stream is cut into ``seq_len`` blocks; about the last
``eval_fraction`` of it is held out *by whole documents*: the split point is the document start nearest
to where the last ``ceil(eval_fraction·blocks)`` blocks would begin (a corpus of one document is split
at that block boundary instead). Training and held-out blocks are memory-mapped views
(:class:`BlockView`), so memory does not grow with the corpus; a view can read every block with BOS first
(``with_first``, as llama.cpp starts each context), and :func:`spread` / :class:`BlockSubset` take a sample of blocks
spread over the whole corpus rather than its beginning.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import SlimedgeError

TEXT_SUFFIXES = (".txt", ".md", ".text", ".jsonl")
TABLE_SUFFIXES = (".parquet", ".arrow")
DATA_SUFFIXES = TEXT_SUFFIXES + TABLE_SUFFIXES
PIECE_CHARS = 1 << 20  # a plain text file larger than this is read (and tokenized) in pieces cut after a newline
ROWS_PER_BATCH = 1024  # Parquet rows per record batch read


class BlockView:
    """``[n, seq_len]`` blocks of a 1-D token array (memory map), read as int64 on indexing."""

    def __init__(self, tokens: np.ndarray, start: int, n: int, seq_len: int, file: str | None = None,
                 width: int | None = None, first: int | None = None):
        self.tokens, self.start, self.n, self.seq_len, self.file = tokens, int(start), int(n), int(seq_len), file
        self.width = int(width or seq_len)
        self.first = None if first is None else int(first)  # every block's first token read as this id (BOS)
        self._2d = tokens[self.start: self.start + self.n * self.seq_len].reshape(self.n, self.seq_len)
        if self.width < self.seq_len:
            self._2d = self._2d[:, : self.width]

    shape = property(lambda self: (self.n, self.width))
    dtype = np.dtype(np.int64)
    ndim = 2

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx) -> np.ndarray:
        """Rows read now, as int64. File-backed rows are read with ``pread`` rather than through the map,
        so a long run does not make the whole token file resident in this process."""
        rows, cols = (idx if isinstance(idx, tuple) else (idx, slice(None)))
        if isinstance(rows, (int, np.integer)):
            return self[[int(rows)], cols][0]
        return self._first(self._rows(rows))[:, cols]

    def _rows(self, rows) -> np.ndarray:
        """Whole rows ``[k, width]`` as int64 (``rows``: a slice or indices)."""
        if self.file is None:
            return np.array(self._2d[rows], dtype=np.int64).reshape(-1, self.width)
        rows = np.arange(self.n)[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -self.n or rows.max() >= self.n):
            raise IndexError(f"block index out of range for {self.n} blocks")
        rows = rows % max(self.n, 1)
        item = self.tokens.dtype.itemsize
        out = np.empty((len(rows), self.width), self.tokens.dtype)
        fd = os.open(self.file, os.O_RDONLY)
        try:
            for i, r in enumerate(rows):
                buf = os.pread(fd, self.width * item, (self.start + int(r) * self.seq_len) * item)
                out[i] = np.frombuffer(buf, self.tokens.dtype)
        finally:
            os.close(fd)
        return out.astype(np.int64)

    def _first(self, a: np.ndarray) -> np.ndarray:
        if self.first is not None and a.shape[-1]:
            a[..., 0] = self.first
        return a

    def columns(self, width: int) -> "BlockView":
        """The first ``width`` tokens of every block, still a view."""
        return BlockView(self.tokens, self.start, self.n, self.seq_len, self.file, min(width, self.width),
                         self.first)

    def with_first(self, token: int | None) -> "BlockView":
        """The same blocks, each starting with ``token`` (as llama.cpp puts BOS first in every context it
        evaluates, imatrix and perplexity chunks included); ``None``: the tokens as they are."""
        return BlockView(self.tokens, self.start, self.n, self.seq_len, self.file, self.width, token)

    def __array__(self, dtype=None, copy=None):
        return self._first(np.array(self._2d, dtype=np.int64)).astype(dtype or np.int64, copy=False)

    def chunks(self, rows: int = 4096) -> Iterator[np.ndarray]:
        """The blocks as int64 ``[≤rows, seq_len]`` arrays, read with plain file reads when file-backed
        (so hashing a large corpus does not make the memory map resident)."""
        item = self.tokens.dtype.itemsize
        if self.width != self.seq_len:
            raise ValueError("chunks() reads whole blocks")
        for r0 in range(0, self.n, rows):
            k = min(rows, self.n - r0)
            if self.file is None:
                yield self._first(np.array(self._2d[r0:r0 + k], np.int64))
                continue
            off = (self.start + r0 * self.seq_len) * item
            a = np.fromfile(self.file, dtype=self.tokens.dtype, count=k * self.seq_len, offset=off)
            yield self._first(a.astype(np.int64).reshape(k, self.seq_len))


def spread(n_total: int, n: int) -> np.ndarray:
    """``n`` block indices spread evenly over ``n_total`` blocks (all of them when ``n`` is 0 or not fewer): a
    sample of blocks then covers the whole corpus, not only its beginning."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total, dtype=np.int64)
    return (np.arange(n, dtype=np.int64) * n_total) // n


class BlockSubset:
    """The blocks ``index`` of a block view, in that order, read (and indexed) as the view is."""

    def __init__(self, view, index: np.ndarray):
        self.view, self.index = view, np.asarray(index, dtype=np.int64)

    shape = property(lambda self: (len(self.index), self.view.shape[1]))
    dtype = np.dtype(np.int64)
    ndim = 2

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx) -> np.ndarray:
        rows, cols = (idx if isinstance(idx, tuple) else (idx, slice(None)))
        if isinstance(rows, (int, np.integer)):
            return self.view[int(self.index[rows]), cols]
        return self.view[self.index[rows], cols]

    def __array__(self, dtype=None, copy=None):
        return self[:].astype(dtype or np.int64, copy=False)


@dataclass
class Blocks:
    train: BlockView | np.ndarray   # [n_train, seq_len] (int64 on indexing)
    eval: BlockView | np.ndarray    # [n_eval, seq_len]
    n_tokens: int                   # tokens produced by the tokenizer (before dropping remainders)
    n_documents: int
    held_out_by: str = "blocks"     # "documents" (whole documents held out) or "blocks" (one document)
    token_file: str | None = None   # the token folder the blocks are read from
    _fp: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """sha256 of the blocks (shape + int64 ids): identifies the data a teacher cache was built from."""
        if self._fp is None:
            h = hashlib.sha256()
            for a in (self.train, self.eval):
                h.update(str(tuple(int(x) for x in a.shape)).encode())
                for c in (a.chunks() if isinstance(a, BlockView) else [a]):
                    h.update(np.ascontiguousarray(c, dtype=np.int64).tobytes())
            self._fp = h.hexdigest()
        return self._fp


# ---- reading ----------------------------------------------------------------------------------
def _field_of(obj, where: str, name: str) -> str:
    if not isinstance(obj, dict) or not isinstance(obj.get(name), str):
        raise SlimedgeError(f'{where} has no string "{name}" field; each line must be an object '
                            f'like {{"{name}": "..."}} (or pass --data-field)')
    return obj[name]


def _iter_jsonl(path: str, name: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise SlimedgeError(f"{path}:{n} is not valid JSON; each line must be an object "
                                    f'like {{"{name}": "..."}}') from None
            yield _field_of(obj, f"{path}:{n}", name)


def _pyarrow(path: str):
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise SlimedgeError(f"reading {path} needs pyarrow: pip install pyarrow "
                            "(or 'slimedge[distill]')") from None
    import pyarrow as pa

    return pa


def _column_batches(path: str, name: str) -> Iterator[list]:
    """Values of column ``name`` of a Parquet or Arrow file, a record batch at a time; a damaged file (or
    one that is not Parquet/Arrow) is a one-line :class:`SlimedgeError` naming it."""
    pa = _pyarrow(path)
    try:
        yield from _checked_batches(pa, path, name)
    except pa.ArrowException as exc:
        kind = "Parquet" if path.lower().endswith(".parquet") else "Arrow"
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SlimedgeError(f"{path} is not a readable {kind} file ({why}); re-export it, or pass text or "
                            "JSONL") from None


def _checked_batches(pa, path: str, name: str) -> Iterator[list]:
    if path.lower().endswith(".parquet"):
        pf = pa.parquet.ParquetFile(path)
        names = pf.schema_arrow.names
        if name not in names:
            raise SlimedgeError(f"{path} has no column {name!r} (columns: {', '.join(names)}); pass --data-field")
        batches = pf.iter_batches(batch_size=ROWS_PER_BATCH, columns=[name])
    else:
        src = pa.memory_map(path)
        try:
            reader = pa.ipc.open_stream(src)
            batches = iter(reader)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(src)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        names = reader.schema.names
        if name not in names:
            raise SlimedgeError(f"{path} has no column {name!r} (columns: {', '.join(names)}); pass --data-field")
    for b in batches:
        col = b.column(b.schema.get_field_index(name))
        col.validate(full=True)  # offsets and UTF-8 checked before a value is read (IPC is not validated)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise SlimedgeError(f"{path}: column {name!r} holds {col.type}, not text; pass --data-field")
        yield col.to_pylist()


def _read_error(path: str, exc: BaseException) -> SlimedgeError:
    if isinstance(exc, UnicodeDecodeError):
        return SlimedgeError(f"{path} is not UTF-8 text; pass text, a folder of .txt files or JSONL")
    return SlimedgeError(f"cannot read data file {path}: {getattr(exc, 'strerror', None) or exc}")


def _pieces_of_file(path: str, name: str) -> Iterator[tuple[str, bool, bool]]:
    """(text, starts a document, ends a document) of one file."""
    low = path.lower()
    try:
        if low.endswith(".jsonl"):
            for t in _iter_jsonl(path, name):
                if t.strip():
                    yield t, True, True
        elif low.endswith(TABLE_SUFFIXES):
            for values in _column_batches(path, name):
                for t in values:
                    if t and t.strip():
                        yield t, True, True
        else:
            with open(path, encoding="utf-8") as f:
                buf = f.read(PIECE_CHARS)
                if len(buf) < PIECE_CHARS:
                    if buf.strip():
                        yield buf, True, True
                    return
                first = True
                while buf:
                    buf += f.readline(PIECE_CHARS)  # end the piece at a line end
                    nxt = f.read(PIECE_CHARS)
                    yield buf, first, not nxt
                    buf, first = nxt, False
    except (UnicodeDecodeError, OSError) as exc:
        raise _read_error(path, exc) from None


def _hf_dataset_files(folder: str) -> list[str] | None:
    """The Arrow files of a ``save_to_disk`` folder (a Dataset, or a DatasetDict's train/first split)."""
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        splits = _json_object(os.path.join(folder, "dataset_dict.json")).get("splits") or []
        if not (isinstance(splits, list) and splits and all(_plain_name(x) for x in splits)):
            raise SlimedgeError(f"{folder}/dataset_dict.json lists no splits (or not as folder names); "
                                "re-save the dataset with save_to_disk")
        return _hf_dataset_files(os.path.join(folder, "train" if "train" in splits else splits[0]))
    state = os.path.join(folder, "state.json")
    if not (os.path.isfile(state) and os.path.isfile(os.path.join(folder, "dataset_info.json"))):
        return None
    entries = _json_object(state).get("_data_files", [])
    files = [d.get("filename") for d in entries if isinstance(d, dict)] if isinstance(entries, list) else []
    if not files or len(files) != len(entries) or not all(_plain_name(n) for n in files):
        raise SlimedgeError(f"{state} lists no data files (or not as file names in its folder); re-save the "
                            "dataset with save_to_disk")
    return [os.path.join(folder, n) for n in files]


def _plain_name(name) -> bool:
    """A file or folder name inside the dataset folder (no path, no '..')."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name and len(name.encode("utf-8", "surrogatepass")) <= 255


def _json_object(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SlimedgeError(f"{path}: not readable JSON ({str(exc).splitlines()[0][:100]}); re-save the dataset "
                            "with save_to_disk") from None
    if not isinstance(obj, dict):
        raise SlimedgeError(f"{path}: not a JSON object; re-save the dataset with save_to_disk")
    return obj


def source_files(path: str) -> list[str]:
    """The files ``path`` stands for, in reading order; :class:`SlimedgeError` when there are none."""
    if not os.path.exists(path):
        raise SlimedgeError(f"data not found: {path}; pass a text file, a folder of text files, JSONL, "
                            "Parquet/Arrow or a datasets folder")
    if not os.path.isdir(path):
        return [path]
    hf = _hf_dataset_files(path)
    if hf is not None:
        return hf
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in sorted(names)
                  if not n.startswith(".") and n.lower().endswith(DATA_SUFFIXES)]
    if not files:
        raise SlimedgeError(f"no data files ({', '.join(DATA_SUFFIXES)}) in data folder {path}")
    return sorted(files)


def iter_pieces(path: str, name: str = "text") -> Iterator[tuple[str, bool, bool]]:
    """Every document of ``path`` as (text, starts_doc, ends_doc) pieces, in reading order."""
    for f in source_files(path):
        yield from _pieces_of_file(f, name)


def fingerprint(path: str, name: str = "text") -> tuple[str, int]:
    """(sha256 over the source files' relative names and contents plus ``name``, their total bytes)."""
    files = source_files(path)
    base = path if os.path.isdir(path) else os.path.dirname(path)
    h = hashlib.sha256(f"field={name};".encode())
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError as exc:
            raise _read_error(f, exc) from None
        size = os.path.getsize(f)
        total += size
        h.update(f"{os.path.relpath(f, base)}:{size}:{digest};".encode())
    return h.hexdigest(), total


def load_texts(path: str, name: str = "text") -> list[str]:
    """All documents of ``path`` in memory (small data, tests); training goes through
    :func:`slimedge.distill.tokens.prepare`."""
    texts: list[str] = []
    for t, starts, _ in iter_pieces(path, name):
        if starts:
            texts.append(t)
        else:
            texts[-1] += t
    if not texts:
        raise SlimedgeError(f"data {path} contains no text; give it some documents")
    return texts


def tokenize(texts: list[str], tokenizer) -> tuple[np.ndarray, int]:
    """All documents' token ids, each followed by EOS: (ids [n] int64, number of documents) — in memory."""
    eos = tokenizer.eos_token_id
    parts = []
    for i in range(0, len(texts), 256):
        enc = tokenizer(texts[i:i + 256], add_special_tokens=True, verbose=False)["input_ids"]
        for ids in enc:
            if eos is not None and (not ids or ids[-1] != eos):
                ids = list(ids) + [eos]
            parts.append(np.asarray(ids, dtype=np.int64))
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), len(texts)


def pack(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut ``ids`` into full blocks ``[n, seq_len]`` (the remainder is dropped)."""
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def split(blocks: np.ndarray, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out): the last ``ceil(eval_fraction·n)`` blocks (at least one) are held out."""
    n_eval = max(1, int(np.ceil(len(blocks) * eval_fraction)))
    return blocks[:-n_eval], blocks[-n_eval:]


def split_point(n_tokens: int, doc_starts: np.ndarray, seq_len: int, eval_fraction: float) -> tuple[int, str]:
    """(first held-out token, "documents" | "blocks"): the document start nearest to where the last
    ``ceil(eval_fraction·blocks)`` blocks begin, keeping ≥ 1 block on each side; else that block boundary."""
    n_blocks = n_tokens // seq_len
    n_eval = max(1, int(np.ceil(n_blocks * eval_fraction)))
    cut0 = (n_blocks - n_eval) * seq_len
    starts = np.asarray(doc_starts, np.int64)
    ok = starts[(starts >= seq_len) & (n_tokens - starts >= seq_len)]
    if len(ok) == 0:
        return cut0, "blocks"
    best = ok[np.argmin(np.abs(ok - cut0) * 2 + (ok > cut0))]  # nearest; on a tie the earlier
    return int(best), "documents"
