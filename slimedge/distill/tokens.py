"""The corpus as an on-disk token file: tokenized in bounded chunks once, memory-mapped afterwards.

How: documents come from :func:`slimedge.distill.data.iter_pieces` (whole documents; a plain text
file over ``data.PIECE_CHARS`` arrives in line-aligned pieces). They are batch-encoded with the fast
tokenizer ``CHUNK_CHARS`` characters at a time (the Rust ``encode_batch_fast`` when it gives the same
ids as ``tokenizer(...)`` on the first batch, else ``tokenizer(...)`` itself), each document followed
by EOS, and appended to ``tokens.bin`` (uint16 when the vocabulary fits, else uint32). ``docs.npy``
holds every document's first token offset (plus the total at the end); ``meta.json`` says what was
tokenized. The folder is ``<cache>/<key>`` where the key hashes the tokenizer's definition and the
data's content (file names and bytes, ``data_field``): a later run with the same tokenizer and data
reuses it, anything else gets another folder. It appears atomically (:mod:`slimedge.publish`), so an
interrupted run leaves nothing that a later run could mistake for complete.

Memory stays bounded by one chunk's encodings, whatever the corpus size; training then reads blocks
through a memory map (:class:`slimedge.distill.data.BlockView`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..publish import publish_dir

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK_CHARS = 1 << 20   # characters per batch-encoding call (bounds the tokenizer's temporary memory)
CHUNK_DOCS = 4096       # documents per batch-encoding call


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/slimedge/tokens``, else ``~/.cache/slimedge/tokens``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "slimedge", "tokens")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the ids: the fast tokenizer's JSON (or the vocabulary) and its special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for name in ("bos_token_id", "eos_token_id", "add_bos_token", "add_eos_token"):
        h.update(f"{name}={getattr(tokenizer, name, None)!r};".encode())
    return h.hexdigest()


@dataclass
class TokenFile:
    """An opened token folder: ``tokens`` [n] uint16/uint32 memory map, ``docs`` [n_docs + 1] int64 offsets."""
    path: str
    tokens: np.ndarray
    docs: np.ndarray
    meta: dict

    @property
    def n_tokens(self) -> int:
        return int(self.meta["tokens"])

    @property
    def n_documents(self) -> int:
        return int(self.meta["documents"])


def open_token_file(path: str) -> TokenFile:
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    n = int(meta["tokens"])
    tokens = (np.memmap(os.path.join(path, "tokens.bin"), dtype=meta["dtype"], mode="r", shape=(n,))
              if n else np.zeros(0, meta["dtype"]))
    return TokenFile(path, tokens, np.load(os.path.join(path, "docs.npy")), meta)


class _Encoder:
    """Batch encoding identical to ``tokenizer(texts, add_special_tokens=...)["input_ids"]``."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self.fast = getattr(backend, "encode_batch_fast", None)
        self.checked = self.fast is None

    def _slow(self, texts: list[str], special: bool) -> list[list[int]]:
        return [list(x) for x in self.tok(texts, add_special_tokens=special, verbose=False,
                                          return_attention_mask=False)["input_ids"]]

    def __call__(self, texts: list[str], special: bool) -> list[list[int]]:
        if not texts:
            return []
        if self.fast is None:
            return self._slow(texts, special)
        ids = [e.ids for e in self.fast(texts, add_special_tokens=special)]
        if not self.checked:
            self.checked = True
            probe = min(len(texts), 8)
            if ids[:probe] != self._slow(texts[:probe], special):
                log.info("the backend tokenizer's ids differ from the tokenizer's own; using the latter")
                self.fast = None
                return self._slow(texts, special)
        return ids


def _encode(pieces: list[tuple[str, bool, bool]], enc: _Encoder) -> list[list[int]]:
    """Ids of one chunk of (text, starts_doc, ends_doc) pieces: with special tokens for a document's start."""
    first = [i for i, p in enumerate(pieces) if p[1]]
    rest = [i for i, p in enumerate(pieces) if not p[1]]
    ids: list[list[int]] = [[] for _ in pieces]
    for idx, special in ((first, True), (rest, False)):
        for i, x in zip(idx, enc([pieces[i][0] for i in idx], special)):
            ids[i] = x
    return ids


def _append(out, docs: list[int], pieces, ids: list[list[int]], eos: int | None, dtype, n: int) -> int:
    """Append one encoded chunk to ``out`` (EOS after each document); the new token count."""
    for (_, starts, ends), x in zip(pieces, ids):
        if starts:
            docs.append(n)
        if ends and eos is not None and (not x or x[-1] != eos):
            x.append(eos)
        n += len(x)
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=sum(len(x) for x in ids))
    out.write(flat.tobytes())
    return n


def _chunks(pieces) -> Iterator[list[tuple[str, bool, bool]]]:
    chunk: list[tuple[str, bool, bool]] = []
    size = 0
    for piece in pieces:
        chunk.append(piece)
        size += len(piece[0])
        if size >= CHUNK_CHARS or len(chunk) >= CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def build_token_file(path: str, pieces, tokenizer, meta: dict, progress: Progress = NULL_PROGRESS) -> TokenFile:
    """Tokenize ``pieces`` (an iterator of (text, starts_doc, ends_doc)) into the folder ``path``.

    The next chunk is read and encoded in a worker thread (the Rust tokenizer releases the GIL) while
    this one converts and writes the previous chunk's ids.
    """
    from concurrent.futures import ThreadPoolExecutor

    vocab = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    eos = tokenizer.eos_token_id
    enc = _Encoder(tokenizer)
    t0 = time.monotonic()
    chars = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with publish_dir(os.path.abspath(path)) as tmp, ThreadPoolExecutor(1) as pool:
        docs: list[int] = []
        n = 0
        progress.start(meta.get("bytes") or 0, "B", "tokenize")
        with open(os.path.join(tmp, "tokens.bin"), "wb") as out:
            chunks = _chunks(pieces)
            nxt = next(chunks, None)
            job = pool.submit(_encode, nxt, enc) if nxt is not None else None
            while job is not None:
                cur = nxt
                nxt = next(chunks, None)  # read the next chunk while the worker encodes this one
                ids = job.result()
                job = pool.submit(_encode, nxt, enc) if nxt is not None else None  # encode it while writing
                n = _append(out, docs, cur, ids, eos, dtype, n)
                size = sum(len(p[0]) for p in cur)
                chars += size
                progress.update(size)
        progress.close()
        if not docs:
            raise SlimedgeError(f"data {meta['source']} contains no text; give it some documents")
        np.save(os.path.join(tmp, "docs.npy"), np.asarray(docs + [n], np.int64))
        dt = time.monotonic() - t0
        meta = dict(meta, tokens=n, documents=len(docs), dtype=np.dtype(dtype).name, characters=chars,
                    seconds=round(dt, 3), characters_per_s=round(chars / max(dt, 1e-9)))
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
    log.info("tokenized %d documents (%d tokens, %.1f MB of text) in %.1f s into %s",
             len(docs), n, chars / 1e6, dt, path)
    return open_token_file(path)


def token_file(data: str, tokenizer, *, field: str = "text", cache_dir: str | None = None, build: bool = True,
               progress: Progress = NULL_PROGRESS) -> TokenFile:
    """The token file of ``data`` for ``tokenizer``: reused when one with the same key exists, else built
    (``build``; with ``build=False`` a missing one is an error — processes > 0 wait for process 0)."""
    from . import data as data_mod

    fp, n_bytes = data_mod.fingerprint(data, field)
    key = hashlib.sha256(f"{FORMAT}:{tokenizer_fingerprint(tokenizer)}:{fp}".encode()).hexdigest()[:32]
    root = cache_dir or default_cache_dir()
    path = os.path.join(root, key)
    if os.path.isfile(os.path.join(path, "meta.json")):
        log.info("reusing the token file %s", path)
        return open_token_file(path)
    if not build:
        raise RuntimeError(f"token file {path} missing after process 0 built it (is {root} shared?)")
    meta = {"format": FORMAT, "source": os.path.abspath(data), "field": field, "data": fp, "bytes": n_bytes,
            "tokenizer": tokenizer_fingerprint(tokenizer)}
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise SlimedgeError(f"cannot write the token file under {root}: {exc.strerror or exc}; "
                            "pass --token-cache DIR (a writable folder)") from None
    return build_token_file(path, data_mod.iter_pieces(data, field), tokenizer, meta, progress)
