"""``slimedge sweep``: convert a model to many types, measure each through llama.cpp, draw the picture.

For every entry of ``types`` — a llama.cpp mix (``Q4_K_M``, ``Q8_0``, ...), or a quality-driven auto mix
``auto:B`` (B bits per weight) / ``auto:MIX`` (the size of that mix) — the model is converted into the
output folder (``<name>-<type>.gguf``; a file already there is reused, so a sweep can be resumed or
extended), then measured with :func:`slimedge.bench.run_bench` against the unquantized model (an F16
GGUF converted once, or the source itself when it is a float GGUF): size, bits per weight, perplexity,
KL divergence and top-1 agreement, prompt and generation tokens/s. Auto mixes share one sensitivity
measurement (``sensitivity.json`` in the folder) and the importance matrix when one is given (which the
llama.cpp mixes get too, so the comparison is like for like).

Outputs in the folder: ``sweep.json`` (the full records), ``sweep.csv``, ``sweep.md`` (the table) and
``sweep.png`` / ``sweep.svg``: KL divergence against file size (log scales) with llama.cpp's mixes and
slimedge's auto mixes as two labelled series and the Pareto front of all points, and generation
tokens/s against size beside it. matplotlib is imported only here, when drawing.

An embedding model (a GGUF stating a pooling type, or an encoder-only architecture; :mod:`slimedge.bench.embed`)
has no perplexity: its sweep needs no ``--text``, its reference is the F32 model, and each type is measured as
``slimedge bench --ref`` measures an embedder: the mean (and worst) cosine of its vectors to the F32 model's over
the held-out sentences, the share of sentences whose nearest neighbour is the same, and tokens/s at batch. The
table has those columns; the picture draws 1 - mean cosine against size (and embedding tokens/s). Auto mixes
(chosen by next-token KL) are refused for embedders; the default types are :data:`EMBED_DEFAULT_TYPES`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)

DEFAULT_TYPES = "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M,Q2_K,auto:4.5,auto:3.5"
EMBED_DEFAULT_TYPES = "F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M"
LLAMA, AUTO = "llama.cpp mix", "slimedge auto mix"


@dataclass
class Entry:
    label: str  # as given: "Q4_K_M", "auto:4.5"
    kind: str  # LLAMA or AUTO
    mix: str = ""  # the llama mix (LLAMA)
    target_bpw: float | None = None  # auto:B
    target_size: str | None = None  # auto:MIX

    @property
    def slug(self) -> str:
        return self.label.lower().replace(":", "-")


def parse_types(text: str) -> list[Entry]:
    """``"Q4_K_M,auto:4.5,auto:Q3_K_M"`` -> entries (one-line errors for unknown names)."""
    from ..quant.mixes import MIXES

    out = []
    for raw in (s.strip() for s in text.split(",")):
        if not raw:
            continue
        if raw.lower().startswith("auto:"):
            arg = raw.split(":", 1)[1].strip()
            if arg.upper() in MIXES:
                out.append(Entry(f"auto:{arg.upper()}", AUTO, target_size=arg.upper()))
                continue
            try:
                out.append(Entry(f"auto:{float(arg):g}", AUTO, target_bpw=float(arg)))
            except ValueError:
                raise SlimedgeError(f"--types {raw!r}: expected auto:BITS (e.g. auto:4.5) or auto:MIX "
                                    "(e.g. auto:Q4_K_M)") from None
        elif raw.upper() in MIXES:
            out.append(Entry(raw.upper(), LLAMA, mix=raw.upper()))
        else:
            raise SlimedgeError(f"--types {raw!r}: not a llama.cpp mix ({', '.join(MIXES)}) nor auto:BITS")
    if not out:
        raise SlimedgeError("--types is empty; e.g. --types " + DEFAULT_TYPES)
    return out


def run_sweep(src: str | Path, types: str | list[Entry] | None, text: str | Path | None, out_dir: str | Path, *,
              calib: str | Path | None = None, imatrix: str | Path | None = None, target: str | None = None,
              n_ctx: int = 512, repeats: int = 3, n_prompt: int = 512, n_gen: int = 128,
              threads: int | None = None, draft: str | Path | None = None, draft_max: int = 8,
              progress: Progress = NULL_PROGRESS) -> list[dict]:
    """Convert and measure every entry (see the module docstring); returns the records, also written
    (with the table and the picture) into ``out_dir``. ``types`` None: the defaults for the kind of model.
    ``draft``: a draft GGUF (same vocabulary): each type's generation speed is also measured with it
    (speculative decoding, greedy), the draft column."""
    from ..convert import convert
    from ..quant.mixes import QuantSpec
    from ..source import is_gguf
    from .runner import run_bench

    src, out = Path(src), Path(out_dir)
    if text is not None and not Path(text).is_file():
        raise SlimedgeError(f"{text}: --text file not found")
    out.mkdir(parents=True, exist_ok=True)
    name = src.stem if src.is_file() else src.name
    run = dict(n_threads=threads, n_gpu_layers=0, flash_attn=None, cache_type_k="f16", cache_type_v="f16")
    if target is not None:  # the device's runtime settings for the measurements
        from ..targets import load_target

        rt = load_target(target).runtime
        run.update(n_threads=threads or rt.n_threads or None, n_gpu_layers=rt.n_gpu_layers,
                   flash_attn=rt.flash_attn, cache_type_k=rt.cache_type_k, cache_type_v=rt.cache_type_v)
    ref = src if is_gguf(src) else out / f"{name}-f16.gguf"
    if not ref.is_file():
        convert(src, ref, QuantSpec("F16"), threads=threads, overwrite=True)
    embedding = _is_embedder(ref)
    if embedding and not is_gguf(src):  # an embedder's quality is measured against its F32 vectors
        ref = out / f"{name}-f32.gguf"
        if not ref.is_file():
            convert(src, ref, QuantSpec("F32"), threads=threads, overwrite=True)
    entries = _entries(types, embedding, text, src)

    calib_text = None
    records = []
    for e in entries:
        path = out / f"{name}-{e.slug}.gguf"
        if path.is_file():
            log.info("sweep %s: reusing %s", e.label, path)
        elif e.kind == LLAMA:
            convert(src, path, QuantSpec(e.mix), imatrix=imatrix, threads=threads, overwrite=True, progress=progress)
        else:
            from ..calib.sensitivity import auto_allocation, read_text

            if calib_text is None:
                if calib is None:
                    log.warning("sweep: no --calib text; measuring sensitivities on --text %s itself, which "
                                "flatters the auto mixes (give --calib with other text)", text)
                calib_text = read_text(calib if calib is not None else text)
            alloc = auto_allocation(src, calib_text, target_bpw=e.target_bpw, target_size=e.target_size,
                                    imatrix=imatrix, cache=out / "sensitivity.json", threads=threads,
                                    progress=progress)
            convert(src, path, alloc.spec(), imatrix=imatrix, threads=threads, overwrite=True, progress=progress)
        log.info("sweep %s: measuring %s", e.label, path.name)
        rec = run_bench(path, ref=ref, text=None if embedding else text, n_ctx=n_ctx, repeats=repeats,
                        n_prompt=n_prompt, n_gen=n_gen, draft=None if embedding else draft, draft_max=draft_max,
                        progress=progress, **run)
        rec.update(sweep_label=e.label, sweep_kind=e.kind, imatrix=str(imatrix) if imatrix else None)
        records.append(rec)
    write_outputs(out, records)
    return records


def _is_embedder(gguf: Path) -> bool:
    """Whether ``gguf`` is an embedding model's (a pooling type, or an encoder-only architecture)."""
    from ..gguf_info import read_info
    from .embed import is_embedding

    return is_embedding(read_info(gguf).metadata)


def _entries(types, embedding: bool, text, src: Path) -> list[Entry]:
    """The entries for this kind of model; an embedder's refusals and a generation model's need of ``text``."""
    entries = parse_types(types or (EMBED_DEFAULT_TYPES if embedding else DEFAULT_TYPES)) \
        if types is None or isinstance(types, str) else types
    if embedding and any(e.kind == AUTO for e in entries):
        raise SlimedgeError(f"{src}: an embedding model; auto mixes are chosen by next-token KL divergence, which "
                            f"an embedder has not: sweep llama.cpp mixes (e.g. --types {EMBED_DEFAULT_TYPES})")
    if not embedding and text is None:
        raise SlimedgeError(f"{src}: --text is required: perplexity and KL divergence are measured on held-out text")
    return entries


COLUMNS = ("type", "kind", "size MB", "bpw", "PPL", "KL vs F16", "top-1", "pp t/s", "tg t/s")
DRAFT_COLUMNS = ("tg t/s + draft", "draft speed-up", "accepted", "same tokens")
EMBED_COLUMNS = ("type", "kind", "size MB", "bpw", "cosine mean", "cosine min", "NN agreement", "embed t/s")


def _f(x, spec) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def table(records: list[dict]) -> str:
    """The sweep as a Markdown table, smallest file first (an embedder's: cosine and neighbour agreement to
    the F32 model's vectors, embedding tokens/s)."""
    f = _f
    embed = bool(records) and all(r.get("embed_cosine_mean") is not None for r in records)
    spec = not embed and any(r.get("draft_avg_ts") is not None for r in records)
    cols = EMBED_COLUMNS if embed else COLUMNS + (DRAFT_COLUMNS if spec else ())
    lines = ["| " + " | ".join(cols) + " |", "|:---|:---|" + "---:|" * (len(cols) - 2)]
    for r in sorted(records, key=lambda r: r["model_size"]):
        top1 = r.get("top1_agreement")
        head = [r["sweep_label"], "llama.cpp" if r["sweep_kind"] == LLAMA else "auto", f(r["model_size"] / 1e6, ".3f"),
                f(r.get("bpw"), ".3f")]
        if embed:
            nn = r.get("embed_nn_agreement")
            lines.append("| " + " | ".join(head + [
                f(r["embed_cosine_mean"], ".6f"), f(r.get("embed_cosine_min"), ".6f"),
                "—" if nn is None else f"{100 * nn:.1f}%", f(r.get("embed_ts"), ".0f")]) + " |")
            continue
        row = head + [f(r.get("perplexity"), ".3f"), f(r.get("kld_mean"), ".5f"),
                      "—" if top1 is None else f"{100 * top1:.2f}%", f(r.get("pp_avg_ts"), ".0f"),
                      f(r.get("avg_ts"), ".0f")]
        if spec:  # the draft column: generation with the draft, its ratio to alone, acceptance, same tokens
            acc, same = r.get("draft_acceptance"), r.get("draft_same_output")
            row += [f(r.get("draft_avg_ts"), ".0f"), f(r.get("draft_speedup"), ".2f"),
                    "—" if acc is None else f"{100 * acc:.1f}%", {True: "yes", False: "NO", None: "—"}[same]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (smaller size, smaller KL), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def write_outputs(out: Path, records: list[dict]) -> dict[str, Path]:
    from ..publish import write_atomic
    from .report import to_csv

    files = {"json": out / "sweep.json", "csv": out / "sweep.csv", "md": out / "sweep.md"}
    write_atomic(files["json"], json.dumps(records, indent=2, default=str) + "\n")
    extra = ("sweep_label", "sweep_kind")
    csv = to_csv(records).splitlines()
    rows = [",".join(extra) + "," + csv[0]] + [f"{r['sweep_label']},{r['sweep_kind']},{line}"
                                                 for r, line in zip(records, csv[1:])]
    write_atomic(files["csv"], "\n".join(rows) + "\n")
    write_atomic(files["md"], table(records))
    files.update(plot(records, out / "sweep"))
    return files


def plot(records: list[dict], stem: Path, title: str = "") -> dict[str, Path]:
    """``stem.png`` and ``stem.svg``: KL vs size (log-log) per series with the Pareto front; tg t/s vs size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    embed = bool(records) and all(r.get("embed_cosine_mean") is not None for r in records)
    speed = "embed_ts" if embed else "avg_ts"
    pts = [(r["model_size"] / 1e6, 1.0 - r["embed_cosine_mean"] if embed else r.get("kld_mean")) for r in records]
    styles = {LLAMA: dict(marker="o", color="tab:blue"), AUTO: dict(marker="D", color="tab:red")}
    for kind, st in styles.items():
        rs = [(p, r) for p, r in zip(pts, records) if r["sweep_kind"] == kind and p[1] is not None and p[1] > 0]
        if not rs:
            continue
        ax.scatter([p[0] for p, _ in rs], [p[1] for p, _ in rs], label=kind, zorder=3, **st)
        for p, r in rs:
            ax.annotate(r["sweep_label"], p, textcoords="offset points", xytext=(5, 4), fontsize=8, color=st["color"])
        sp = [(p[0], r.get(speed)) for p, r in rs if r.get(speed)]
        if sp:
            ax2.scatter([s for s, _ in sp], [t for _, t in sp], label=kind, **st)
    good = [i for i, p in enumerate(pts) if p[1] is not None and p[1] > 0]
    front = [good[i] for i in pareto([pts[i] for i in good])]
    if front:
        ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="gray",
                linestyle="--", label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tensor data (MB, log scale)")
    ax.set_ylabel("1 - mean cosine to the F32 embeddings (log scale)" if embed
                  else "mean KL divergence vs F16 (nats/token, log scale)")
    ax.set_title(title or "quality vs size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("tensor data (MB, log scale)")
    ax2.set_ylabel("embedding tokens/s at batch (llama.cpp)" if embed else "generation tokens/s (llama.cpp)")
    ax2.set_title("speed vs size")
    ax2.grid(True, which="both", alpha=0.3)
    if ax2.has_data():
        ax2.legend(fontsize=8)
    fig.tight_layout()
    out = {}
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=120)
        out[ext] = path
    plt.close(fig)
    return out
