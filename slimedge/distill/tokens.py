"""The corpus as an on-disk token file: tokenized in bounded chunks once, memory-mapped afterwards.

How: documents come from :func:`slimedge.distill.data.iter_pieces` (whole documents; a plain text
file over ``data.PIECE_CHARS`` arrives in line-aligned pieces). They are batch-encoded with the fast
tokenizer ``CHUNK_CHARS`` characters at a time, ``ENCODERS`` chunks at once (the Rust
``encode_batch_fast`` when it gives the same ids as ``tokenizer(...)`` on the first batch, else
``tokenizer(...)`` itself; the post-processor's special tokens, such as BOS, are put around the ids
here when that gives the same ids), each document followed by EOS, and appended to ``tokens.bin``
(uint16 when the vocabulary fits, else uint32). ``docs.npy``
holds every document's first token offset (plus the total at the end); ``meta.json`` says what was
tokenized. The folder is ``<cache>/<key>`` where the key hashes the tokenizer's definition and the
data's content (file names and bytes, ``data_field``): a later run with the same tokenizer and data
reuses it, anything else gets another folder. It appears atomically (:mod:`slimedge.publish`), so an
interrupted run leaves nothing that a later run could mistake for complete.

Memory stays bounded by one chunk's encodings, whatever the corpus size; training then reads blocks
through a memory map (:class:`slimedge.distill.data.BlockView`): :func:`prepare` opens (or builds) the token file,
cuts it into blocks and holds the last share out by whole documents (:func:`slimedge.distill.data.split_point`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..publish import publish_dir
from . import data as data_mod
from .data import Blocks, BlockView, split_point

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK_CHARS = 1 << 20   # characters per batch-encoding call (bounds the tokenizer's temporary memory)
CHUNK_DOCS = 4096       # documents per batch-encoding call
_U32 = "I" if array("I").itemsize == 4 else "L"  # array typecode of 4-byte unsigned ints
ENCODERS = 2            # chunks encoded at once (threads; the encoder's own threads share the cores)


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


def _affixes(processor) -> tuple[list[int], list[int]] | None:
    """(ids before, ids after) the text that the post-processor JSON ``processor`` adds to one sequence
    with special tokens; None for a processor this does not know (the encoder then asks for them)."""
    if processor is None or processor.get("type") == "ByteLevel":
        return [], []
    kind = processor.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [int(processor["cls"][1])], [int(processor["sep"][1])]
    if kind == "Sequence":
        pre: list[int] = []
        suf: list[int] = []
        for p in processor.get("processors") or []:
            a = _affixes(p)
            if a is None:
                return None
            pre, suf = a[0] + pre, suf + a[1]
        return pre, suf
    if kind == "TemplateProcessing":
        parts: list[list[int]] = [[]]
        for item in processor.get("single") or []:
            if "Sequence" in item:
                if item["Sequence"].get("id") != "A" or len(parts) > 1:
                    return None
                parts.append([])
            elif "SpecialToken" in item:
                parts[-1] += [int(i) for i in processor["special_tokens"][item["SpecialToken"]["id"]]["ids"]]
            else:
                return None
        return (parts[0], parts[1]) if len(parts) == 2 else None
    return None


class _Encoder:
    """Batch encoding identical to ``tokenizer(texts, add_special_tokens=...)["input_ids"]``, as uint32 arrays.

    With a fast tokenizer, the Rust ``encode_batch_fast``: documents are encoded without special tokens
    and the post-processor's (e.g. BOS) are put around them here — the same ids as encoding with them,
    as :meth:`probe` checks, with a little less work in the encoder. :meth:`probe` (on the first texts, before
    any other call) falls back to ``tokenizer(...)`` when the backend's ids differ from it.
    """

    PROBE_DOCS, PROBE_CHARS = 8, 1 << 14

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._lock = threading.Lock()
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self.fast = getattr(backend, "encode_batch_fast", None)
        self.affix = None
        if self.fast is not None and backend.truncation is None and backend.padding is None:
            try:
                self.affix = _affixes(json.loads(backend.to_str()).get("post_processor"))
            except (KeyError, TypeError, ValueError, IndexError):
                self.affix = None

    def _slow(self, texts: list[str], special: bool) -> list[list[int]]:
        return [list(x) for x in self.tok(texts, add_special_tokens=special, verbose=False,
                                          return_attention_mask=False)["input_ids"]]

    def probe(self, texts: list[str]) -> None:
        """Decide the path on (the starts of) the first texts: the backend's ids must equal the tokenizer's."""
        if self.fast is None or not texts:
            return
        texts = [t[: self.PROBE_CHARS] for t in texts[: self.PROBE_DOCS]]
        want = [e.ids for e in self.fast(texts, add_special_tokens=True)]
        if want != self._slow(texts, True):
            log.info("the backend tokenizer's ids differ from the tokenizer's own; using the latter")
            self.fast = None
        elif self.affix is not None and [a.tolist() for a in self(texts, True)] != want:
            log.info("the post-processor's special tokens are not %s around the text; encoding with them",
                     self.affix)
            self.affix = None

    def __call__(self, texts: list[str], special: bool) -> list[np.ndarray]:
        """One uint32 array of ids per text."""
        if not texts:
            return []
        if self.fast is None:
            with self._lock:  # tokenizer(...) may reconfigure its backend: one call at a time
                return [np.asarray(x, np.uint32) for x in self._slow(texts, special)]
        if special and self.affix is not None:
            pre, suf = (np.asarray(a, np.uint32) for a in self.affix)
            encs = self.fast(texts, add_special_tokens=False)
            if len(pre) or len(suf):
                return [np.concatenate((pre, np.frombuffer(array(_U32, e.ids), np.uint32), suf)) for e in encs]
        else:
            encs = self.fast(texts, add_special_tokens=special)
        return [np.frombuffer(array(_U32, e.ids), np.uint32) for e in encs]


def _encode(pieces: list[tuple[str, bool, bool]], enc: _Encoder) -> list[np.ndarray]:
    """Ids of one chunk of (text, starts_doc, ends_doc) pieces: with special tokens for a document's start."""
    first = [i for i, p in enumerate(pieces) if p[1]]
    rest = [i for i, p in enumerate(pieces) if not p[1]]
    ids: list[np.ndarray] = [np.zeros(0, np.uint32)] * len(pieces)
    for idx, special in ((first, True), (rest, False)):
        for i, x in zip(idx, enc([pieces[i][0] for i in idx], special)):
            ids[i] = x
    return ids


def _append(out, docs: list[int], pieces, ids: list[np.ndarray], eos: int | None, dtype, n: int) -> int:
    """Append one encoded chunk to ``out`` (EOS after each document); the new token count."""
    parts = []
    tail = np.asarray([eos if eos is not None else 0], np.uint32)
    for (_, starts, ends), x in zip(pieces, ids):
        if starts:
            docs.append(n)
        parts.append(x)
        n += len(x)
        if ends and eos is not None and (not len(x) or int(x[-1]) != eos):
            parts.append(tail)
            n += 1
    flat = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    if dtype != np.uint32:
        if len(flat) and int(flat.max()) > np.iinfo(dtype).max:
            raise SlimedgeError(f"token id {int(flat.max())} does not fit {np.dtype(dtype).name}")
        flat = flat.astype(dtype)
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

    ``ENCODERS`` worker threads each encode a chunk and turn its ids into arrays (the Rust encoder
    releases the GIL), so the encoder always has a chunk to work on — across one chunk's last,
    longest documents and while another's ids are converted — and this thread reads the next chunks
    and writes the finished ones in order (at most ``ENCODERS + 1`` chunks in flight).
    """
    from concurrent.futures import ThreadPoolExecutor

    vocab = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    eos = tokenizer.eos_token_id
    enc = _Encoder(tokenizer)
    t0 = time.monotonic()
    chars = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with publish_dir(os.path.abspath(path)) as tmp, ThreadPoolExecutor(ENCODERS) as pool:
        docs: list[int] = []
        n = 0
        progress.start(meta.get("bytes") or 0, "B", "tokenize")
        with open(os.path.join(tmp, "tokens.bin"), "wb") as out:
            jobs: deque = deque()

            def finish() -> None:
                nonlocal n, chars
                cur, job = jobs.popleft()
                n = _append(out, docs, cur, job.result(), eos, dtype, n)
                size = sum(len(p[0]) for p in cur)
                chars += size
                progress.update(size)

            for i, chunk in enumerate(_chunks(pieces)):
                if i == 0:
                    enc.probe([p[0] for p in chunk if p[1]])
                jobs.append((chunk, pool.submit(_encode, chunk, enc)))
                if len(jobs) > ENCODERS:
                    finish()
            while jobs:
                finish()
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


def prepare(path: str, tokenizer, seq_len: int, eval_fraction: float = 0.1, *, field: str = "text",
            cache_dir: str | None = None, build: bool = True, progress: Progress = NULL_PROGRESS) -> Blocks:
    """Tokenize ``path`` into its token file (or reuse it), cut and split; :class:`SlimedgeError` when too short."""
    tf = token_file(path, tokenizer, field=field, cache_dir=cache_dir, build=build, progress=progress)
    n = tf.n_tokens
    if n // seq_len < 2:
        raise SlimedgeError(
            f"data {path} is too short: {n} tokens make {n // seq_len} block(s) of --seq-len {seq_len}; "
            f"need at least {2 * seq_len} tokens (one training and one held-out block): add text or lower --seq-len")
    cut, how = split_point(n, tf.docs[:-1], seq_len, eval_fraction)
    bin_file = os.path.join(tf.path, "tokens.bin")
    train = BlockView(tf.tokens, 0, cut // seq_len, seq_len, bin_file)
    held = BlockView(tf.tokens, cut, (n - cut) // seq_len, seq_len, bin_file)
    return Blocks(train=train, eval=held, n_tokens=n, n_documents=tf.n_documents, held_out_by=how,
                  token_file=tf.path)
