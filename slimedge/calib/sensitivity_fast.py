"""Sensitivities at real model sizes: cached block inputs, partial forwards and a calibrated proxy.

The exhaustive measurement (:func:`slimedge.calib.sensitivity.measure`) runs the whole model once per
(tensor, candidate type). Here the float model runs once, with hooks keeping

* each decoder block's input for every calibration batch (and what the block returned), so a tensor of
  block *i* is measured by running only blocks *i..end* from the cached input (the blocks before it are
  swapped for modules that return their cached outputs): the same KL as a whole forward, for about
  (L - i) / L of its cost. What a block hands to later blocks outside its output is kept too: Gemma 3n/4's
  KV-sharing blocks store their K/V in the ``shared_kv_states`` mapping the model passes every block, and the
  last blocks attend with it instead of their own; a skipped block puts back the K/V it stored in the
  reference run, so the partial forward is exact there too (per-layer embeddings and AltUp's streams need
  nothing: the first are computed before the blocks, the second are part of each block's output);
* each linear layer's input on a subsample of the calibration tokens (``proxy_tokens``).

Then, per tensor:

1. **Proxy** for every candidate type, all candidates in one batched matmul: the output error
   ``E(q) = mean_tokens sum_r F_r ((W_q - W) x)_r²``, each output weighted by a diagonal Fisher ``F`` of the
   model's log-likelihood w.r.t. that output (:meth:`Runner._fisher`: one backward per calibration batch, with
   labels sampled from the model itself), estimated on a fixed subsample of the weight's rows
   (``proxy_rows``; only these rows are quantized, so trying 20 types costs little). Unweighted, the error
   treats every output alike and its allocations scored 1.22x the exhaustive one's KL on the demo teacher at
   two budgets; weighted, 1.10x and 1.14x (other label samples: 0.87-1.35x; docs/benchmarks.md). For the embedding the
   "input" is the calibration tokens themselves (the squared error of the looked-up rows).
2. **Pruning by dominance**: a candidate no smaller than another with no lower proxy error cannot be the
   better choice; it is not measured.
3. **Calibration**: KL(unquantized || only this tensor quantized) is measured exactly (partial forward) for
   one reference candidate (``method="proxy"``, the middle survivor by size) or for every survivor
   (``method="layerwise"``). With the proxy each type's cost is ``scale * E(q)``, ``scale = KL_ref / E(ref)``
   (KL is quadratic in a small output perturbation, as E is). The scale of a kind of block tensor
   (``attn_q``, ``ffn_down``, ...) is calibrated at ``CALIB_DEPTHS`` blocks spread over the depth and
   interpolated (log-linear) for the blocks between, so the partial forwards cost O(depth), not O(depth²);
   these runs score the first ``CALIB_BATCHES`` batches only (a scale needs fewer tokens than a ranking).
   A dominated candidate gets the cost of the candidate that dominates it (a hair more), so the
   allocation never prefers it.

Tensors whose module is not a plain ``nn.Linear``/``nn.Embedding`` (fused expert tensors, ...) are measured
exactly for every candidate. Everything runs on ``device`` (``cuda`` when asked and present); the
quantizers run on the CPU (the bytes the file will hold).
"""

from __future__ import annotations

import logging
import re

from ..progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)

PROXY_ROWS = 256  # weight rows quantized per candidate for the proxy error
PROXY_TOKENS = 512  # calibration tokens whose linear inputs are kept for the proxy
CALIB_DEPTHS = 3  # blocks per tensor kind whose proxy scale is calibrated exactly (the rest interpolated)
CALIB_POINTS = 1  # exact points per calibrated tensor: the middle candidate (2: and the smallest, fits an exponent)
FISHER = True  # weight the proxy's output errors by a diagonal Fisher of each Linear's output (Runner._fisher)
FISHER_SAMPLES = 1  # sampled labels per position for the Fisher (their squared gradients averaged)
FISHER_SEED = 1  # of the label sampling
CALIB_BATCHES = 1  # calibration batches (of 4 sequences) the proxy's exact runs score: a scale, not a ranking
REFINE_BATCHES = 1  # and those the allocation's refinement scores (method "exact", slimedge.calib.refine)
_BLK = re.compile(r"^blk\.(\d+)\.")
SHARED = "shared_kv_states"  # the keyword under which Gemma 3n/4 pass every block the K/V later blocks reuse


def _skip(runner: "Runner", j: int):
    """A module standing in for decoder block j: it returns what block j returned in the reference run for
    the current batch (so the blocks before the measured one cost nothing)."""
    import torch

    class Skip(torch.nn.Module):
        def forward(self, *args, **kwargs):
            if runner.block_shared[j]:
                kwargs[SHARED].update(runner.block_shared[j][runner.cur])
            return runner.block_out[j][runner.cur]

    return Skip()


class Runner:
    """The float model, the calibration batches, the reference log-probabilities and the cached
    activations; :meth:`kl` measures the KL with the model's current weights from a block on."""

    def __init__(self, model, batch, batch_size: int, device: str, proxy_tokens: int = PROXY_TOKENS,
                 fisher: bool = FISHER):
        import torch

        self.model, self.device, self.cur = model, device, 0
        self.batches = [batch[i:i + batch_size].to(device) for i in range(0, len(batch), batch_size)]
        self.layers = _decoder_layers(model)
        self.modules = dict(model.named_modules())
        self.block_out = [[] for _ in self.layers]
        self.block_shared = [[] for _ in self.layers]  # per block, per batch: the shared K/V entries it stored
        self.inputs: dict[str, object] = {}  # module name -> [tokens, in] float32 on device
        self.token_ids = batch.reshape(-1)
        hooks, seen = [], {}
        for j, layer in enumerate(self.layers):
            hooks.append(layer.register_forward_pre_hook(lambda m, a, kw, j=j: self._before(j, kw), with_kwargs=True))
            hooks.append(layer.register_forward_hook(lambda m, a, kw, out, j=j: self._after(j, kw, out),
                                                     with_kwargs=True))
        n_tok = batch.numel()
        gen = torch.Generator().manual_seed(0)
        pick = torch.randperm(n_tok, generator=gen)[:proxy_tokens].sort().values
        per = batch[:batch_size].numel()  # tokens per batch (the last may be shorter)
        self._picks = [(pick[(pick >= k * per) & (pick < (k + 1) * per)] - k * per).to(device)
                       for k in range(len(self.batches))]
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                def keep(m, args, name=name):
                    x = args[0].detach().reshape(-1, args[0].shape[-1])
                    idx = self._picks[self.cur]
                    seen.setdefault(name, []).append(x[idx[idx < x.shape[0]]].float())
                hooks.append(mod.register_forward_pre_hook(keep))
        try:
            with torch.inference_mode():
                ref = []
                for k, b in enumerate(self.batches):
                    self.cur = k
                    ref.append(torch.log_softmax(model(input_ids=b).logits.float(), -1))
        finally:
            for h in hooks:
                h.remove()
        self.inputs = {name: torch.cat(xs) for name, xs in seen.items()}
        self.p_ref = [r.exp() for r in ref]
        self.neg_ent = [(p * r).sum(-1) for p, r in zip(self.p_ref, ref)]
        self.fisher = self._fisher() if fisher else {}

    def _fisher(self) -> dict:
        """Per Linear, at the proxy's tokens: the squared gradient of the log-probability of a token sampled
        from the model's own distribution w.r.t. the layer's output, ``[tokens, out]``, averaged over
        ``FISHER_SAMPLES`` samples (a diagonal Fisher: KL(ref || perturbed) ~ 1/2 sum F dy^2 for a small output
        change dy). One forward and backward per calibration batch, no parameter gradients."""
        import torch

        grads: dict[str, list] = {}
        hooks, req = [], {p: p.requires_grad for p in self.model.parameters()}
        gen = torch.Generator().manual_seed(FISHER_SEED)

        def emb_hook(m, args, out):
            return out.detach().requires_grad_()

        for name, mod in self.model.named_modules():
            if isinstance(mod, torch.nn.Embedding):
                hooks.append(mod.register_forward_hook(emb_hook))
            elif isinstance(mod, torch.nn.Linear):
                def keep(m, args, out, name=name):
                    idx = self._picks[self.cur]
                    if out.requires_grad:
                        out.register_hook(lambda g: grads.setdefault((name, self.cur), []).append(
                            g.detach().reshape(-1, g.shape[-1])[idx[idx < g.shape[:-1].numel()]].float() ** 2))
                hooks.append(mod.register_forward_hook(keep))
        try:
            for p in req:
                p.requires_grad_(False)
            for k, b in enumerate(self.batches):
                self.cur = k
                logp = torch.log_softmax(self.model(input_ids=b).logits.float(), -1).flatten(0, -2)
                ys = torch.multinomial(self.p_ref[k].reshape(logp.shape).cpu(), FISHER_SAMPLES, replacement=True,
                                       generator=gen).to(logp.device)
                for j in range(FISHER_SAMPLES):  # one backward per sampled label; their squares averaged
                    logp.gather(1, ys[:, j:j + 1]).sum().backward(retain_graph=j + 1 < FISHER_SAMPLES)
        finally:
            for h in hooks:
                h.remove()
            for p, r in req.items():
                p.requires_grad_(r)
        names = dict.fromkeys(n for n, _ in grads)
        return {n: torch.cat([sum(grads[n, k]) / len(grads[n, k]) for k in range(len(self.batches))])
                for n in names}

    def _before(self, j: int, kwargs: dict) -> None:
        shared = kwargs.get(SHARED)
        self._seen = {k: id(v) for k, v in shared.items()} if shared is not None else None

    def _after(self, j: int, kwargs: dict, out) -> None:
        """Keep block j's output and the shared K/V entries it wrote (new or replaced) for this batch."""
        self.block_out[j].append(out)
        shared = kwargs.get(SHARED)
        if shared is not None:
            self.block_shared[j].append({k: v for k, v in shared.items() if self._seen.get(k) != id(v)})

    def kl(self, start: int = 0, batches: int | None = None) -> float:
        """Mean KL(reference || current model) per token, running blocks ``start``.. from cached inputs, on
        the first ``batches`` calibration batches (all by default)."""
        import torch

        saved = [self.layers[j] for j in range(start)]
        parent = self.layers
        for j in range(start):
            parent[j] = _skip(self, j)
        try:
            out = []
            with torch.inference_mode():
                for k, b in enumerate(self.batches[:batches]):
                    self.cur = k
                    lq = torch.log_softmax(self.model(input_ids=b).logits.float(), -1)
                    out.append(self.neg_ent[k] - (self.p_ref[k] * lq).sum(-1))
            return max(0.0, float(torch.cat(out).mean()))
        finally:
            for j, m in enumerate(saved):
                parent[j] = m


def _decoder_layers(model):
    """The ModuleList of decoder blocks (the longest ModuleList whose length is the layer count)."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not lists:
        raise RuntimeError(f"no ModuleList of {n} decoder blocks in {type(model).__name__}")
    return lists[0]


def start_block(gguf_name: str, n_layer: int) -> int:
    """The first block a change of this tensor reaches: its own block, all of them (embeddings and other
    tensors outside the blocks), or none (``output.weight``: only the head runs)."""
    m = _BLK.match(gguf_name)
    if m:
        return int(m.group(1))
    return n_layer if gguf_name == "output.weight" else 0


def proxy_errors(w, mod_name: str, runner: Runner, cands: list[str], quant, rows: int = PROXY_ROWS):
    """{type: estimated mean squared output error} for a Linear/Embedding weight, or None for other
    modules. ``quant(x, q)`` returns the dequantized float32 rows (the file's bytes)."""
    import numpy as np
    import torch

    module = runner.modules.get(mod_name)
    x2 = w.detach().float().cpu().numpy().reshape(-1, w.shape[-1])
    if isinstance(module, torch.nn.Embedding):
        used, counts = np.unique(runner.token_ids.numpy(), return_counts=True)
        sel = used if len(used) <= rows else used[np.linspace(0, len(used) - 1, rows).astype(int)]
        wts = counts[np.searchsorted(used, sel)].astype(np.float64)
        sub = x2[sel]
        out = {}
        for q in cands:
            d = quant(sub, q) - sub
            out[q] = float(((d.astype(np.float64) ** 2).sum(-1) * wts).sum() / wts.sum())
        return out
    if not isinstance(module, torch.nn.Linear) or w.dim() != 2:
        return None
    x = runner.inputs.get(mod_name)
    if x is None:
        return None
    n_rows = x2.shape[0]
    sel = np.arange(n_rows) if n_rows <= rows else np.linspace(0, n_rows - 1, rows).astype(int)
    sub = np.ascontiguousarray(x2[sel])
    deltas = torch.from_numpy(np.stack([quant(sub, q) - sub for q in cands])).to(x.device)  # [C, r, in]
    f = runner.fisher.get(mod_name)
    with torch.inference_mode():
        dy = torch.einsum("ti,cri->ctr", x, deltas).double().pow(2)
        if f is not None and f.shape == (x.shape[0], n_rows):  # each output's error weighted by its Fisher
            dy = dy * f[:, torch.as_tensor(sel, device=f.device)].double()
        err = dy.sum((1, 2)) / x.shape[0] * (n_rows / len(sel))
    return {q: float(e) for q, e in zip(cands, err.cpu())}


def prune(errors: dict[str, float], nbytes: dict[str, int]) -> dict[str, str]:
    """Dominated candidate -> the candidate that dominates it (no larger, strictly lower error; or the
    same size and error, the first listed)."""
    out: dict[str, str] = {}
    order = sorted(errors, key=lambda q: (nbytes[q], errors[q]))
    best = None
    for q in order:
        if best is not None and errors[q] >= errors[best]:
            out[q] = best
        else:
            best = q
    return out


def calibrated_depths(blocks: list[int], n: int) -> set[int]:
    """``n`` blocks spread evenly over ``blocks`` (sorted), the first and the last among them."""
    if n <= 0 or len(blocks) <= n:
        return set(blocks)
    return {blocks[round(k * (len(blocks) - 1) / (n - 1))] for k in range(n)} if n > 1 else {blocks[-1]}


def _interpolate(depth: int, known: dict[int, float]) -> float:
    """A scale at ``depth`` from the scales calibrated at other depths: linear in log between the nearest
    calibrated depths on either side (the nearest one past the ends)."""
    import math

    ds = sorted(known)
    lo = max((d for d in ds if d <= depth), default=ds[0])
    hi = min((d for d in ds if d >= depth), default=ds[-1])
    a, b = known[lo], known[hi]
    if lo == hi or a <= 0 or b <= 0:
        return a if abs(depth - lo) <= abs(hi - depth) else b
    t = (depth - lo) / (hi - lo)
    return math.exp((1 - t) * math.log(a) + t * math.log(b))


class _Weight:
    """One tensor under measurement: its parameter, its quantizer (with its importance) and exact KLs."""

    def __init__(self, name, w, imp, threads, runner: Runner, start: int):
        self.name, self.w, self.imp, self.threads, self.runner, self.start = name, w, imp, threads, runner, start

    def quant(self, x, q):
        from ..quant import dequantize, quantize

        return dequantize(quantize(x, q, imatrix=self.imp, threads=self.threads, what=self.name), q, x.shape[-1])

    def exact(self, q: str, batches: int | None = None) -> float:
        """KL with this tensor alone in type ``q`` (partial forward from its block)."""
        import torch

        w = self.w
        orig = w.detach().clone()
        x = orig.float().cpu().numpy().reshape(-1, orig.shape[-1])
        with torch.no_grad():
            w.copy_(torch.from_numpy(self.quant(x, q).reshape(orig.shape)).to(w.device, w.dtype))
        try:
            return self.runner.kl(self.start, batches)
        finally:
            with torch.no_grad():
                w.copy_(orig)


def _mid(live: list[str]) -> str:
    return live[len(live) // 2]


def _calibrate(wt: _Weight, d: dict) -> dict[str, float]:
    """Exact KLs of the middle live candidate and (``CALIB_POINTS`` 2) the smallest; sets ``d["scale"]``
    (KL / E at the middle) and ``d["power"]`` (the exponent of KL in E between the two, 1 with one point)."""
    import math

    mid = _mid(d["live"])
    k_mid = wt.exact(mid, CALIB_BATCHES)
    e = d["proxy"]
    d["scale"], d["power"] = (k_mid / e[mid] if e[mid] > 0 else 0.0), 1.0
    out = {mid: k_mid}
    low = d["live"][0]
    if CALIB_POINTS > 1 and low != mid:
        out[low] = wt.exact(low, CALIB_BATCHES)
        if min(out[low], k_mid, e[low], e[mid]) > 0 and e[low] != e[mid]:
            d["power"] = min(2.5, max(0.5, math.log(out[low] / k_mid) / math.log(e[low] / e[mid])))
    return out


def measure_fast(model, params: dict, hf: dict, types: dict, batch, *, batch_size: int, device: str,
                 imatrix, threads, shapes: dict, method: str = "proxy", proxy_rows: int = PROXY_ROWS,
                 depths: int = CALIB_DEPTHS, progress: Progress = NULL_PROGRESS) -> tuple[dict, dict]:
    """(costs, details): tensor -> type -> estimated KL; details: tensor -> how it was measured.

    ``method="exact"``: every listed candidate by a partial forward, no proxy (:mod:`.refine`'s
    re-measurements). With ``method="proxy"`` each kind of block tensor (``attn_q``, ``ffn_down``, ...) is calibrated exactly
    at ``depths`` blocks spread over the model (0: every block); the scale of the blocks between is
    interpolated (log-linear in depth). Tensors outside the blocks are always calibrated."""
    import numpy as np
    from gguf import GGMLQuantizationType as T

    from ..quant.types import tensor_nbytes

    runner = Runner(model, batch, batch_size, device, fisher=FISHER and method != "exact")
    n_layer = len(runner.layers)
    weights: dict[str, _Weight] = {}
    for name in types:
        hf_name = hf.get(name)
        w = params.get(hf_name) if hf_name else None
        if w is None:
            raise RuntimeError(f"{name}: no torch parameter {hf_name!r} in the transformers model")
        imp = None
        if imatrix is not None and name in imatrix:
            imp = np.ascontiguousarray(np.asarray(imatrix[name], dtype=np.float32).reshape(-1))
        weights[name] = _Weight(name, w, imp, threads, runner, start_block(name, n_layer))
    progress.start(2 * len(types), unit="steps", desc="sensitivity")
    costs: dict[str, dict[str, float]] = {}
    details: dict[str, dict] = {}
    try:
        for name, cands in types.items():  # pass 1: proxy errors, pruning (cheap)
            wt = weights[name]
            err = None if method == "exact" else proxy_errors(wt.w, hf[name].rsplit(".", 1)[0], runner, cands, wt.quant, proxy_rows)
            if err is None:
                details[name] = {"how": "exact"}
            else:
                nb = {q: tensor_nbytes(shapes[name], T[q]) for q in cands}
                dom = prune(err, nb)
                live = sorted((q for q in cands if q not in dom), key=lambda q: nb[q])
                details[name] = {"how": method, "pruned": dom, "live": live, "proxy": err}
            progress.update(1, label=f"{name} proxy")
        kinds: dict[str, list[int]] = {}
        for name in types:
            m = _BLK.match(name)
            if m and details[name]["how"] == "proxy":
                kinds.setdefault(name[m.end():], []).append(int(m.group(1)))
        calib = {f"blk.{d}.{k}" for k, ds in kinds.items() for d in calibrated_depths(sorted(ds), depths)}
        scales: dict[str, dict[int, float]] = {}
        for name, cands in types.items():  # pass 2: exact measurements (partial forwards)
            d, wt = details[name], weights[name]
            if d["how"] == "exact":
                costs[name] = {q: wt.exact(q, REFINE_BATCHES if method == "exact" else None) for q in cands}
            elif method == "layerwise":
                costs[name] = {q: wt.exact(q) for q in d["live"]}
            elif not _BLK.match(name) or name in calib:
                costs[name] = _calibrate(wt, d)
                m = _BLK.match(name)
                if m:
                    scales.setdefault(name[m.end():], {})[int(m.group(1))] = (d["scale"], d["power"])
            progress.update(1, label=f"{name} exact")
        for name in types:  # the proxy's costs, and the dominated candidates' prices
            d = details[name]
            if d["how"] == "exact":
                continue
            c = costs.setdefault(name, {})
            if method == "proxy":
                if "scale" not in d:
                    m = _BLK.match(name)
                    known = scales[name[m.end():]]
                    d["scale"] = _interpolate(int(m.group(1)), {k: v[0] for k, v in known.items()})
                    d["power"] = _interpolate(int(m.group(1)), {k: v[1] for k, v in known.items()})
                e_mid = d["proxy"][_mid(d["live"])]
                for q in d["live"]:
                    r = d["proxy"][q] / e_mid if e_mid > 0 else 0.0
                    c.setdefault(q, d["scale"] * e_mid * r ** d["power"])
            for q, by in d["pruned"].items():
                c[q] = c[by] * (1 + 1e-6) + 1e-12
            costs[name] = {q: c[q] for q in types[name]}
    finally:
        progress.close()
    return costs, details
