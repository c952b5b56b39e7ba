"""Which torch tensor of the transformers model holds each GGUF tensor's rows, for the sensitivities.

:mod:`slimedge.calib.sensitivity` quantizes the Hugging Face weight in place of the GGUF tensor. Most
GGUF tensors come from one HF weight under the same name; the new families' converters also

* stack or reorder rows of one weight (Qwen3.5/Qwen3-Next's linear-attention heads regrouped per key
  head): the origin reads ``NAME (stacked from ...)`` and ``NAME`` is a parameter of the same size — its
  rows are the GGUF rows in another order, and quantization runs along rows, so the parameter itself
  is measured;
* stack per-expert weights (``experts.[*].gate_proj.weight``) that transformers 5 holds fused, one 3-D
  parameter per block: ``experts.gate_up_proj`` ``[E, 2F, H]`` (gate rows first) or, gpt-oss's layout,
  ``[E, H, 2F]`` with gate/up interleaved along the last axis, and ``experts.down_proj`` ``[E, H, F]`` or
  ``[E, F, H]``. The GGUF tensor ``[E, F, H]`` (``[E, H, F]`` for down) is a view of it (sliced,
  transposed), so writing the view writes the model's weight;
* write tensors no torch weight holds (Gemma 3n's K/V projections of KV-shared layers, zeros that
  llama.cpp never reads): those have no sensitivity, every type costs 0.

:func:`resolve` returns, per GGUF tensor, the HF name to measure it under (a parameter name, or a
synthetic name whose entry it adds to ``params``), or ``None`` for a tensor without sensitivity.
"""

from __future__ import annotations

import re

_EXPS = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$")


def _experts_view(params: dict, gguf_name: str, shape: tuple, cols: bool) -> tuple[str, object] | None:
    """(synthetic name, view) of a stacked expert tensor in transformers' fused expert parameters;
    ``cols``: the converter read it as columns (gpt-oss), so the parameter is the transposed one even where
    the shapes alone cannot tell (n_ff == n_embd)."""
    m = _EXPS.match(gguf_name)
    if m is None or len(shape) != 3:
        return None
    layer, kind = m.group(1), m.group(2)
    want = "gate_up_proj" if kind in ("gate", "up") else "down_proj"
    pat = re.compile(rf"(^|\.)layers\.{layer}\..*experts\.{want}$")
    names = [n for n in params if pat.search(n) and params[n].ndim == 3]
    if len(names) != 1:
        return None
    p = params[names[0]]
    e, r, c = shape
    if kind == "down":
        view = p.transpose(1, 2) if cols and tuple(p.shape) == (e, c, r) else p if tuple(p.shape) == (e, r, c) \
            else None
    elif tuple(p.shape) == (e, 2 * r, c) and not cols:  # gate rows, then up rows
        view = p[:, :r] if kind == "gate" else p[:, r:]
    elif tuple(p.shape) == (e, c, 2 * r) and cols:  # gpt-oss: gate/up interleaved, columns are outputs
        view = (p[..., 0::2] if kind == "gate" else p[..., 1::2]).transpose(1, 2)
    else:
        view = None
    return None if view is None else (f"{names[0]}[{kind}]", view)


def resolve(params: dict, hf: dict[str, str], shapes: dict[str, tuple]) -> dict[str, str | None]:
    """GGUF name -> the key of ``params`` holding its rows (entries for views are added to ``params``),
    or ``None`` where no torch weight holds the tensor (see the module docstring). Names that cannot be
    matched are left as they are (the caller reports them)."""
    out: dict[str, str | None] = {}
    for name, origin in hf.items():
        shape = tuple(shapes.get(name, ()))
        n = 1
        for d in shape:
            n *= d
        base, cols = origin.split(" (", 1)[0], " (columns " in origin
        if origin in params:
            out[name] = origin
        elif base in params and params[base].numel() == n and params[base].shape[-1] == shape[-1] and not cols:
            out[name] = base  # the same rows, regrouped
        elif (ev := _experts_view(params, name, shape, cols)) is not None:
            params[ev[0]] = ev[1]
            out[name] = ev[0]
        elif "(zeros)" in origin:
            out[name] = None
        else:
            out[name] = origin
    return out
