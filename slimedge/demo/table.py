"""The demo's comparison table (the article's Step 8 table, measured): text, Markdown and JSON.

Input: one :class:`Row` per model, the first being the baseline (the F16 teacher). Ratios are
computed here against that first row: speed = generation tokens/s ÷ the baseline's, smaller = the
baseline's file size ÷ this file's size. Quality columns are perplexity on the held-out text and mean
KL divergence / top-1 agreement of each model's next-token distribution against the baseline's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

COLUMNS = ("Model", "Technique", "Perplexity", "KL vs teacher", "Top-1 vs teacher", "Gen tok/s", "Speed",
           "Size", "Smaller")


@dataclass
class Row:
    model: str  # "teacher" | "student"
    technique: str  # "baseline (F16)", "quantized Q4_K_M", ...
    perplexity: float  # held-out text, llama.cpp's method
    kld_mean: float  # mean KL(teacher || model) per token, nats
    top1_agreement: float  # fraction of tokens whose argmax matches the teacher's, 0..1
    gen_tps: float  # generation tokens/s (llama.cpp, mean over repeats)
    size_bytes: int  # GGUF file size
    gen_tps_std: float = 0.0  # stddev of gen_tps over repeats
    bpw: float = 0.0  # bits per weight of the GGUF
    n_params: int = 0
    path: str = ""  # the GGUF measured
    extra: dict = field(default_factory=dict)  # anything else the bench returned


def ratios(rows: list[Row]) -> list[dict]:
    """Each row as a dict plus ``speedup`` and ``smaller`` against rows[0]."""
    base = rows[0]
    out = []
    for r in rows:
        d = asdict(r)
        d["size_mb"] = r.size_bytes / 1e6
        d["speedup"] = r.gen_tps / base.gen_tps if base.gen_tps > 0 else float("nan")
        d["smaller"] = base.size_bytes / r.size_bytes if r.size_bytes > 0 else float("nan")
        out.append(d)
    return out


def _f(x: float, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _cells(rows: list[Row]) -> list[list[str]]:
    cells = []
    for i, d in enumerate(ratios(rows)):
        baseline = i == 0
        cells.append([
            d["model"],
            d["technique"],
            _f(d["perplexity"], ".3f"),
            "—" if baseline else _f(d["kld_mean"], ".4f"),
            "—" if baseline else _f(100 * d["top1_agreement"], ".1f") + "%",
            _f(d["gen_tps"], ".0f") + (f" ± {d['gen_tps_std']:.0f}" if d["gen_tps_std"] else ""),
            "1.0×" if baseline else _f(d["speedup"], ".2f") + "×",
            _f(d["size_mb"], ".2f") + " MB",
            "1.0×" if baseline else _f(d["smaller"], ".2f") + "×",
        ])
    return cells


def format_text(rows: list[Row]) -> str:
    """A fixed-width table for the terminal."""
    cells = [list(COLUMNS)] + _cells(rows)
    widths = [max(len(r[j]) for r in cells) for j in range(len(COLUMNS))]
    right = {2, 3, 4, 5, 6, 7, 8}

    def line(r):
        return "  ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]]) + "\n"


def format_markdown(rows: list[Row]) -> str:
    """A GitHub-flavoured Markdown table."""
    cells = _cells(rows)
    head = "| " + " | ".join(COLUMNS) + " |"
    align = "|" + "|".join([":---", ":---"] + ["---:"] * (len(COLUMNS) - 2)) + "|"
    body = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([head, align] + body) + "\n"


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def to_json(rows: list[Row], meta: dict | None = None) -> str:
    """``{"rows": [...with speedup/smaller...], **meta}``; non-finite numbers become null."""
    return json.dumps(_clean({"rows": ratios(rows), **(meta or {})}), indent=2) + "\n"
