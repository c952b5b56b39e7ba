"""Streaming, atomic GGUF output on top of ``gguf.GGUFWriter``.

How: a GGUF file is header, metadata, tensor table, then aligned tensor data. Every tensor's byte
size follows from its shape and type, so the table is written before any weight is computed; tensor
data then follows one tensor at a time, whole (``write_tensor``) or in consecutive parts
(``write_tensor_part``, e.g. slices of rows), so memory stays near one slice. Everything goes to a hidden temporary
file in the target folder that is renamed over the target only when the last byte is written and
flushed; on any error or Ctrl-C the temporary file is removed and an existing target stays untouched.

Usage::

    with GGUFStreamWriter(out, arch="llama", overwrite=False) as w:
        w.add_kv(key, value, vtype)            # or w.gguf.add_* for the gguf helpers
        w.add_tensor_info("blk.0.attn_q.weight", (4096, 4096), GGMLQuantizationType.Q8_0)
        w.begin_data()
        w.write_tensor("blk.0.attn_q.weight", q_bytes)  # in table order
        # or part by part: w.write_tensor_part(name, rows_0_to_k_bytes); w.write_tensor_part(name, rest)
    # renamed into place here (commit), unless the block raised
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from math import prod
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFEndian, GGUFValueType, GGUFWriter
from gguf.gguf_writer import WriterState

from .errors import SlimedgeError

log = logging.getLogger(__name__)


_NUMPY_OF = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
             GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
             GGUFValueType.FLOAT32: "<f4", GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
             GGUFValueType.FLOAT64: "<f8", GGUFValueType.BOOL: "?"}


class _FastArrays(GGUFWriter):
    """``GGUFWriter`` that packs long metadata arrays (token lists, scores, merges) in bulk.

    The base class packs every item with its own ``struct.pack`` call (~1.5 s for a 32k vocabulary,
    several seconds for 150k); this produces the same little-endian bytes in one pass.
    """

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype != GGUFValueType.ARRAY or isinstance(val, bytes) or len(val) < 256 or self.endianess != GGUFEndian.LITTLE:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        ltype = sub_type if sub_type is not None else GGUFValueType.get_type(val[0])
        head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", ltype, len(val))
        if ltype in _NUMPY_OF:
            return head + np.asarray(val, dtype=_NUMPY_OF[ltype]).tobytes()
        if ltype == GGUFValueType.STRING:
            enc = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
            return head + b"".join(struct.pack("<Q", len(e)) + e for e in enc)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def tensor_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of ``shape`` (NumPy order; last dim = row length) stored as ``qtype``."""
    block, size = GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise SlimedgeError(f"row length {shape[-1]} is not a multiple of the {qtype.name} block size {block}")
    return prod(shape[:-1]) * (shape[-1] // block) * size


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


class GGUFStreamWriter:
    """Write one GGUF file tensor by tensor, atomically (see module docstring)."""

    def __init__(self, out: str | Path, arch: str, overwrite: bool = False):
        self.out = check_output_path(Path(out), overwrite)
        self.overwrite = overwrite
        self.arch = arch
        self.tmp: Path | None = None
        self.gguf: GGUFWriter | None = None  # the gguf package's writer (add_* helpers)
        self._order: list[tuple[str, int]] = []  # (name, nbytes) in table order
        self._next = 0  # index of the tensor being written
        self._done = 0  # bytes of tensor ``_next`` written so far

    # ---- context management: commit on success, clean up on anything else -----------------------

    def __enter__(self) -> "GGUFStreamWriter":
        try:
            fd, tmp = tempfile.mkstemp(dir=self.out.parent if str(self.out.parent) else ".",
                                       prefix=f".{self.out.name}.", suffix=".part")
            os.close(fd)
        except OSError as exc:
            raise SlimedgeError(f"{self.out}: cannot create a file in {self.out.parent}: "
                                f"{exc.strerror or exc}") from None
        self.tmp = Path(tmp)
        self.gguf = _FastArrays(self.tmp, self.arch)
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
        if self.gguf is not None:
            try:
                self.gguf.close()
            except Exception:  # closing a broken file must not mask the original error
                pass
        if self.tmp is not None:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
            self.tmp = None

    def commit(self) -> None:
        if self.tmp is None or self.gguf is None:
            return
        if self._next != len(self._order):
            missing = self._order[self._next][0]
            raise SlimedgeError(f"{self.out}: internal error: tensor {missing} was never written")
        try:
            self.gguf.flush()
            for f in self.gguf.fout or []:
                os.fsync(f.fileno())
            self.gguf.close()
            if self.out.exists() and not self.overwrite:
                raise SlimedgeError(f"{self.out}: appeared while converting; pass --overwrite to replace it")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp made it private; give it a normal file's mode
            os.replace(self.tmp, self.out)
        except OSError as exc:
            raise SlimedgeError(f"{self.out}: cannot write: {exc.strerror or exc}") from None
        self.tmp = None
        log.info("wrote %s", self.out)

    # ---- building the file -----------------------------------------------------------------------

    def add_kv(self, key: str, value, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> None:
        assert self.gguf is not None, "use GGUFStreamWriter in a with-block"
        self.gguf.add_key_value(key, value, vtype, sub_type)

    def add_tensor_info(self, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
        """Declare the next tensor (NumPy-order shape); returns its byte size."""
        assert self.gguf is not None, "use GGUFStreamWriter in a with-block"
        nbytes = tensor_nbytes(tuple(shape), qtype)
        self.gguf.add_tensor_info(name, tuple(int(d) for d in shape), np.dtype(np.float32), nbytes,
                                  raw_dtype=qtype)
        self._order.append((name, nbytes))
        return nbytes

    def begin_data(self) -> None:
        """Write header, metadata and tensor table; tensor data may follow."""
        assert self.gguf is not None
        try:
            self.gguf.write_header_to_file()
            self.gguf.write_kv_data_to_file()
            self.gguf.write_ti_data_to_file()
        except OSError as exc:
            raise SlimedgeError(f"{self.out}: cannot write: {exc.strerror or exc}") from None

    def write_tensor(self, name: str, data: np.ndarray) -> None:
        """Write the next tensor's bytes (any dtype; byte size must match its declared type)."""
        want_name, want_bytes = self._order[self._next] if self._next < len(self._order) else ("(none)", 0)
        if self._done or data.nbytes != want_bytes:
            raise SlimedgeError(f"{self.out}: internal error: got {name} ({data.nbytes} bytes), expected "
                                f"{want_name} ({want_bytes - self._done} bytes)")
        self.write_tensor_part(name, data)

    def write_tensor_part(self, name: str, data: np.ndarray) -> None:
        """Append the next bytes of tensor ``name`` (the next in table order, or the one in progress).

        Parts are written back to back; when they add up to the declared size the tensor is complete
        (padded to the alignment) and the next one may start. The bytes on disk are those of
        :meth:`write_tensor` with the parts joined.
        """
        assert self.gguf is not None
        g = self.gguf
        want_name, want_bytes = self._order[self._next] if self._next < len(self._order) else ("(none)", 0)
        if name != want_name or self._done + data.nbytes > want_bytes:
            raise SlimedgeError(f"{self.out}: internal error: got {name} ({data.nbytes} bytes), expected "
                                f"{want_name} ({want_bytes - self._done} more bytes)")
        if g.state not in (WriterState.TI_DATA, WriterState.WEIGHTS) or not g.fout:
            raise SlimedgeError(f"{self.out}: internal error: tensor data before begin_data()")
        fout = g.fout[0]
        try:
            if self._done == 0:  # the gguf writer's bookkeeping for one tensor, as write_tensor_data does it
                g.tensors[0].pop(name)
                g.write_padding(fout, fout.tell())
                g.state = WriterState.WEIGHTS
            np.ascontiguousarray(data).tofile(fout)
            self._done += data.nbytes
            if self._done == want_bytes:
                g.write_padding(fout, want_bytes)
                self._next += 1
                self._done = 0
        except OSError as exc:
            raise SlimedgeError(f"{self.out}: cannot write tensor {name}: {exc.strerror or exc}") from None
