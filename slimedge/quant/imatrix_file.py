"""Importance matrices (imatrix) in llama.cpp's file formats, and what llama-quantize makes of them.

An importance matrix holds, for the input of every weight matrix of a model, the per-column sum of
squared activations seen on calibration text and how many activations (token rows) were summed — one
count per expert for MoE tensors (``slimedge.calib`` computes one; llama.cpp's ``llama-imatrix`` too).

Formats (llama.cpp ``tools/imatrix/imatrix.cpp``, ``common/imatrix-loader.cpp``):

* **GGUF** (default): ``general.type = "imatrix"``, ``imatrix.datasets`` (string array),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32); per tensor, names sorted bytewise, an F32
  ``<tensor>.in_sum2`` of ne ``[n_cols, n_mat]`` (the raw sums) then an F32 ``<tensor>.counts`` of ne
  ``[1, n_mat]`` (trailing 1-dimensions dropped, as ggml writes them). No architecture key.
* **legacy .dat**: int32 entry count; per entry int32 name length, name, int32 ``ncall``, int32 value
  count, float32 values = ``sums / count * ncall`` (1 where the count is 0); then (optional) int32 chunk
  count and an int32-length-prefixed dataset name.

What llama-quantize uses (:meth:`Imatrix.importance`): GGUF ``sums / count`` per expert in float32
(1 for an expert never seen); legacy ``values / ncall``. :func:`importance_for` matches a model's
tensors to it as ``llama_model_quantize`` does (by GGUF name; the size must be ``n_cols * n_expert``),
with one-line errors for an imatrix of another model and a warning naming the tensors it does not
cover. No torch here: ``convert --imatrix`` stays light.

Usage::

    imx = read_imatrix("imatrix.gguf")         # or a legacy imatrix.dat
    imx.importance("blk.0.attn_q.weight")      # float32[n_cols * n_mat], None when absent
    write_imatrix("copy.gguf", imx); write_imatrix_legacy("copy.dat", imx)
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import SlimedgeError

log = logging.getLogger(__name__)

SUMS_SUFFIX, COUNTS_SUFFIX = ".in_sum2", ".counts"
KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
# what llama-quantize records in the quantized model (tools/quantize/quantize.cpp)
KEY_Q_FILE, KEY_Q_DATASET = "quantize.imatrix.file", "quantize.imatrix.dataset"
KEY_Q_ENTRIES, KEY_Q_CHUNKS = "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"
_KV_STR_MAX = 127  # llama_model_kv_override.val_str holds 127 bytes + NUL
DEFAULT_CHUNK_SIZE = 512  # llama-imatrix's default context; used to turn legacy values back into sums


@dataclass
class ImatrixEntry:
    """One tensor's statistics. ``sums``: float32[n_mat * n_cols] (expert-major); ``counts``: int64[n_mat].

    In a legacy file ``sums`` are the file's values (already divided by the count and times ``ncall``)
    and ``counts`` is ``[ncall]``.
    """

    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_mat(self) -> int:
        return int(self.counts.size)

    @property
    def n_cols(self) -> int:
        return int(self.sums.size // max(self.counts.size, 1))


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)  # GGUF tensor name -> statistics
    datasets: list[str] = field(default_factory=list)  # calibration data it was computed on
    chunk_count: int = 0  # chunks of text processed
    chunk_size: int = 0  # tokens per chunk (0 in legacy files)
    legacy: bool = False  # read from a legacy .dat file (values normalized, see ImatrixEntry)
    path: str | None = None  # the file it was read from / written to

    def importance(self, name: str) -> np.ndarray | None:
        """Column importance of tensor ``name`` as llama-quantize computes it: float32[n_mat * n_cols]."""
        e = self.entries.get(name)
        if e is None:
            return None
        if self.legacy:
            ncall = int(e.counts[0]) if e.counts.size else 0
            return (e.sums / np.float32(ncall)).astype(np.float32) if ncall > 0 else e.sums.astype(np.float32)
        sums = e.sums.reshape(e.n_mat, e.n_cols)
        counts = e.counts.astype(np.float32).reshape(-1, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(counts > 0, sums / np.where(counts > 0, counts, np.float32(1)), np.float32(1))
        return out.astype(np.float32).reshape(-1)

    def importances(self) -> dict[str, np.ndarray]:
        """Every entry's :meth:`importance` (name -> float32[n_mat * n_cols])."""
        return {name: self.importance(name) for name in self.entries}  # type: ignore[misc]

    def raw(self, chunk_size: int | None = None) -> "Imatrix":
        """This matrix as raw sums and counts (a legacy one scaled back by ``chunk_size`` as llama-imatrix
        does when it loads one); a GGUF-style matrix is returned as it is."""
        if not self.legacy:
            return self
        cs = int(chunk_size or self.chunk_size or DEFAULT_CHUNK_SIZE)
        entries = {n: ImatrixEntry((e.sums * np.float32(cs)).astype(np.float32),
                                   np.asarray([int(e.counts[0]) * cs], np.int64)) for n, e in self.entries.items()}
        return Imatrix(entries, list(self.datasets), self.chunk_count, cs, False, self.path)


# ---- reading -------------------------------------------------------------------------------------

def read_imatrix(path: str | os.PathLike) -> Imatrix:
    """Read a GGUF or legacy .dat importance matrix; anything else is a one-line :class:`SlimedgeError`."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise SlimedgeError(f"{p}: is a directory, not an imatrix file")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise SlimedgeError(f"{p}: no such file (an imatrix: `slimedge imatrix MODEL --data TEXT -o {p}`)") from None
    except OSError as exc:
        raise SlimedgeError(f"{p}: cannot read ({exc.strerror or exc})") from None
    imx = _read_gguf(p) if magic == b"GGUF" else _read_legacy(p)
    imx.path = p
    return imx


def _read_gguf(p: str) -> Imatrix:
    from ..gguf_info import read_info

    info = read_info(p)  # structure checked as llama.cpp's loader does; truncation is one line
    md = info.metadata
    kind = md.get("general.type")
    if kind is not None and kind != "imatrix":
        raise SlimedgeError(f"{p}: is a GGUF {kind} file (general.type = {kind!r}), not an importance matrix")
    by_name: dict[str, list] = {}
    for t in info.tensors:
        for suffix, slot in ((SUMS_SUFFIX, 0), (COUNTS_SUFFIX, 1)):
            if t.name.endswith(suffix):
                by_name.setdefault(t.name[: -len(suffix)], [None, None])[slot] = t
    if not by_name:
        raise SlimedgeError(f"{p}: no <tensor>.in_sum2 entries; this GGUF is not an importance matrix")
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in md]
    if missing:  # llama-quantize refuses such a file too
        raise SlimedgeError(f"{p}: missing imatrix metadata {', '.join(missing)}; re-create it with "
                            f"`slimedge imatrix` or llama-imatrix")
    datasets = md[KEY_DATASETS]
    datasets = [str(d) for d in datasets] if isinstance(datasets, list) else [str(datasets)]
    data = np.memmap(p, mode="r", dtype=np.uint8)
    entries: dict[str, ImatrixEntry] = {}
    try:
        for name, (sums_t, counts_t) in sorted(by_name.items()):
            if sums_t is None or counts_t is None:
                raise SlimedgeError(f"{p}: {name} has {'no .in_sum2' if sums_t is None else 'no .counts'} "
                                    f"tensor; the imatrix file is damaged")
            if sums_t.type != "F32" or counts_t.type != "F32":
                raise SlimedgeError(f"{p}: {name}: .in_sum2 and .counts must be F32 (found {sums_t.type}, "
                                    f"{counts_t.type}); the imatrix file is damaged")
            sums = np.frombuffer(data[sums_t.offset:sums_t.offset + sums_t.n_bytes], "<f4").astype(np.float32)
            cf = np.frombuffer(data[counts_t.offset:counts_t.offset + counts_t.n_bytes], "<f4")
            if cf.size == 0 or sums.size == 0 or sums.size % cf.size:
                raise SlimedgeError(f"{p}: {name}: {sums.size} sums do not split into {cf.size} count(s); "
                                    f"the imatrix file is damaged")
            if not (np.isfinite(sums).all() and np.isfinite(cf).all()) or (cf < 0).any() or (cf > 2.0**62).any():
                raise SlimedgeError(f"{p}: {name}: non-finite or negative values; the imatrix file is damaged "
                                    f"(re-create it)")
            counts = np.floor(np.abs(cf.astype(np.float64)) + 0.5).astype(np.int64)  # lround
            entries[name] = ImatrixEntry(sums, counts)
    finally:
        del data
    return Imatrix(entries, datasets, int(md[KEY_CHUNK_COUNT]), int(md[KEY_CHUNK_SIZE]), False)


class _Truncated(Exception):
    pass


def _read_legacy(p: str) -> Imatrix:
    raw = Path(p).read_bytes()
    not_imatrix = (f"{p}: not an importance matrix (neither GGUF nor llama.cpp's legacy .dat); pass a file "
                   f"written by `slimedge imatrix` or llama-imatrix")
    pos = 0

    def take(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > len(raw):
            raise _Truncated()
        vals = struct.unpack_from(fmt, raw, pos)
        pos += n
        return vals[0] if len(vals) == 1 else vals

    entries: dict[str, ImatrixEntry] = {}
    try:
        n_entries = take("<i")
        if n_entries < 1 or n_entries > len(raw) // 12:
            raise SlimedgeError(not_imatrix)
        for i in range(n_entries):
            n = take("<i")
            if n < 1 or n > 4096:
                raise SlimedgeError(not_imatrix if i == 0 else f"{p}: entry {i + 1}: bad name length {n}; "
                                    f"the imatrix file is damaged")
            if pos + n > len(raw):
                raise _Truncated()
            try:
                name = raw[pos:pos + n].decode("utf-8")
            except UnicodeDecodeError:
                raise SlimedgeError(not_imatrix if i == 0 else f"{p}: entry {i + 1}: name is not text; the "
                                    f"imatrix file is damaged") from None
            pos += n
            ncall, nval = take("<i"), take("<i")
            if nval < 1:
                raise SlimedgeError(f"{p}: {name}: {nval} values; the imatrix file is damaged")
            if pos + 4 * nval > len(raw):
                raise _Truncated()
            sums = np.frombuffer(raw, "<f4", nval, pos).astype(np.float32)
            pos += 4 * nval
            if not np.isfinite(sums).all():
                raise SlimedgeError(f"{p}: {name}: non-finite values; the imatrix file is damaged (re-create it)")
            entries[name] = ImatrixEntry(sums, np.asarray([ncall], np.int64))
    except _Truncated:
        raise SlimedgeError(f"{p}: truncated imatrix file (ends inside entry {len(entries) + 1}); "
                            f"re-create it") from None
    chunk_count, datasets = 0, []
    if pos + 4 <= len(raw):  # optional trailer: chunk count, dataset name
        chunk_count = struct.unpack_from("<i", raw, pos)[0]
        pos += 4
        if pos + 4 <= len(raw):
            n = struct.unpack_from("<i", raw, pos)[0]
            pos += 4
            if 0 < n <= len(raw) - pos:
                datasets.append(raw[pos:pos + n].decode("utf-8", errors="replace"))
    return Imatrix(entries, datasets, int(chunk_count), 0, True)


# ---- writing -------------------------------------------------------------------------------------

def _sorted_names(imx: Imatrix) -> list[str]:
    return sorted(imx.entries, key=lambda s: s.encode("utf-8"))  # std::sort on std::string: bytewise


def write_imatrix(path: str | os.PathLike, imx: Imatrix, *, overwrite: bool = False) -> Path:
    """Write ``imx`` in llama.cpp's GGUF imatrix format (what llama-imatrix writes), atomically."""
    from ..writer import GGUFStreamWriter

    imx = imx.raw()
    F32, STR, U32 = GGMLQuantizationType.F32, GGUFValueType.STRING, GGUFValueType.UINT32
    names = _sorted_names(imx)
    with GGUFStreamWriter(path, arch="", overwrite=overwrite) as w:
        w.add_kv("general.type", "imatrix", STR)
        w.add_kv(KEY_DATASETS, list(imx.datasets) or [""], GGUFValueType.ARRAY, STR)
        w.add_kv(KEY_CHUNK_COUNT, int(imx.chunk_count), U32)
        w.add_kv(KEY_CHUNK_SIZE, int(imx.chunk_size), U32)
        for name in names:
            e = imx.entries[name]
            n_mat, n_cols = e.n_mat, e.n_cols
            # ggml writes n_dims = up to the last dimension > 1 (at least 1)
            w.add_tensor_info(name + SUMS_SUFFIX, (n_mat, n_cols) if n_mat > 1 else (n_cols,), F32)
            w.add_tensor_info(name + COUNTS_SUFFIX, (n_mat, 1) if n_mat > 1 else (1,), F32)
        w.begin_data()
        for name in names:
            e = imx.entries[name]
            w.write_tensor(name + SUMS_SUFFIX, np.ascontiguousarray(e.sums, dtype="<f4"))
            w.write_tensor(name + COUNTS_SUFFIX, e.counts.astype("<f4"))
    return Path(path)


def write_imatrix_legacy(path: str | os.PathLike, imx: Imatrix, *, overwrite: bool = False,
                         chunk_size: int | None = None) -> Path:
    """Write ``imx`` in llama.cpp's legacy .dat format (``llama-imatrix --output-format dat``)."""
    from ..publish import publish_file
    from ..writer import check_output_path

    out = check_output_path(Path(path), overwrite)
    parts: list[bytes] = []
    n = 0
    if imx.legacy:  # already normalized: written back as read
        for name in _sorted_names(imx):
            e = imx.entries[name]
            b = name.encode("utf-8")
            parts.append(struct.pack("<i", len(b)) + b + struct.pack("<ii", int(e.counts[0]), e.sums.size)
                         + np.ascontiguousarray(e.sums, "<f4").tobytes())
            n += 1
    else:
        cs = int(chunk_size or imx.chunk_size or DEFAULT_CHUNK_SIZE)
        for name in _sorted_names(imx):
            e = imx.entries[name]
            if e.counts.size == 0 or not e.counts.any():
                log.warning("%s: entry %s has no data - skipping", out, name)
                continue
            ncall = int((int(e.counts.max()) + cs - 1) // cs)
            count = np.repeat(e.counts.astype(np.float32), e.n_cols)
            value = e.sums.astype(np.float32)
            zero = count == 0
            value, count = np.where(zero, np.float32(1), value), np.where(zero, np.float32(1), count)
            vals = ((value / count) * np.float32(ncall)).astype("<f4")
            b = name.encode("utf-8")
            parts.append(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, vals.size) + vals.tobytes())
            n += 1
    ds = (imx.datasets[-1] if imx.datasets else "").encode("utf-8")
    blob = struct.pack("<i", n) + b"".join(parts) + struct.pack("<i", int(imx.chunk_count)) + \
        struct.pack("<i", len(ds)) + ds
    with publish_file(out, overwrite=overwrite) as tmp:
        tmp.write_bytes(blob)
    return out


# ---- use by the quantizer ------------------------------------------------------------------------

def _is_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def importance_for(imx: Imatrix, tensors, requires=lambda name, qtype: False,
                   model_names=None) -> dict[str, np.ndarray]:
    """Importance of each quantized tensor, as ``llama_model_quantize`` looks it up.

    ``tensors``: (GGUF name, NumPy shape, target type) of the tensors that will be quantized.
    ``requires(name, qtype)``: whether that tensor must have one (llama.cpp: Q2_K in a Q2_K_S file).
    Returns name -> float32[n_mat, n_cols] (n_mat: experts of a 3-D tensor, else 1). A size that does
    not match (an imatrix of another model) is an error, except for ``token_embd`` (llama.cpp ignores
    it there); so is an imatrix that covers none of the tensors, or misses a required one. Tensors it
    does not cover are named in one warning (``token_embd``/``output``, which llama-imatrix never
    measures by default, are left out of it). ``model_names`` (every tensor name of the model): an
    imatrix with entries for tensors the model does not have was computed on another model (one whose
    widths happen to match, e.g. deeper) and is refused.
    """
    where = imx.path or "the importance matrix"
    if model_names is not None:
        _check_same_model(imx, where, set(model_names))
    out: dict[str, np.ndarray] = {}
    uncovered: list[str] = []
    for name, shape, qtype in tensors:
        n_cols = int(shape[-1])
        n_mat = int(shape[0]) if len(shape) == 3 else 1
        imp = imx.importance(name)
        if imp is None:
            if requires(name, qtype):
                raise SlimedgeError(f"{where}: has no entry for {name}, which --type needs an importance matrix "
                                    f"for; compute the imatrix on this model")
            if not _is_token_embd(name) and name != "output.weight":
                uncovered.append(name)
            continue
        if imp.size != n_cols * n_mat:
            if _is_token_embd(name):
                continue
            got = imx.entries[name]
            raise SlimedgeError(f"{where}: {name} has {got.n_cols} columns x {got.n_mat} in the imatrix but "
                                f"{n_cols} x {n_mat} in the model; the imatrix is for another model")
        out[name] = imp.reshape(n_mat, n_cols)
    measurable = [n for n, _, _ in tensors if not _is_token_embd(n) and n != "output.weight"]
    if measurable and not any(n in out for n in measurable):
        raise SlimedgeError(f"{where}: covers none of the model's tensors (e.g. {measurable[0]}); the imatrix "
                            f"is for another model")
    if uncovered:
        more = f" and {len(uncovered) - 5} more" if len(uncovered) > 5 else ""
        log.warning("%s: no importance data for %d quantized tensor(s), quantized without it: %s%s", where,
                    len(uncovered), ", ".join(uncovered[:5]), more)
    return out


def _check_same_model(imx: Imatrix, where: str, model_names: set[str]) -> None:
    foreign = sorted(n for n in imx.entries if n not in model_names)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        made = f"computed on {', '.join(imx.datasets)!r}, {imx.chunk_count} chunks; " if imx.datasets else ""
        raise SlimedgeError(f"{where}: has entries for {len(foreign)} tensor(s) this model does not have "
                            f"({', '.join(foreign[:3])}{more}); {made}the imatrix is for another model: "
                            f"compute one on this model (`slimedge imatrix MODEL --data TEXT`)")


def quantize_keys(imx: Imatrix) -> list[tuple[str, object, GGUFValueType]]:
    """The ``quantize.imatrix.*`` keys llama-quantize writes into the model, in its order and types."""
    def clip(s: str) -> str:
        return s.encode("utf-8")[:_KV_STR_MAX].decode("utf-8", errors="ignore")

    STR, U32 = GGUFValueType.STRING, GGUFValueType.UINT32
    keys: list[tuple[str, object, GGUFValueType]] = []
    if imx.path:
        keys.append((KEY_Q_FILE, clip(imx.path), STR))
    if imx.datasets:
        keys.append((KEY_Q_DATASET, clip(imx.datasets[0]), STR))
    keys.append((KEY_Q_ENTRIES, len(imx.entries), U32))
    if imx.chunk_count > 0:
        keys.append((KEY_Q_CHUNKS, int(imx.chunk_count), U32))
    return keys
