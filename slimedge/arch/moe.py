"""Mixture-of-experts layout: per-expert HF weights stacked into llama.cpp's 3-D expert tensors, streamed.

llama.cpp wants one tensor per layer and projection for all experts: ``blk.N.ffn_gate_exps`` /
``ffn_up_exps`` of NumPy shape ``[n_expert, n_ff_exp, n_embd]`` and ``ffn_down_exps`` of
``[n_expert, n_embd, n_ff_exp]`` (expert 0 first), plus the router ``ffn_gate_inp`` ``[n_expert, n_embd]``.
Hub checkpoints (and transformers 5's ``save_pretrained``) store one 2-D tensor per expert
(``...experts.{e}.w1.weight``); transformers' in-memory layout fuses them (``mlp.experts.gate_up_proj``
``[n_expert, 2·n_ff_exp, n_embd]``, gate rows first in each expert, and ``mlp.experts.down_proj``).

How: nothing is copied or concatenated up front. A :class:`StackedRef` presents a list of row ranges
of source tensors (one per expert, or one half of each expert of a fused tensor) as one tensor of the
stacked shape; its ``load_rows(start, stop)`` reads only the source rows that fall in that range, each
straight into its place in the caller's buffer. The converter's row-slice streaming therefore reads an
expert tensor slice by slice (a slice never holds more than ``SLICE_VALUES`` values, less than one
expert of a real model), so peak memory stays near one slice, never the whole layer.

:class:`MoEArch` is the mixin a family uses: it lists, per stacked tensor, the per-expert HF name
(``{bid}`` layer, ``{xid}`` expert) and the fused alternative, builds the stacked references before the
generic matcher (:meth:`slimedge.arch.base.Arch.tensors`) runs, and adds the expert metadata.
:class:`ExpertColumns` reads experts stored transposed (gpt-oss's fused [n_expert, n_embd, rows]) one
expert at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
from gguf import MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from .base import KV, U32, Arch, OutTensor, gguf_name


@dataclass(frozen=True)
class Part:
    """Rows ``[start, stop)`` of ``ref`` seen as ``[ref.n_rows, row length]``."""

    ref: object
    start: int
    stop: int


class StackedRef:
    """Several row ranges of source tensors read as one tensor of ``shape`` (rows concatenated in order).

    Has what :meth:`slimedge.arch.base.Arch.tensors` and the converter use of a
    :class:`slimedge.source.base.TensorRef`: name, shape, dtype, file, where, n_rows, load, load_rows. When every
    part is a quantized reference of one stored type (NVFP4 experts), it passes through as well
    (:mod:`slimedge.source.passthrough`): ``stored_type``, ``raw_rows`` (each part's GGML blocks into their place),
    ``extra_tensors`` (per-expert scales, :func:`slimedge.source.fp4src.stacked_scales`).
    """

    stored_type = None  # a float source: dequantized / converted as usual

    def __init__(self, name: str, shape: tuple[int, ...], parts: list[Part]):
        self.name, self.shape, self.parts = name, tuple(shape), list(parts)
        first = self.parts[0].ref
        self.file: Path = first.file
        self.dtype = getattr(first, "dtype", "F32")
        if sum(p.stop - p.start for p in self.parts) != self.n_rows:
            raise ValueError(f"{name}: parts hold {sum(p.stop - p.start for p in self.parts)} rows, "
                             f"shape {list(self.shape)} needs {self.n_rows}")
        stored = {getattr(p.ref, "stored_type", None) for p in self.parts}
        if len(stored) == 1 and None not in stored and all(hasattr(p.ref, "raw_rows") for p in self.parts):
            self.stored_type = stored.pop()
            self.keep_with_float = all(getattr(p.ref, "keep_with_float", False) for p in self.parts)

    @property
    def n_rows(self) -> int:
        return prod(self.shape[:-1])

    @property
    def where(self) -> str:
        files = sorted({Path(p.ref.file).name for p in self.parts})
        more = f" and {len(files) - 1} more file(s)" if len(files) > 1 else ""
        return f"{self.name} (stacked from {len(self.parts)} tensors: {self.parts[0].ref.name}, ...) in {files[0]}{more}"

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        return self.load_rows(0, self.n_rows, out).reshape(self.shape)

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """float32[stop - start, row length]: stacked rows ``[start, stop)``; each source range that
        overlaps them is read straight into its place in ``out`` (or a new buffer)."""
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        cols = self.shape[-1]
        n = stop - start
        buf = np.empty(n * cols, np.float32) if out is None else out.reshape(-1)[:n * cols]
        pos = 0  # first stacked row of the current part
        for p in self.parts:
            length = p.stop - p.start
            lo, hi = max(start, pos), min(stop, pos + length)
            if lo < hi:
                seg = buf[(lo - start) * cols:(hi - start) * cols]
                got = p.ref.load_rows(p.start + lo - pos, p.start + hi - pos, seg)
                if not np.may_share_memory(got, seg):  # a reference that ignores ``out``
                    seg[...] = np.asarray(got, np.float32).reshape(-1)
            pos += length
            if pos >= stop:
                break
        return buf.reshape(n, cols)

    def raw_rows(self, start: int, stop: int, step: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        """uint8[stop - start, row bytes]: the stored GGML blocks of stacked rows ``[start, stop)`` (a quantized
        stack only), each part's straight into its place in ``out`` (or a new buffer)."""
        from gguf import GGML_QUANT_SIZES

        if self.stored_type is None or step != 1 or not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: no stored rows [{start}, {stop}) step {step} of {self.stored_type}")
        block, size = GGML_QUANT_SIZES[self.stored_type]
        width, n = self.shape[-1] // block * size, stop - start
        buf = np.empty(n * width, np.uint8) if out is None else out.reshape(-1).view(np.uint8)[:n * width]
        pos = 0
        for p in self.parts:
            lo, hi = max(start, pos), min(stop, pos + p.stop - p.start)
            if lo < hi:
                seg = buf[(lo - start) * width:(hi - start) * width]
                got = p.ref.raw_rows(p.start + lo - pos, p.start + hi - pos, 1, seg)
                if not np.may_share_memory(got, seg):
                    seg[...] = np.asarray(got, np.uint8).reshape(-1)
            pos += p.stop - p.start
            if pos >= stop:
                break
        return buf.reshape(n, width)

    def extra_tensors(self, gguf_name: str) -> list[tuple[str, np.ndarray]]:
        """The scale tensors written beside the passed-through stack: its source's own for a stack of one tensor's
        rows, else one value per part (expert), as llama.cpp's converter writes stacked NVFP4 experts."""
        from ..source.fp4src import stacked_scales

        refs = list({id(p.ref): p.ref for p in self.parts}.values())
        return refs[0].extra_tensors(gguf_name) if len(refs) == 1 else stacked_scales(refs, gguf_name)


class ExpertColumns:
    """Columns ``first, first + step, ...`` of each expert of ``ref`` [n_expert, rows, cols] as the rows of a
    tensor [n_expert, n, rows] (transposed), or of a 2-D ``ref`` [n_expert, cols] as [n_expert, n] (biases)."""

    def __init__(self, name: str, ref, first: int, step: int):
        self.name, self.ref, self.first, self.step = name, ref, first, step
        self.file, self.dtype = ref.file, getattr(ref, "dtype", "F32")
        *lead, cols = ref.shape
        n = len(range(first, cols, step))
        self.shape = (lead[0], n, lead[1]) if len(lead) == 2 else (lead[0], n)
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1]))

    @property
    def where(self) -> str:
        return f"{self.name} (columns {self.first}::{self.step} of {self.ref.where})"

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        return self.load_rows(0, self.n_rows, out).reshape(self.shape)

    def _expert(self, e: int) -> np.ndarray:
        """float32[n, rows]: expert ``e``'s columns as rows (the last expert read is kept; read once into a
        local, so a reader thread replacing the cache meanwhile cannot hand back another expert)."""
        cached = self._cached
        if cached is None or cached[0] != e:
            rows = self.ref.shape[1]
            x = self.ref.load_rows(e * rows, (e + 1) * rows)[:, self.first::self.step]
            cached = self._cached = (e, np.ascontiguousarray(x.T))
        return cached[1]

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        cols = self.shape[-1]
        buf = np.empty((stop - start) * cols, np.float32) if out is None else out.reshape(-1)[:(stop - start) * cols]
        buf = buf.reshape(stop - start, cols)
        if len(self.shape) == 2:  # biases: rows of the source, some columns
            buf[...] = self.ref.load_rows(start, stop)[:, self.first::self.step]
            return buf
        n, row = self.shape[1], start
        while row < stop:
            e, j = divmod(row, n)
            take = min(n - j, stop - row)
            buf[row - start:row - start + take] = self._expert(e)[j:j + take]
            row += take
        return buf


@dataclass(frozen=True)
class Experts:
    """Where one stacked expert tensor comes from.

    ``name``: the (virtual) HF name the family's ``TENSORS`` table lists, with ``{bid}``;
    ``per_expert``: the HF name of one expert's 2-D weight, with ``{bid}`` and ``{xid}``;
    ``fused``: HF names of the transformers-style 3-D tensor ``[n_expert, k·rows, cols]`` (tried in
    order), of which this tensor is chunk ``chunk`` of ``chunks`` along each expert's rows.
    """

    name: str
    per_expert: str
    fused: tuple[str, ...] = ()
    chunk: int = 0
    chunks: int = 1


class MoEArch(Arch):
    """Mixin of MoE families: stacked expert tensors (:class:`Experts` in ``EXPERTS``), router aliases,
    expert metadata. ``n_expert`` / ``n_expert_used`` / ``n_ff_exp`` come from the config keys below."""

    EXPERTS: ClassVar[list[Experts]] = []
    # (alternative HF name, name the table uses), both with {bid}: e.g. transformers' in-memory router name
    ALIASES: ClassVar[list[tuple[str, str]]] = []
    N_EXPERT_KEYS: ClassVar[tuple[str, ...]] = ("num_local_experts", "num_experts")
    N_FF_EXP_KEY: ClassVar[str] = "intermediate_size"
    N_USED_KEYS: ClassVar[tuple[str, ...]] = ("num_experts_per_tok",)
    # llama.cpp's graph has no fallback to token_embd: a tied checkpoint gets the embedding stored twice
    OUTPUT_REQUIRED: ClassVar[bool] = False

    def is_moe_layer(self, bid: int) -> bool:
        """Whether layer ``bid`` has experts (families with leading dense layers override this)."""
        return True

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        n_expert = next((config[k] for k in self.N_EXPERT_KEYS if config.get(k) is not None), None)
        used = next((config[k] for k in self.N_USED_KEYS if config.get(k) is not None), None)
        try:
            self.n_expert, self.n_expert_used = int(n_expert), int(used)
            self.n_ff_exp = int(config[self.N_FF_EXP_KEY])
        except (TypeError, ValueError, KeyError):
            raise SlimedgeError(f"config.json: {hf_arch} needs {self.N_EXPERT_KEYS[0]}, {self.N_USED_KEYS[0]} "
                                f"and "
                                f"{self.N_FF_EXP_KEY} (found {n_expert!r}, {used!r}, "
                                f"{config.get(self.N_FF_EXP_KEY)!r}); fix config.json") from None
        if not 0 < self.n_expert_used <= self.n_expert or self.n_ff_exp <= 0:
            raise SlimedgeError(f"config.json: {hf_arch} with {self.n_expert} experts, {self.n_expert_used} "
                                f"used per token and expert size {self.n_ff_exp} is inconsistent; fix config.json")

    def expected_shape(self, tensor: MODEL_TENSOR, is_bias: bool):
        e, ff, d = self.n_expert, self.n_ff_exp, self.hp.n_embd
        shapes = {MODEL_TENSOR.FFN_GATE_EXP: (e, ff, d), MODEL_TENSOR.FFN_UP_EXP: (e, ff, d),
                  MODEL_TENSOR.FFN_DOWN_EXP: (e, d, ff), MODEL_TENSOR.FFN_GATE_INP: (e, d)}
        if tensor in shapes:
            return None if is_bias else shapes[tensor]
        return super().expected_shape(tensor, is_bias)

    def metadata(self) -> list[KV]:
        return super().metadata() + [KV(self.key(Keys.LLM.EXPERT_COUNT), self.n_expert, U32),
                                     KV(self.key(Keys.LLM.EXPERT_USED_COUNT), self.n_expert_used, U32)]

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        info.n_expert = self.n_expert
        return info

    def tensors(self, source):
        refs = dict(source.tensors)
        consumed: set[str] = set()
        for bid in self.own_layers():
            if not self.is_moe_layer(bid):
                continue
            for alt, name in self.ALIASES:
                a, n = alt.format(bid=bid), name.format(bid=bid)
                if a in refs and n not in refs:
                    refs[n] = refs[a]
                    consumed.add(a)
            for spec in self.EXPERTS:
                stacked, used = self._stack(spec, bid, refs, source)
                refs[spec.name.format(bid=bid)] = stacked
                consumed.update(used)
        for name in consumed:
            refs.pop(name, None)
        out = super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs))
        return with_output_copy(out) if self.OUTPUT_REQUIRED else out

    def _stack(self, spec: Experts, bid: int, refs: dict, source) -> tuple[StackedRef, list[str]]:
        """The stacked reference of one layer's ``spec`` and the source names it uses (every layer of
        these families has experts: a missing one is an error naming it)."""
        name = spec.name.format(bid=bid)
        for fused_t in spec.fused:
            fused = fused_t.format(bid=bid)
            ref = refs.get(fused)
            if ref is None:
                continue
            shape = tuple(ref.shape)
            if len(shape) != 3 or shape[0] != self.n_expert or shape[1] % spec.chunks:
                raise SlimedgeError(f"{ref.file}: tensor {fused} has shape {list(shape)}, expected "
                                    f"[{self.n_expert}, {spec.chunks} x rows, cols] ({self.n_expert} experts in "
                                    f"config.json); the config does not match the weights")
            rows = shape[1] // spec.chunks
            parts = [Part(ref, e * shape[1] + spec.chunk * rows, e * shape[1] + (spec.chunk + 1) * rows)
                     for e in range(self.n_expert)]
            return StackedRef(name, (self.n_expert, rows, shape[2]), parts), [fused]
        names = [spec.per_expert.format(bid=bid, xid=e) for e in range(self.n_expert)]
        found = [n for n in names if n in refs]
        missing = [n for n in names if n not in refs]
        if missing:
            raise SlimedgeError(f"{source.model_dir}: missing tensor {missing[0]} (expert weights of layer {bid}: "
                                f"{len(found)} of {self.n_expert} found), which {self.hf_arch} needs; the "
                                f"checkpoint is incomplete")
        shape = tuple(refs[names[0]].shape)
        for n in names:
            if tuple(refs[n].shape) != shape or len(shape) != 2:
                raise SlimedgeError(f"{refs[n].file}: tensor {n} has shape {list(refs[n].shape)}, expected a matrix "
                                    f"of {list(shape)} like expert 0; the checkpoint is damaged")
        parts = [Part(refs[n], 0, shape[0]) for n in names]
        return StackedRef(name, (self.n_expert, *shape), parts), names


def with_output_copy(out: list[OutTensor]) -> list[OutTensor]:
    """``out`` with ``output.weight`` read from the embedding when the checkpoint ties them (for llama.cpp
    graphs that require an output tensor); unchanged when the checkpoint has its own."""
    names = [t.name for t in out]
    if gguf_name(MODEL_TENSOR.OUTPUT, "weight") in names:
        return out
    emb = out[names.index(gguf_name(MODEL_TENSOR.TOKEN_EMBD, "weight"))]
    at = names.index(gguf_name(MODEL_TENSOR.OUTPUT_NORM, "weight")) + 1
    return out[:at] + [OutTensor(gguf_name(MODEL_TENSOR.OUTPUT, "weight"), emb.shape, emb.load,
                                 emb.origin + " (tied)", emb.load_rows, emb.row_group)] + out[at:]
