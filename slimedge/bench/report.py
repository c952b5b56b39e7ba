"""Bench records as JSON, CSV or a Markdown table.

JSON keeps each record whole (lists included). CSV has one row per record and the columns of
:data:`slimedge.bench.runner.FIELDS` (lists joined with ``;``). Markdown shows the columns people
compare: model, size, bpw, load, pp and tg tokens/s with stddev, peak RSS, and the quality
numbers when measured.
"""

from __future__ import annotations

import csv
import io
import json

from .runner import FIELDS

MiB = 1 << 20


def to_json(records: list[dict]) -> str:
    return json.dumps(records, indent=2) + "\n"


def to_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: ";".join(f"{x:.4f}" for x in v) if isinstance(v, list) else v for k, v in r.items()
                    if k in FIELDS})
    return buf.getvalue()


def _f(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def to_markdown(records: list[dict]) -> str:
    quality = any(r.get("perplexity") is not None for r in records)
    ref = any(r.get("kld_mean") is not None for r in records)
    cols = ["model", "size MiB", "bpw", "params", "threads", "load s", "pp t/s", "tg t/s", "peak RSS MiB"]
    if quality:
        cols += ["n_ctx", "PPL"]
    if ref:
        cols += ["KLD", "top-1", "ΔPPL"]
    emb = any(r.get("embed_cosine_mean") is not None for r in records)
    if emb:
        cols += ["cos mean", "cos min", "NN agree"]
    spec = any(r.get("draft_avg_ts") is not None for r in records)  # a bundle with a speculative draft
    if spec:
        cols += ["gen t/s draft", "gen t/s alone", "speed-up", "accepted", "per step", "same output"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    for r in records:
        parts = str(r.get("model_filename", "?")).replace("\\", "/").rsplit("/", 2)
        name = "/".join(parts[-2:]) if parts[-1] == "model.gguf" and len(parts) > 1 else parts[-1]  # bundle/model.gguf
        pp = "—" if r.get("pp_avg_ts") is None else f"{r['pp_avg_ts']:.1f} ± {r['pp_stddev_ts']:.1f}"
        if r.get("embed_ts") is not None:  # an embedding model: its tokens/s at batch stand in the pp column
            pp = f"{r['embed_ts']:.1f} ± {r['embed_stddev_ts']:.1f} (embed)"
        tg = "—" if r.get("avg_ts") is None else f"{r['avg_ts']:.1f} ± {r['stddev_ts']:.1f}"
        row = [name, _f(r.get("model_size") and r["model_size"] / MiB, ".1f"), _f(r.get("bpw"), ".2f"),
               _f(r.get("model_n_params"), ","), str(r.get("n_threads", "—")), _f(r.get("load_s"), ".2f"), pp, tg,
               _f(r.get("peak_rss_bytes") and r["peak_rss_bytes"] / MiB, ".0f")]
        if quality:
            row += [str(r.get("n_ctx", "—")), _f(r.get("perplexity"), ".4f")]
        if ref:
            top1 = r.get("top1_agreement")
            row += [_f(r.get("kld_mean"), ".5f"), "—" if top1 is None else f"{100 * top1:.2f}%",
                    _f(r.get("delta_ppl"), "+.4f")]
        if emb:
            nn = r.get("embed_nn_agreement")
            row += [_f(r.get("embed_cosine_mean"), ".5f"), _f(r.get("embed_cosine_min"), ".5f"),
                    "—" if nn is None else f"{100 * nn:.1f}%"]
        if spec:
            acc = r.get("draft_acceptance")
            row += [_f(r.get("draft_avg_ts"), ".1f"), _f(r.get("nodraft_avg_ts"), ".1f"),
                    _f(r.get("draft_speedup"), ".2f") + ("×" if r.get("draft_speedup") is not None else ""),
                    "—" if acc is None else f"{100 * acc:.1f}%", _f(r.get("draft_accepted_per_step"), ".2f"),
                    {True: "yes", False: "NO", None: "—"}[r.get("draft_same_output")]]
        lines.append("| " + " | ".join(row) + " |")
    m = records[0] if records else {}
    if m.get("cpu_info"):
        lines += ["", f"Machine: {m['cpu_info']}, {m.get('n_cores')} cores, {m.get('platform')}; "
                      f"{m.get('build_commit')} ({m.get('backends')} backend)."]
    settings = sorted({str(r["flash_attn"]) for r in records if r.get("flash_attn") is not None})
    if settings:
        lines += ["", f"Flash attention: {', '.join(settings)}."]
    return "\n".join(lines) + "\n"


def render(records: list[dict], fmt: str) -> str:
    return {"json": to_json, "csv": to_csv, "md": to_markdown}[fmt](records)
