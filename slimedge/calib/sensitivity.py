"""Per-tensor sensitivity of a model to quantization, measured in torch; and the quality-driven auto mix.

:func:`measure` runs the Hugging Face model (transformers, float32, on ``--device``) over calibration text
once to keep the unquantized next-token log-probabilities; the cost of a (tensor, candidate type) is the
mean KL(unquantized || quantized) per token with only that weight replaced by its fake-quantized copy —
``slimedge.quant.quantize`` then ``dequantize`` (the NumPy/C quantizers that write the GGUF, with the
importance matrix when one is given), so the weights are exactly those the file will hold. Three methods:

* ``exhaustive`` (the reference): one whole-model forward per (tensor, candidate);
* ``layerwise``: the forward of a tensor in block *i* starts at block *i* from cached inputs, and
  candidates dominated on a cheap proxy (bigger, not better) are not run (:mod:`.sensitivity_fast`);
* ``proxy`` (the default): one such partial forward per tensor calibrates a batched, row-sampled
  output-error proxy that gives every other candidate's cost (:mod:`.sensitivity_fast`); :func:`auto_allocation` then
  measures exactly the prices its allocation decides on and allocates again (:mod:`.refine`).

Why the Hugging Face layout is enough: GGUF's layout transforms of the supported architectures only
reorder or concatenate *rows* (Llama's q/k rope permutation, Phi-3's fused tensors are fused in HF
already), and quantization blocks run along rows, so quantizing the HF weight gives the same rows as
quantizing the GGUF tensor. Each GGUF tensor is matched to its HF weight through the converter's own
table (:func:`slimedge.convert._prepare`), and the shapes must agree.

:func:`auto_allocation` puts it together for ``convert --type auto``: the plan, the budget
(``--target-bpw`` / ``--target-size``), the sensitivities (cached per (tensor, type) in a JSON file keyed
by the model's files, the text, the importance matrix, the method and the settings, so another budget or
more candidate types measure only what is missing) and :func:`slimedge.quant.allocate.allocate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Mapping

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..quant.allocate import DEFAULT_CANDIDATES, Allocation, Sensitivity, allocate, budget_bytes, candidate_types, quantizable

log = logging.getLogger(__name__)

DEFAULT_CTX = 256  # tokens per calibration sequence
DEFAULT_CHUNKS = 8  # calibration sequences
BATCH = 4  # sequences per forward pass


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, or every ``.txt``/``.md`` file of a folder (sorted, joined by blank lines)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".md") and f.is_file())
        if not files:
            raise SlimedgeError(f"{p}: no .txt or .md files for calibration text")
        return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    if not p.is_file():
        raise SlimedgeError(f"{p}: calibration text not found; give a text file or a folder of .txt files")
    return p.read_text(encoding="utf-8", errors="replace")


def _hf_names(src: Path) -> tuple[object, dict[str, str]]:
    """(the converter's prepared source, GGUF name -> HF weight name) for the quantizable tensors."""
    from ..convert import _prepare

    prep = _prepare(src)
    if prep.load_vocab is None:  # a GGUF source: no torch model to run
        raise SlimedgeError(f"{src}: --type auto measures sensitivities with the Hugging Face model; give the "
                            "HF model folder, not a GGUF file")
    return prep, {t.name: t.origin.rsplit(" in ", 1)[0] for t in prep.tensors}


def _chunks(tok, text: str, ctx: int, n_chunks: int):
    import torch

    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id
    step = ctx - 1 if bos is not None else ctx
    n = min(n_chunks, len(ids) // step)
    if n < 1:
        raise SlimedgeError(f"calibration text has {len(ids)} tokens, fewer than one sequence of {ctx}; "
                            "give a longer text")
    rows = [([bos] if bos is not None else []) + ids[i * step:(i + 1) * step] for i in range(n)]
    return torch.tensor(rows, dtype=torch.long)


METHODS = ("proxy", "layerwise", "exhaustive")  # fastest first; exhaustive is the reference


def resolve_device(device: str | None) -> str:
    """``None``/``auto``: cuda when torch sees one, else cpu; ``cuda`` without one is a user error."""
    import torch

    d = (device or "auto").strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise SlimedgeError(f"--device {device}: torch sees no CUDA device here; use --device cpu")
    if not (d == "cpu" or d.startswith("cuda")):
        raise SlimedgeError(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    return d


def measure(src: str | Path, types: Mapping[str, list[str]] | None = None, text: str = "", *,
            imatrix: Mapping[str, object] | None = None, ctx: int = DEFAULT_CTX, chunks: int = DEFAULT_CHUNKS,
            threads: int | None = None, method: str = "proxy", device: str | None = None,
            progress: Progress = NULL_PROGRESS) -> Sensitivity:
    """KL increase of each (tensor, type) alone (see the module docstring).

    ``types``: GGUF tensor name -> candidate types (default: every quantizable tensor with
    :data:`~slimedge.quant.allocate.DEFAULT_CANDIDATES` after fallbacks). ``imatrix``: GGUF tensor name ->
    per-column importance (float32[row length], llama.cpp's mean squared activation), used to quantize.
    ``method``: ``exhaustive`` (one whole forward per pair), ``layerwise`` or ``proxy``
    (:mod:`slimedge.calib.sensitivity_fast`)."""
    from ..threads import torch_threads

    if method not in METHODS + ("exact",):  # exact: every listed pair by a partial forward (.refine)
        raise SlimedgeError(f"--sensitivity {method!r}: expected one of {', '.join(METHODS)}")
    torch_threads(threads)  # before torch loads: OpenMP reads its wait policy once (slimedge/threads.py)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..convert import plan as make_plan

    src = Path(src)
    dev = resolve_device(device)
    t0 = time.monotonic()
    _, hf = _hf_names(src)
    p = make_plan(src)
    shapes = {t.name: t.shape for t in p.tensors}
    if types is None:
        types = {t.name: candidate_types(t.name, t.shape) for t in quantizable(p)}
    from transformers.utils import logging as hf_logging

    tok = AutoTokenizer.from_pretrained(str(src))
    tok.model_max_length = 1 << 60  # the text is cut into ctx-token sequences below, never run whole
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # library code does not draw: progress goes to ``progress``
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval().to(dev)
    params = dict(model.named_parameters(remove_duplicate=False))
    batch = _chunks(tok, text, ctx, chunks)
    from .hf_weights import resolve

    where = resolve(params, {n: hf[n] for n in types if n in hf}, shapes)  # views of fused weights join params
    hf = {n: w for n, w in where.items() if w is not None}
    unread = {n: {q: 0.0 for q in c} for n, c in types.items() if n in where and where[n] is None}
    run = {n: c for n, c in types.items() if n not in unread}
    exact: dict[str, dict[str, float]] = {}
    if method == "exhaustive":
        costs = _exhaustive(model, params, hf, run, batch.to(dev), imatrix, threads, progress)
    else:
        from .sensitivity_fast import measure_fast

        costs, how = measure_fast(model, params, hf, run, batch, batch_size=BATCH, device=dev,
                                imatrix=imatrix, threads=threads, shapes=shapes, method=method,
                                progress=progress)
        if method == "proxy":  # tensors the proxy cannot price (fused experts, ...) were measured exactly
            exact = {n: dict(costs[n]) for n, d in how.items() if d["how"] == "exact"}
    costs.update(unread)  # tensors no torch weight holds (llama.cpp never reads them): every type costs 0
    sec = time.monotonic() - t0
    log.info("sensitivity (%s, %s) of %d tensors measured on %d tokens in %.1f s", method, dev, len(costs),
             batch.numel(), sec)
    return Sensitivity(costs=costs, model=str(src), n_tokens=int(batch.numel()), imatrix=imatrix is not None,
                       seconds=round(sec, 2), method=method, exact=exact)


def _exhaustive(model, params, hf, types, batch, imatrix, threads, progress) -> dict[str, dict[str, float]]:
    """One whole-model forward per (tensor, candidate): the reference measurement."""
    import numpy as np
    import torch

    from ..quant import dequantize, quantize

    def logprobs():
        with torch.inference_mode():
            return torch.cat([torch.log_softmax(model(input_ids=batch[i:i + BATCH]).logits.float(), -1)
                              for i in range(0, len(batch), BATCH)])

    ref = logprobs()
    p_ref = ref.exp()
    neg_ent = (p_ref * ref).sum(-1)  # sum p log p per position

    def kl() -> float:
        with torch.inference_mode():
            out = []
            for i in range(0, len(batch), BATCH):
                lq = torch.log_softmax(model(input_ids=batch[i:i + BATCH]).logits.float(), -1)
                out.append(neg_ent[i:i + BATCH] - (p_ref[i:i + BATCH] * lq).sum(-1))
            return float(torch.cat(out).mean())

    total = sum(len(v) for v in types.values())
    progress.start(total, unit="runs", desc="sensitivity")
    costs: dict[str, dict[str, float]] = {}
    try:
        for name, cands in types.items():
            hf_name = hf.get(name)
            w = params.get(hf_name) if hf_name else None
            if w is None:
                raise RuntimeError(f"{name}: no torch parameter {hf_name!r} in the transformers model")
            orig = w.detach().clone()
            x = orig.cpu().numpy().astype(np.float32, copy=False).reshape(-1, orig.shape[-1])
            imp = None
            if imatrix is not None and name in imatrix:
                imp = np.ascontiguousarray(np.asarray(imatrix[name], dtype=np.float32).reshape(-1))
            costs[name] = {}
            for q in cands:
                wq = dequantize(quantize(x, q, imatrix=imp, threads=threads, what=name), q, x.shape[-1])
                with torch.no_grad():
                    w.copy_(torch.from_numpy(wq.reshape(orig.shape)).to(w.device))
                costs[name][q] = max(0.0, kl())
                progress.update(1, label=f"{name} {q}")
            with torch.no_grad():
                w.copy_(orig)
    finally:
        progress.close()
    return costs


def _key(src: Path, text: str, imatrix, method: str, ctx: int, chunks: int) -> str:
    h = hashlib.sha256()
    for f in sorted(src.glob("*.safetensors")) + [src / "config.json"]:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(hashlib.sha256(text.encode()).digest())
    if imatrix is not None:
        for k in sorted(imatrix):
            h.update(k.encode())
            h.update(memoryview(__import__("numpy").ascontiguousarray(imatrix[k], dtype="float32")).cast("B"))
    h.update(json.dumps([method, ctx, chunks]).encode())
    return h.hexdigest()[:16]


def importance(src: Path, imatrix) -> dict | None:
    """GGUF name -> per-column importance from an imatrix (path, ``Imatrix`` or such a dict already), as
    the converter matches it to the model (dense models: one row per tensor)."""
    if imatrix is None or isinstance(imatrix, dict):
        return imatrix
    from ..convert import plan as make_plan
    from ..quant.mixes import QuantSpec

    return {k: v[0] if getattr(v, "ndim", 1) == 2 else v
            for k, v in make_plan(src, QuantSpec("Q8_0"), imatrix=imatrix).importance.items()}


def sensitivity(src: str | Path, text: str, *, imatrix=None, types=DEFAULT_CANDIDATES, ctx: int = DEFAULT_CTX,
                chunks: int = DEFAULT_CHUNKS, cache: str | Path | None = None, threads: int | None = None,
                method: str = "proxy", device: str | None = None, progress: Progress = NULL_PROGRESS
                ) -> Sensitivity:
    """:func:`measure` with ``types`` for every quantizable tensor. ``cache`` (a JSON file) holds the cost of
    each (tensor, type) measured with the same model files, text, importance matrix, method and settings:
    those are reused, only the missing pairs are measured (a second budget, or more candidate types)."""
    from ..convert import plan as make_plan

    src = Path(src)
    imatrix = importance(src, imatrix)
    key = _key(src, text, imatrix, method, ctx, chunks)
    p = make_plan(src)
    per = {t.name: candidate_types(t.name, t.shape, types, has_imatrix=imatrix is not None and t.name in imatrix)
           for t in quantizable(p)}
    old = None
    if cache is not None and Path(cache).is_file():
        old = Sensitivity.load(cache)
        if old.key != key:
            log.info("%s was measured with other inputs; measuring again", cache)
            old = None
    have = old.costs if old is not None else {}
    missing = {n: [q for q in c if q not in have.get(n, {})] for n, c in per.items()}
    missing = {n: c for n, c in missing.items() if c}
    if not missing:
        log.info("reusing sensitivities from %s", cache)
        return old
    if old is not None:
        log.info("%s: measuring %d missing (tensor, type) pairs", cache, sum(map(len, missing.values())))
    s = measure(src, missing, text, imatrix=imatrix, ctx=ctx, chunks=chunks, threads=threads, method=method,
                device=device, progress=progress)
    if old is not None:
        for n, c in old.costs.items():
            s.costs[n] = {**c, **s.costs.get(n, {})}
        s.seconds = round(s.seconds + old.seconds, 2)
        s.exact = {n: {**old.exact.get(n, {}), **s.exact.get(n, {})} for n in {*old.exact, *s.exact}}
    s.key = key
    if cache is not None:
        s.save(cache)
    return s


def auto_allocation(src: str | Path, text: str, *, target_bpw: float | None = None,
                    target_size: str | int | None = None, imatrix=None, types=DEFAULT_CANDIDATES,
                    ctx: int = DEFAULT_CTX, chunks: int = DEFAULT_CHUNKS, cache: str | Path | None = None,
                    threads: int | None = None, method: str = "proxy", device: str | None = None,
                    refine: int | None = None, progress: Progress = NULL_PROGRESS) -> Allocation:
    """The quality-driven mix of ``src`` within the budget (``allocation.spec()`` is its QuantSpec).

    With the proxy, the prices that decide the allocation are then measured exactly (:mod:`.refine`): at most
    ``refine`` partial forwards (None: :func:`.refine.default_runs`; 0: none)."""
    from ..convert import plan as make_plan
    from ..quant.mixes import QuantSpec

    if not text.strip():
        raise SlimedgeError("--type auto needs calibration text (--calib FILE) to measure sensitivities")
    if refine is not None and refine < 0:
        raise SlimedgeError(f"--refine {refine}: expected a number of exact measurements >= 0")
    base = make_plan(src)
    imp = importance(Path(src), imatrix)  # GGUF name -> importance: the tensors it covers
    budget, how = budget_bytes(lambda mix: make_plan(src, QuantSpec(mix), imatrix=imatrix),
                               target_bpw=target_bpw, target_size=target_size)
    s = sensitivity(src, text, imatrix=imp, types=types, ctx=ctx, chunks=chunks, cache=cache,
                    threads=threads, method=method, device=device, progress=progress)

    def alloc_with(costs):
        return allocate(base, costs, budget, target=how, types=types, has_imatrix=set(imp or ()),
                        extra={"calib_tokens": s.n_tokens, "imatrix": bool(imatrix is not None),
                               "sensitivity": s.method})

    alloc = alloc_with(s.costs)
    if method != "proxy":
        if refine:
            log.warning("--refine %d: only the proxy's prices are refined; --sensitivity-method %s measures "
                        "every price exactly already", refine, method)
        return alloc
    return refine_allocation(src, text, s, base, alloc_with, alloc, imatrix=imp, ctx=ctx, chunks=chunks,
                             threads=threads, device=device, refine=refine, cache=cache, progress=progress)


def refine_allocation(src, text: str, s: Sensitivity, base, alloc_with, alloc: Allocation, *, imatrix, ctx: int,
                      chunks: int, threads: int | None, device: str | None, refine: int | None,
                      cache: str | Path | None, progress: Progress = NULL_PROGRESS) -> Allocation:
    """``alloc`` (``alloc_with(s.costs)``, proxy prices ``s``) refined by exact measurements (:mod:`.refine`): at
    most ``refine`` (None: :func:`.refine.default_runs`; 0: none); the new exact prices saved to ``cache``.
    ``imatrix``: GGUF name -> importance, as measured."""
    if refine == 0:
        return alloc
    from gguf import GGMLQuantizationType as T

    from ..quant.types import tensor_nbytes
    from .refine import default_runs
    from .refine import refine as refine_mix

    shapes = {t.name: t.shape for t in base.tensors}
    nbytes = {n: {q: tensor_nbytes(shapes[n], T[q]) for q in c} for n, c in s.costs.items()
              if any(c.values())}  # all-zero prices: no torch weight holds it (llama.cpp never reads it)

    def measure_exact(ask):
        got = measure(src, ask, text, imatrix=imatrix, ctx=ctx, chunks=chunks, threads=threads, method="exact",
                      device=device, progress=progress)
        s.seconds = round(s.seconds + got.seconds, 2)
        return got.costs

    n_exact = sum(map(len, s.exact.values()))
    alloc, used = refine_mix(alloc, s, alloc_with, measure_exact, nbytes,
                             default_runs(nbytes) if refine is None else refine)
    alloc.extra["refined"] = used
    if cache is not None and sum(map(len, s.exact.values())) > n_exact:
        s.save(cache)
    return alloc
