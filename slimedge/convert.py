"""Convert a Hugging Face model folder (or an F32/F16/BF16 GGUF) to a GGUF file, one pass, streaming.

Public API::

    from slimedge.convert import convert, plan
    from slimedge.quant.mixes import QuantSpec
    p = plan("TinyLlama", QuantSpec("Q4_K_M"))       # types and sizes, no weights read
    r = convert("TinyLlama", "tiny.gguf", QuantSpec("Q8_0"), threads=4)

How: the source is opened lazily (``slimedge.source``), its architecture table (``slimedge.arch``)
maps names/metadata and says which tensors exist; ``slimedge.quant.mixes.choose_types`` picks a type
per tensor. The writer declares every tensor first (sizes follow from shape and type), then the
tensors stream through in slices of whole rows (about ``SLICE_VALUES`` float32 values each, aligned to
the rows a layout transform needs together, e.g. one attention head for Llama's q/k permutation; a
tensor whose transform needs all of it goes whole). A background thread reads and checks slice *k+1*
(disk, bf16 widening, transform, NaN/Inf) into one of two reused float32 buffers while slice *k* is
quantized and appended to its tensor, so I/O and compute overlap and memory stays near two slices,
whatever the model's size. Quantized blocks never straddle rows, so the bytes are those of quantizing
each tensor whole. The output appears (atomic rename) only when complete. A vision-language checkpoint's
projector is written after it, beside it, as llama.cpp's mmproj when ``mmproj=`` asks (``slimedge.mmproj``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFValueType, Keys

from . import __version__
from .arch.base import KV, OutTensor
from .errors import SlimedgeError
from .progress import NULL_PROGRESS, Progress
from .quant.mixes import ModelInfo, QuantSpec, TensorSpec, choose_types, file_type
from .quant.types import tensor_nbytes
from .writer import GGUFStreamWriter, check_output_path

log = logging.getLogger(__name__)
STR, U32 = GGUFValueType.STRING, GGUFValueType.UINT32


@dataclass
class PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # NumPy order
    qtype: GGMLQuantizationType
    nbytes: int  # bytes in the output file (without alignment padding)
    origin: str  # source tensor, for messages
    passthrough: bool = False  # a quantized source's stored blocks, copied unchanged

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Plan:
    """What a conversion will write: one type and size per tensor, without reading weights."""

    source: Path
    arch: str  # GGUF architecture
    name: str  # general.name
    spec: QuantSpec
    file_type: int  # general.file_type
    tensors: list[PlannedTensor] = field(default_factory=list)
    model: ModelInfo | None = None  # the source's hyper-parameters (one reading: config.json or GGUF metadata)
    # --imatrix: GGUF name -> float32[n_expert or 1, row length] (llama-quantize's sums / counts), and the
    # matrix itself (slimedge.quant.imatrix_file.Imatrix); empty / None without one
    importance: dict[str, np.ndarray] = field(default_factory=dict)
    imatrix: object | None = None

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.total_bytes / max(self.n_params, 1)

    def table(self) -> str:
        """Human-readable listing: one line per tensor, then totals."""
        w = max((len(t.name) for t in self.tensors), default=4)
        lines = [f"{'tensor':<{w}}  {'shape':>18}  {'type':<6} {'MB':>9}"]
        for t in self.tensors:
            shape = "x".join(str(d) for d in t.shape)
            lines.append(f"{t.name:<{w}}  {shape:>18}  {t.qtype.name:<6} {t.nbytes / 1e6:9.2f}")
        lines.append(f"{len(self.tensors)} tensors, {self.n_params / 1e6:.2f} M parameters, "
                     f"{self.total_bytes / 1e6:.2f} MB of tensor data, {self.bits_per_weight:.2f} bits per weight "
                     f"({self.arch}, --type {self.spec.ftype})")
        if self.model is not None and self.model.n_expert:  # *_exps tensors: [experts, rows, row length]
            lines.append(f"{self.model.n_expert} experts per MoE layer; expert tensors are listed as "
                         f"experts x rows x row length")
        kept = sum(t.passthrough for t in self.tensors)
        if kept:
            lines.append(f"{kept} tensors keep the checkpoint's stored blocks unchanged (no float round trip)")
        if self.imatrix is not None:
            lines.append(f"importance matrix {self.imatrix.path or '(in memory)'}: {len(self.imatrix.entries)} "
                         f"entries, {self.imatrix.chunk_count} chunks; used for {len(self.importance)} tensors")
        return "\n".join(lines)


@dataclass
class ConvertResult:
    out: Path
    plan: Plan
    seconds: float  # wall time of the whole conversion
    file_bytes: int  # size of the written file
    mmproj: object | None = None  # slimedge.mmproj.MmprojResult: the vision projector written beside, if any

    @property
    def mb_per_s(self) -> float:
        return self.file_bytes / 1e6 / max(self.seconds, 1e-9)


@dataclass
class _Prepared:
    """A source opened and mapped to GGUF names; nothing read yet."""

    path: Path
    arch: str
    name: str
    metadata: list[KV]
    tensors: list[OutTensor]
    model: ModelInfo
    # () -> (writer -> None) that adds the tokenizer.* keys; None when metadata already has them
    load_vocab: Callable[[], Callable[[object], None]] | None


def _prepare(src: str | Path, source_hook: Callable | None = None) -> _Prepared:
    from .source import is_gguf
    from .source.hub import resolve_source

    path = resolve_source(src)  # a Hub model id: its snapshot in the local Hugging Face cache
    if is_gguf(path):
        if source_hook is not None:
            raise SlimedgeError(f"{path}: a LoRA adapter is merged into a Hugging Face base folder, not a GGUF")
        return _prepare_gguf(path)
    if path.is_file():
        raise SlimedgeError(f"{path}: expected a Hugging Face model folder or a .gguf file")
    return _prepare_hf(path, source_hook)


def _source_metadata(name: str, config: dict, hf_arch: str, dtypes: set[str], hub_repo: str | None = None
                     ) -> list[KV]:
    kv = [KV(Keys.General.TYPE, "model", STR), KV(Keys.General.NAME, name, STR),
          KV("slimedge.version", __version__, STR),
          KV("slimedge.source.architecture", hf_arch, STR),
          KV("slimedge.source.dtype", ",".join(sorted(dtypes)), STR)]
    hub_id = hub_repo or config.get("_name_or_path")
    if isinstance(hub_id, str) and hub_id.count("/") == 1 and not hub_id.startswith((".", "/")):
        kv.append(KV(Keys.General.SOURCE_REPO_URL, f"https://huggingface.co/{hub_id}", STR))
    return kv


def _prepare_hf(path: Path, source_hook: Callable | None = None) -> _Prepared:
    from .arch import get_arch
    from .source.hf import HFSource

    source = HFSource(path)
    arch = get_arch(source.config, str(path / "config.json"))
    if source_hook is not None:  # e.g. slimedge.adapter's --merge: base tensors with a LoRA delta folded in
        source_hook(source, arch)
    tensors = arch.tensors(source)
    name = source.name
    dtypes = {t.dtype for t in source.tensors.values()}
    from .source.card import general_metadata

    metadata = (_source_metadata(name, source.config, arch.hf_arch, dtypes, source.hub_repo)
                + general_metadata(path, [(t.name, t.shape) for t in tensors], source.hub_repo) + arch.metadata())

    def load_vocab():
        vocab = _load_vocab(path, source.config, arch.hp.n_vocab)
        return vocab.add_to

    return _Prepared(path, arch.arch, name, metadata, tensors, arch.model_info(), load_vocab)


def _prepare_gguf(path: Path) -> _Prepared:
    from .source.gguf_src import GGUFSource

    source = GGUFSource(path)
    metadata = [KV(k, v, t, sub) for k, (v, t, sub) in source.metadata.items()]
    tensors = [OutTensor(ref.name, ref.shape, ref.load, ref.where, ref.load_rows, 1)
               for ref in source.tensors.values()]
    return _Prepared(path, source.arch, source.name, metadata, tensors, source.model_info(), None)


def _load_vocab(model_dir: Path, config: dict, n_vocab: int):
    from .vocab import load_vocab

    return load_vocab(model_dir, config, n_vocab)


def _plan(prep: _Prepared, spec: QuantSpec, imatrix=None) -> Plan:
    if imatrix is not None:  # an importance matrix changes a few mix rules (QuantSpec.has_imatrix)
        from dataclasses import replace

        from .quant.imatrix_file import Imatrix, read_imatrix

        imatrix = imatrix if isinstance(imatrix, Imatrix) else read_imatrix(imatrix)
        spec = replace(spec, has_imatrix=True)
    specs = [TensorSpec(t.name, t.shape) for t in prep.tensors]
    types = choose_types(specs, spec, prep.model)
    prep.tensors, types, kept = _stored_blocks(prep.tensors, types)
    planned = [PlannedTensor(t.name, t.shape, q, tensor_nbytes(t.shape, q), t.origin, k)
               for t, q, k in zip(prep.tensors, types, kept)]
    p = Plan(prep.path, prep.arch, prep.name, spec, file_type(spec), planned, prep.model)
    if imatrix is not None:
        from .quant.imatrix_file import importance_for
        from .quant.mixes import requires_imatrix
        from .quant.types import FLOAT_TYPES

        quantized = [(t.name, t.shape, t.qtype) for t in planned if t.qtype not in FLOAT_TYPES]
        p.importance = importance_for(imatrix, quantized, lambda n, q: requires_imatrix(n, q, spec),
                                      model_names=[t.name for t in planned])
        p.imatrix = imatrix
    return p


def _stored_blocks(tensors: list[OutTensor], types: list) -> tuple[list[OutTensor], list, list[bool]]:
    """Where a quantized source's blocks pass through unchanged: a tensor whose planned type is its stored
    type (or, for NVFP4, a float type: llama.cpp's converter keeps NVFP4 weights), when the architecture's
    transform only reorders its rows; its per-tensor scales follow it as F32 tensors. -> (tensors, types,
    passes through)."""
    from .quant.types import FLOAT_TYPES

    out_t, out_q, kept = [], [], []
    for t, q in zip(tensors, types):
        pt, keep = t.passthrough, False
        if pt is not None and pt.row_order(t.shape) is not False:
            if q in FLOAT_TYPES and pt.keep_with_float:
                q = pt.stored_type
            keep = q == pt.stored_type
        out_t.append(t), out_q.append(q), kept.append(keep)
        for name, value in pt.extra_tensors(t.name) if keep else ():
            out_t.append(OutTensor(name, value.shape, lambda out=None, v=value: v, f"scale of {t.origin}"))
            out_q.append(GGMLQuantizationType.F32), kept.append(False)
    return out_t, out_q, kept


def _load_stored(t: OutTensor, out: np.ndarray, job: _Job) -> np.ndarray:
    """A passed-through tensor's stored bytes (whole or rows [start, stop)), read in the reader thread into the
    slot ``out`` (fewer bytes than the slice's float32 values)."""
    start, stop = (0, int(np.prod(t.shape[:-1]))) if job.whole else (job.start, job.stop)
    return t.passthrough.raw_rows(t.shape, start, stop, out)


def plan(src: str | Path, spec: QuantSpec = QuantSpec(), imatrix=None, source_hook: Callable | None = None) -> Plan:
    """Types and sizes of every output tensor (reads headers and config only, never weights).

    ``imatrix``: an importance matrix (path or ``slimedge.quant.imatrix_file.Imatrix``), checked against
    the model here (one-line errors for another model's)."""
    return _plan(_prepare(src, source_hook), spec, imatrix)


SLICE_VALUES = 1 << 22  # float32 values per slice (16 MiB): large enough for the quantizer's threads


@dataclass(frozen=True)
class _Job:
    """One read: rows [start, stop) of tensor ``index`` (as [rows, row length]), or all of it (``whole``)."""

    index: int
    start: int = 0
    stop: int = 0
    whole: bool = True

    def values(self, t: OutTensor) -> int:
        return int(np.prod(t.shape)) if self.whole else (self.stop - self.start) * t.shape[-1]


def _jobs(tensors: list[OutTensor], budget: int) -> list[_Job]:
    """The reads of a conversion, in file order: slices of whole rows (``row_group``-aligned) of about
    ``budget`` values, or whole tensors where slicing is not possible."""
    jobs: list[_Job] = []
    for i, t in enumerate(tensors):
        g = t.row_group
        rows = int(np.prod(t.shape[:-1])) if len(t.shape) >= 2 else 0
        if t.load_rows is None or g <= 0 or rows == 0 or rows % g:
            jobs.append(_Job(i))
            continue
        per = max(g, budget // max(t.shape[-1], 1) // g * g)  # a multiple of g, at least one group
        jobs += [_Job(i, a, min(a + per, rows), False) for a in range(0, rows, per)]
    return jobs


def _slots(tensors: list[OutTensor], jobs: list[_Job]) -> list[np.ndarray]:
    """Two reusable float32 buffers of the largest read's size: slice *k* encoded, *k+1* being read.

    Reusing them instead of allocating every slice afresh avoids page-faulting fresh memory over and
    over (as costly as the reading itself); untouched pages of np.empty cost nothing.
    """
    n = max((j.values(tensors[j.index]) for j in jobs), default=0)
    return [np.empty(n, np.float32), np.empty(n, np.float32)]


def _load_checked(t: OutTensor, out: np.ndarray | None = None, job: _Job = _Job(0)) -> np.ndarray:
    """Read one tensor or slice (runs in the reader thread) and refuse NaN/Inf, naming the tensor."""
    if job.whole:
        x, want = t.load(out=out), tuple(t.shape)
    else:
        x, want = t.load_rows(job.start, job.stop, out), (job.stop - job.start, t.shape[-1])
    if tuple(x.shape) != want:
        raise SlimedgeError(f"{t.origin}: has shape {list(x.shape)}, expected {list(want)}")
    # a float64 sum is finite iff every value is (float32 magnitudes cannot overflow it); no temporary
    if not np.isfinite(np.add.reduce(x, axis=None, dtype=np.float64)):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        where = "" if job.whole else f" (rows {job.start}-{job.stop - 1})"
        raise SlimedgeError(f"{t.origin}: {bad} NaN/Inf value(s) in the weights{where}; the checkpoint is "
                            f"damaged (re-download or re-export it)")
    return x


def _encode(x: np.ndarray, qtype: GGMLQuantizationType, name: str, threads: int | None,
            importance: np.ndarray | None = None, first_row: int = 0, rows_per_mat: int = 0) -> np.ndarray:
    """Quantize rows ``x`` (rows ``first_row``... of the tensor); ``importance``: float32[n_mat, row length],
    matrix ``m`` (an expert of a 3-D tensor) covering rows ``[m * rows_per_mat, (m + 1) * rows_per_mat)``."""
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    from .quant import quantize  # the active backend (C kernels when built), threads passed through

    if importance is None:
        return quantize(x, qtype, threads=threads, what=name)
    if importance.shape[0] == 1:
        return quantize(x, qtype, imatrix=importance[0], threads=threads, what=name)
    x = x.reshape(-1, x.shape[-1])  # an expert's rows use that expert's slice (never straddling two)
    parts, r = [], 0
    while r < x.shape[0]:
        m = (first_row + r) // rows_per_mat
        stop = min(x.shape[0], (m + 1) * rows_per_mat - first_row)
        parts.append(np.asarray(quantize(x[r:stop], qtype, imatrix=importance[m], threads=threads, what=name)))
        r = stop
    return np.concatenate([p.reshape(-1) for p in parts])


def _value_type(value) -> GGUFValueType:
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        return GGUFValueType.UINT64 if value >= 0 else GGUFValueType.INT64
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    return STR


def convert(src: str | Path, out: str | Path, spec: QuantSpec = QuantSpec(), *, threads: int | None = None,
            overwrite: bool = False, progress: Progress = NULL_PROGRESS, imatrix=None,
            source_hook: Callable | None = None, mmproj: str | None = None) -> ConvertResult:
    """Convert ``src`` (HF folder or float GGUF) to ``out`` with the types ``spec`` chooses.

    ``mmproj`` (f16, bf16, q8_0 or f32): for a vision-language checkpoint, also write its vision projector as
    llama.cpp's mmproj GGUF beside ``out`` (``slimedge.mmproj``); None: the text model only.

    ``imatrix`` (path or ``Imatrix``): importance weights for the quantizers, as ``llama-quantize --imatrix``
    uses them (same bytes), and its ``quantize.imatrix.*`` keys in the output. ``source_hook(source, arch)``:
    called on a Hugging Face source before its tensors are mapped (it may replace ``source.tensors`` entries).
    """
    t0 = time.monotonic()
    out = check_output_path(Path(out), overwrite)
    write_mmproj = None
    if mmproj is not None:  # its type and output path are checked before anything is written
        from .mmproj import mmproj_beside

        write_mmproj = mmproj_beside(src, out, mmproj, overwrite=overwrite, progress=progress, threads=threads)
    prep = _prepare(src, source_hook)
    p = _plan(prep, spec, imatrix)
    add_vocab = prep.load_vocab() if prep.load_vocab else None  # tokenizer errors before any output

    with GGUFStreamWriter(out, prep.arch, overwrite=overwrite) as w:
        for kv in prep.metadata:
            w.add_kv(kv.key, kv.value, kv.vtype, kv.sub_type)
        w.add_kv(Keys.General.FILE_TYPE, p.file_type, U32)
        w.add_kv(Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION, U32)
        for key, value in spec.metadata.items():  # e.g. an auto mix's slimedge.mix.* (llama.cpp ignores them)
            w.add_kv(key, value, _value_type(value))
        if p.imatrix is not None:
            from .quant.imatrix_file import quantize_keys

            for key, value, vtype in quantize_keys(p.imatrix):  # as llama-quantize records it
                w.add_kv(key, value, vtype)
        if add_vocab is not None:
            add_vocab(w)
        for t in p.tensors:
            w.add_tensor_info(t.name, t.shape, t.qtype)
        w.begin_data()

        progress.start(p.total_bytes, unit="B", desc=f"convert {prep.name}")
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimedge-read")
        jobs = _jobs(prep.tensors, SLICE_VALUES)
        slots = _slots(prep.tensors, jobs)

        def read(k: int):  # read k goes to slot k % 2: never the slot being encoded
            j = jobs[k]
            if p.tensors[j.index].passthrough:  # stored blocks: copied as they are
                return pool.submit(_load_stored, prep.tensors[j.index], slots[k % 2], j)
            return pool.submit(_load_checked, prep.tensors[j.index], slots[k % 2], j)

        try:
            pending = read(0) if jobs else None
            for k, j in enumerate(jobs):
                t, planned = prep.tensors[j.index], p.tensors[j.index]
                x = pending.result()
                pending = read(k + 1) if k + 1 < len(jobs) else None
                imp = p.importance.get(t.name)
                data = x if planned.passthrough else _encode(  # done with x before slot k % 2 is reused
                    x, planned.qtype, t.name, threads, imp, j.start, t.shape[-2] if len(t.shape) == 3 else 0)
                del x
                w.write_tensor_part(t.name, data)
                progress.update(data.nbytes, label=t.name)
                del data
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            progress.close()
            del slots
    size = out.stat().st_size
    log.info("%s: %d tensors, %.1f MB in %.1f s", out, len(p.tensors), size / 1e6, time.monotonic() - t0)
    projector = write_mmproj() if write_mmproj is not None else None
    return ConvertResult(out, p, time.monotonic() - t0, size, projector)
