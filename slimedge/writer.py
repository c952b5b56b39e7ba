"""Streaming, atomic GGUF output, written by slimedge itself (only ``gguf``'s constants are used).

How: a GGUF file (version 3, little-endian) is a header (magic, version, tensor count, key count),
the metadata (key string, value type, value), the tensor table (name, dimensions innermost first,
type, offset inside the data section), then the tensor data, each tensor starting at a multiple of
the alignment (32 bytes unless ``general.alignment`` says otherwise). Every tensor's byte size
follows from its shape and type, so the table is written before any weight is computed; tensor data
then follows one tensor at a time, whole (``write_tensor``) or in consecutive parts
(``write_tensor_part``, e.g. slices of rows), so memory stays near one slice. The bytes are those
``gguf.GGUFWriter`` writes for the same content (a test compares them), except that long metadata
arrays (token lists, scores, merges) are packed in bulk rather than item by item.

Everything goes to a hidden temporary sibling of the target (:mod:`slimedge.publish`) that is renamed
over the target only when the last byte is written and synced; on any error, Ctrl-C or SIGTERM the
temporary is removed and an existing target stays untouched.

Usage::

    with GGUFStreamWriter(out, arch="llama", overwrite=False) as w:
        w.add_kv(key, value, vtype)            # or the gguf-style helpers: w.add_token_list(tokens), ...
        w.add_tensor_info("blk.0.attn_q.weight", (4096, 4096), GGMLQuantizationType.Q8_0)
        w.begin_data()
        w.write_tensor("blk.0.attn_q.weight", q_bytes)  # in table order
        # or part by part: w.write_tensor_part(name, rows_0_to_k_bytes); w.write_tensor_part(name, rest)
    # renamed into place here (commit), unless the block raised

Misuse by the calling code (tensors out of order, wrong sizes, a tensor never written) is a bug and
raises ``RuntimeError``/``ValueError``; bad paths and disk errors are one-line ``SlimedgeError``s.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from string import ascii_letters, digits
from typing import Any, BinaryIO

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType, Keys

from .errors import SlimedgeError
from .publish import Publication
from .quant.types import tensor_nbytes

log = logging.getLogger(__name__)

V = GGUFValueType
GGUF_FILE_VERSION = 3  # the layout written here (gguf.GGUF_VERSION of every gguf release tested)
_SCALAR = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
           V.FLOAT32: "<f", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d", V.BOOL: "?"}
_NUMPY = {V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2", V.UINT32: "<u4", V.INT32: "<i4",
          V.FLOAT32: "<f4", V.UINT64: "<u8", V.INT64: "<i8", V.FLOAT64: "<f8", V.BOOL: "?"}
_INTEGER = {V.UINT8, V.INT8, V.UINT16, V.INT16, V.UINT32, V.INT32, V.UINT64, V.INT64}


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def _kind(t: type) -> GGUFValueType:
    """The GGUF type of a Python value's type, as ``GGUFValueType.get_type`` decides it."""
    if issubclass(t, (str, bytes, bytearray)):
        return V.STRING
    if issubclass(t, list):
        return V.ARRAY
    if issubclass(t, float):
        return V.FLOAT32
    if issubclass(t, bool):
        return V.BOOL
    if issubclass(t, int):
        return V.INT32
    raise ValueError(f"no GGUF type for Python values of type {t.__name__}")


def _string(s: str | bytes | bytearray) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _array(val: Sequence, sub_type: GGUFValueType | None) -> bytes:
    if not isinstance(val, Sequence):
        raise ValueError(f"a GGUF array must be a sequence, not {type(val).__name__}")
    if len(val) == 0:
        raise ValueError("a GGUF array cannot be empty")
    types = set(map(type, val))  # one pass in C; decides the item type and checks it
    if sub_type is not None:
        ltype = sub_type
    elif isinstance(val, bytes):
        ltype = V.UINT8
    else:
        kinds = {_kind(t) for t in types}
        if len(kinds) != 1:
            raise ValueError("all items of a GGUF array must have the same type")
        ltype = kinds.pop()
    head = struct.pack("<IQ", ltype, len(val))
    if isinstance(val, (bytes, bytearray)) and ltype == V.UINT8:
        return head + bytes(val)
    if ltype in _NUMPY:
        if ltype in _INTEGER and any(issubclass(t, float) for t in types):
            raise ValueError(f"float values in a GGUF {ltype.name} array")
        return head + np.asarray(val, dtype=_NUMPY[ltype]).tobytes()
    if ltype == V.STRING:
        return head + b"".join([_string(v) for v in val])
    if ltype == V.ARRAY:
        return head + b"".join([_array(v, None) for v in val])
    raise ValueError(f"cannot write GGUF arrays of {ltype!r}")


def pack_value(val: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> bytes:
    """The bytes of one metadata value (without its type tag)."""
    fmt = _SCALAR.get(vtype)
    if fmt is not None:
        return struct.pack(fmt, val)
    if vtype == V.STRING:
        return _string(val)
    if vtype == V.ARRAY:
        return _array(val, sub_type)
    raise ValueError(f"cannot write a GGUF value of type {vtype!r}")


def check_output_path(out: Path, overwrite: bool) -> Path:
    """Validate the target before any work: a file path in an existing, writable folder."""
    out = Path(out)
    if out.is_dir():
        raise SlimedgeError(f"{out}: is a directory; give a file name, e.g. {out / 'model.gguf'}")
    if out.exists() and not overwrite:
        raise SlimedgeError(f"{out}: already exists; pass --overwrite to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise SlimedgeError(f"{out}: folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise SlimedgeError(f"{out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SlimedgeError(f"{out}: folder {parent} is not writable")
    return out


class KeyHelpers:
    """The ``gguf.GGUFWriter`` metadata helpers slimedge uses (``Vocab.add_to``), on top of ``add_kv``.

    Same keys, types and skipping rules as gguf's: empty strings and empty arrays are not written.
    """

    def add_kv(self, key: str, value, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> None:
        raise NotImplementedError

    def add_string(self, key: str, val: str) -> None:
        if val:
            self.add_kv(key, val, V.STRING)

    def add_array(self, key: str, val: Sequence) -> None:
        if len(val):
            self.add_kv(key, val, V.ARRAY)

    def add_uint32(self, key: str, val: int) -> None:
        self.add_kv(key, val, V.UINT32)

    def add_bool(self, key: str, val: bool) -> None:
        self.add_kv(key, val, V.BOOL)

    def add_tokenizer_model(self, model: str) -> None:
        self.add_string(Keys.Tokenizer.MODEL, model)

    def add_tokenizer_pre(self, pre: str) -> None:
        self.add_string(Keys.Tokenizer.PRE, pre)

    def add_token_list(self, tokens: Sequence[str | bytes]) -> None:
        self.add_array(Keys.Tokenizer.LIST, tokens)

    def add_token_scores(self, scores: Sequence[float]) -> None:
        self.add_array(Keys.Tokenizer.SCORES, scores)

    def add_token_types(self, types: Sequence[int]) -> None:
        self.add_array(Keys.Tokenizer.TOKEN_TYPE, types)

    def add_token_merges(self, merges: Sequence[str | bytes]) -> None:
        self.add_array(Keys.Tokenizer.MERGES, merges)

    def add_bos_token_id(self, id: int) -> None:
        self.add_uint32(Keys.Tokenizer.BOS_ID, id)

    def add_eos_token_id(self, id: int) -> None:
        self.add_uint32(Keys.Tokenizer.EOS_ID, id)

    def add_unk_token_id(self, id: int) -> None:
        self.add_uint32(Keys.Tokenizer.UNK_ID, id)

    def add_sep_token_id(self, id: int) -> None:
        self.add_uint32(Keys.Tokenizer.SEP_ID, id)

    def add_pad_token_id(self, id: int) -> None:
        self.add_uint32(Keys.Tokenizer.PAD_ID, id)

    def add_mask_token_id(self, id: int) -> None:
        self.add_uint32(Keys.Tokenizer.MASK_ID, id)

    def add_add_bos_token(self, value: bool) -> None:
        self.add_bool(Keys.Tokenizer.ADD_BOS, value)

    def add_add_eos_token(self, value: bool) -> None:
        self.add_bool(Keys.Tokenizer.ADD_EOS, value)

    def add_add_space_prefix(self, value: bool) -> None:
        self.add_bool(Keys.Tokenizer.ADD_PREFIX, value)

    def add_chat_template(self, value: str | Sequence[dict]) -> None:
        """One template, or a list of ``{"name", "template"}``: ``default`` is the main one, others are named."""
        if not isinstance(value, str):
            default, names = None, {}
            for choice in value:
                name = "".join(c if c in ascii_letters + digits else "_" for c in choice.get("name", ""))
                template = choice.get("template")
                if not name or template is None:
                    continue
                if name == "default":
                    default = template
                else:
                    names[name] = None
                    self.add_string(Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=name), template)
            if names:
                self.add_array(Keys.Tokenizer.CHAT_TEMPLATES, list(names))
            if default is None:
                return
            value = default
        self.add_string(Keys.Tokenizer.CHAT_TEMPLATE, value)


class GGUFStreamWriter(KeyHelpers):
    """Write one GGUF file tensor by tensor, atomically (see module docstring)."""

    def __init__(self, out: str | Path, arch: str, overwrite: bool = False,
                 alignment: int = GGUF_DEFAULT_ALIGNMENT):
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment {alignment} is not a power of two")
        self.out = check_output_path(Path(out), overwrite)
        self.overwrite = overwrite
        self.arch = arch
        self.alignment = alignment
        self._kv: dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]] = {}
        self._order: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []  # table order
        self._names: set[str] = set()
        self._pub: Publication | None = None
        self._f: BinaryIO | None = None
        self._next = 0  # index of the tensor being written
        self._done = 0  # bytes of tensor ``_next`` written so far
        if arch:
            self.add_kv(Keys.General.ARCHITECTURE, arch, V.STRING)
        if alignment != GGUF_DEFAULT_ALIGNMENT:
            self.add_kv(Keys.General.ALIGNMENT, alignment, V.UINT32)

    @property
    def tmp(self) -> Path | None:
        """The temporary file being written (None outside the with-block)."""
        return self._pub.path if self._pub is not None else None

    # ---- context management: commit on success, clean up on anything else -----------------------

    def __enter__(self) -> "GGUFStreamWriter":
        self._pub = Publication(self.out, overwrite=self.overwrite)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()

    def abort(self) -> None:
        """Close and delete the temporary file (idempotent); the target is never touched."""
        if self._f is not None:
            try:
                self._f.close()
            except Exception:  # closing a broken file must not mask the original error
                pass
            self._f = None
        if self._pub is not None:
            self._pub.abort()
            self._pub = None

    def commit(self) -> None:
        if self._pub is None:
            return
        if self._f is None:
            raise RuntimeError(f"{self.out}: internal error: begin_data() was never called")
        if self._next != len(self._order):
            missing = self._order[self._next][0]
            raise RuntimeError(f"{self.out}: internal error: tensor {missing} was never written")
        try:
            self._f.close()
        except OSError as exc:
            raise SlimedgeError(f"{self.out}: cannot write: {exc.strerror or exc}") from None
        self._f = None
        self._pub.commit()  # fsync, rename into place
        self._pub = None
        log.info("wrote %s", self.out)

    # ---- building the file -----------------------------------------------------------------------

    def add_kv(self, key: str, value, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> None:
        """Add (or replace, keeping its place) one metadata key; must come before :meth:`begin_data`."""
        if self._f is not None:
            raise RuntimeError(f"{self.out}: internal error: metadata {key} added after begin_data()")
        if key in self._kv:
            log.warning("duplicated key %r, overwriting it with a new value of type %s", key, vtype.name)
        self._kv[key] = (value, vtype, sub_type)

    def add_tensor_info(self, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
        """Declare the next tensor (NumPy-order shape); returns its byte size."""
        if self._f is not None:
            raise RuntimeError(f"{self.out}: internal error: tensor {name} declared after begin_data()")
        if name in self._names:
            raise ValueError(f"duplicated tensor name {name!r}")
        shape = tuple(int(d) for d in shape)
        nbytes = tensor_nbytes(shape, qtype)
        self._names.add(name)
        self._order.append((name, shape, GGMLQuantizationType(qtype), nbytes))
        return nbytes

    def _header(self) -> bytes:
        out = bytearray(struct.pack("<IIQQ", GGUF_MAGIC, GGUF_FILE_VERSION, len(self._order), len(self._kv)))
        for key, (value, vtype, sub_type) in self._kv.items():
            out += _string(key) + struct.pack("<I", vtype) + pack_value(value, vtype, sub_type)
        offset = 0
        for name, shape, qtype, nbytes in self._order:
            out += _string(name) + struct.pack(f"<I{len(shape)}QIQ", len(shape), *reversed(shape), qtype, offset)
            offset += _pad(nbytes, self.alignment)
        if self._order:  # the data section starts aligned
            out += bytes(_pad(len(out), self.alignment) - len(out))
        return bytes(out)

    def begin_data(self) -> None:
        """Write header, metadata and tensor table; tensor data may follow."""
        if self._pub is None or self._pub.path is None:
            raise RuntimeError("internal error: use GGUFStreamWriter in a with-block")
        if self._f is not None:
            raise RuntimeError(f"{self.out}: internal error: begin_data() called twice")
        header = self._header()  # value errors before any byte is written
        try:
            self._f = open(self._pub.path, "wb")
            self._f.write(header)
        except OSError as exc:
            raise SlimedgeError(f"{self.out}: cannot write: {exc.strerror or exc}") from None

    def _expected(self) -> tuple[str, int]:
        """(name, byte size) of the tensor to be written next."""
        if self._next < len(self._order):
            name, _shape, _qtype, nbytes = self._order[self._next]
            return name, nbytes
        return "(none)", 0

    def write_tensor(self, name: str, data: np.ndarray) -> None:
        """Write the next tensor's bytes (any dtype; byte size must match its declared type)."""
        want_name, want_bytes = self._expected()
        if self._done or data.nbytes != want_bytes:
            raise RuntimeError(f"{self.out}: internal error: got {name} ({data.nbytes} bytes), expected "
                               f"{want_name} ({want_bytes - self._done} bytes)")
        self.write_tensor_part(name, data)

    def write_tensor_part(self, name: str, data: np.ndarray) -> None:
        """Append the next bytes of tensor ``name`` (the next in table order, or the one in progress).

        Parts are written back to back; when they add up to the declared size the tensor is complete
        (padded to the alignment) and the next one may start. The bytes on disk are those of
        :meth:`write_tensor` with the parts joined.
        """
        want_name, want_bytes = self._expected()
        if name != want_name or self._done + data.nbytes > want_bytes:
            raise RuntimeError(f"{self.out}: internal error: got {name} ({data.nbytes} bytes), expected "
                               f"{want_name} ({want_bytes - self._done} more bytes)")
        if self._f is None:
            raise RuntimeError(f"{self.out}: internal error: tensor data before begin_data()")
        try:
            self._f.write(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
            self._done += data.nbytes
            if self._done == want_bytes:
                self._f.write(bytes(_pad(want_bytes, self.alignment) - want_bytes))
                self._next += 1
                self._done = 0
        except OSError as exc:
            raise SlimedgeError(f"{self.out}: cannot write tensor {name}: {exc.strerror or exc}") from None
