"""``slimedge demo``: the article's pipeline, measured — teacher → Q4_K_M → distilled student → both.

Steps (each artifact cached under the cache folder, keyed by everything it depends on):

1. teacher: the shipped ``slimedge/data/demo-teacher`` (or, with ``retrain_teacher``, the recipe of
   :mod:`slimedge.demo.teacher` trained into ``CACHE/teacher``);
2. corpus: the standard-library training documents (one text file each) and the held-out text;
3. convert the teacher to GGUF F16 (the reference) and Q4_K_M (:func:`slimedge.convert.convert`); compute
   an importance matrix on the training text (:func:`slimedge.calib.compute_imatrix`) and convert Q4_K_M
   with it, and the quality-driven auto mix at Q4_K_M's size with it
   (:func:`slimedge.calib.sensitivity.auto_allocation`);
4. distill a student with fewer layers from the teacher on the training documents
   (:func:`slimedge.distill.api.distill`), then convert it to F16 and Q4_K_M;
   tune the teacher's imatrix Q4_K_M and the student's Q4_K_M against the teacher (:func:`slimedge.tune.tune`:
   block scales learned, same size);
5. benchmark the four GGUFs through llama.cpp (:func:`slimedge.bench.run_bench`): generation speed,
   held-out perplexity, and KL divergence / top-1 agreement against the F16 teacher; and the F16 teacher with a
   draft distilled for acceptance (:func:`slimedge.distill.draft.make_draft`, one layer, Q8_0): greedy decoding
   of held-out prompts with and without it (:func:`slimedge.distill.draft.measure`); its row has the teacher's
   quality (the same tokens, checked) and the baseline's speed times the measured ratio;
6. write the table (:mod:`slimedge.demo.table`) as Markdown and JSON into the output folder.

Only step 5 runs every time (speed is measured, never cached); the rest is reused when present.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..publish import publish_dir, write_atomic
from . import corpus
from .table import Row, format_markdown, format_text, to_json

log = logging.getLogger(__name__)

ROWS = (  # (model, technique, which GGUF)
    ("teacher", "baseline (F16)", "teacher-f16"),
    ("teacher", "quantized {quant}", "teacher-quant"),
    ("teacher", "{quant} + imatrix", "teacher-quant-imatrix"),
    ("teacher", "auto mix ({quant} size) + imatrix", "teacher-auto"),
    ("teacher", "{quant} + imatrix, tuned", "teacher-quant-tuned"),
    ("student", "distilled (F16)", "student-f16"),
    ("student", "distilled + {quant}", "student-quant"),
    ("student", "distilled + {quant}, tuned", "student-quant-tuned"),
)
SPEC_ROW = ("teacher", "F16 + distilled draft (Q8_0)")  # measured with the draft beside the baseline


@dataclass
class DemoConfig:
    out: str = "slimedge-demo"  # folder for demo_table.md / demo_table.json / demo_table.txt
    cache: str | None = None  # default: $SLIMEDGE_CACHE, else ~/.cache/slimedge/demo
    teacher: str | None = None  # HF folder of the teacher (default: the shipped one)
    retrain_teacher: bool = False  # train the teacher from the recipe into CACHE/teacher first
    teacher_steps: int | None = None  # recipe steps when retraining (None: the recipe's default)
    quant: str = "Q4_K_M"  # the quantization of rows 2 and 4
    threads: int | None = None  # torch and llama.cpp threads (None: the thread policy's, slimedge/threads.py)
    # --- student ---------------------------------------------------------------------------
    student_layers: int = 2  # the teacher has 4
    distill_steps: int = 150  # optimizer steps (about 5 minutes on 2 cores)
    distill_batch: int = 8  # sequences per step
    distill_seq_len: int = 256  # tokens per sequence
    distill_lr: float = 1e-3  # peak AdamW learning rate
    distill_chars: int | None = None  # cap on training characters (None: the whole corpus)
    # --- bench -------------------------------------------------------------------------------
    n_ctx: int = 256  # perplexity/KL context (the teacher trained on 256-token windows)
    bench_chars: int = 60_000  # held-out characters scored (about 16k tokens)
    n_prompt: int = 128  # prompt tokens of the speed test
    n_gen: int = 128  # generated tokens of the speed test
    repeats: int = 3  # speed repeats (mean ± stddev)
    bench_threads: int = 1  # llama.cpp threads: a few-MB model's per-token work is too small to split
    # --- importance matrix and auto mix (calibration on the training text) --------------------------
    calib_chars: int = 400_000  # training-text characters the imatrix and the sensitivities see
    imatrix_chunks: int = 32  # imatrix sequences of n_ctx tokens
    sensitivity_chunks: int = 2  # sensitivity sequences of n_ctx tokens (one forward per tensor x type)
    # --- tune (slimedge tune: block scales learned against the teacher on the training text) -------------
    tune_steps: int = 300  # optimizer steps per tuned GGUF (about 2 minutes each on 2 cores)
    # --- speculative decoding (slimedge draft: a draft distilled on the teacher's greedy continuations) -----
    draft_layers: int = 1  # the draft's layers (the teacher's width)
    draft_steps: int = 30  # optimizer steps (about 40 s on 2 cores)
    draft_prompts: int = 4  # held-out prompts decoded with and without the draft (n_gen tokens each)

    @classmethod
    def fast(cls, **kw) -> "DemoConfig":
        """Seconds instead of minutes: a few distill steps and a short bench (tests, smoke runs)."""
        base = dict(distill_steps=6, distill_batch=4, distill_seq_len=64, distill_chars=150_000,
                    bench_chars=12_000, n_prompt=32, n_gen=16, repeats=1, calib_chars=60_000,
                    imatrix_chunks=8, sensitivity_chunks=1, tune_steps=4, draft_steps=4, draft_prompts=2)
        base.update(kw)
        return cls(**base)


@dataclass
class DemoResult:
    rows: list[Row]
    text: str  # the table for the terminal
    markdown_path: str
    json_path: str
    meta: dict = field(default_factory=dict)


def cache_root(cfg: DemoConfig) -> Path:
    if cfg.cache:
        return Path(cfg.cache).expanduser()
    env = os.environ.get("SLIMEDGE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/slimedge/demo").expanduser()


def shipped_teacher() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "demo-teacher"


def _digest_file(path: Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _teacher_dir(cfg: DemoConfig, root: Path, progress: Progress) -> Path:
    if cfg.retrain_teacher:
        from .teacher import TeacherConfig, train_teacher

        tcfg = TeacherConfig()
        if cfg.teacher_steps:
            tcfg.steps = cfg.teacher_steps
        if cfg.threads:
            tcfg.threads = cfg.threads
        out = root / "teacher"
        log.info("training the teacher from the recipe into %s", out)
        train_teacher(out, tcfg, overwrite=True, progress=progress)
        return out
    path = Path(cfg.teacher) if cfg.teacher else shipped_teacher()
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise SlimedgeError(f"demo teacher not found in {path} (config.json, model.safetensors); "
                            "reinstall slimedge or run `slimedge demo --retrain-teacher`")
    return path


def _write_corpus(folder: Path, cfg: DemoConfig) -> tuple[Path, Path]:
    """``folder/train/*.txt`` (one document each) and ``folder/heldout.txt``; written once."""
    train_dir, held = folder / "train", folder / "heldout.txt"
    if train_dir.is_dir() and held.is_file():
        return train_dir, held
    folder.mkdir(parents=True, exist_ok=True)
    with publish_dir(train_dir) as tmp:  # each appears whole (slimedge.publish)
        budget = cfg.distill_chars
        for i, doc in enumerate(corpus.load_documents(corpus.TRAIN_MODULES)):
            text = doc.text if budget is None else doc.text[:budget]
            (tmp / f"{i:04d}_{doc.name.replace('/', '_')}.txt").write_text(text, encoding="utf-8")
            if budget is not None:
                budget -= len(text)
                if budget <= 0:
                    break
    write_atomic(held, corpus.heldout_text()[: cfg.bench_chars])
    return train_dir, held


def _convert(src: Path, out: Path, ftype: str, threads: int | None, progress: Progress) -> Path:
    if out.is_file():
        return out
    from ..convert import convert
    from ..quant.mixes import QuantSpec

    log.info("converting %s -> %s (%s)", src, out.name, ftype)
    convert(src, out, QuantSpec(ftype=ftype), threads=threads, overwrite=True, progress=progress)
    return out


def _calibrated(teacher: Path, work: Path, q: str, paths: dict, cfg: DemoConfig, progress: Progress) -> None:
    """The teacher's imatrix (training text), its Q4_K_M with it and the auto mix at Q4_K_M's size; cached."""
    from ..calib import compute_imatrix
    from ..calib.sensitivity import auto_allocation
    from ..convert import convert
    from ..quant.allocate import KQUANT_CANDIDATES
    from ..quant.imatrix_file import write_imatrix
    from ..quant.mixes import QuantSpec

    ckey = _key(corpus.corpus_digest(), cfg.calib_chars, cfg.imatrix_chunks, cfg.sensitivity_chunks, cfg.n_ctx, q)
    imx = work / f"imatrix-{ckey}.gguf"
    calib = corpus.train_text()[: cfg.calib_chars]
    if not imx.is_file():
        log.info("computing the teacher's importance matrix on %d characters of training text", len(calib))
        write_imatrix(imx, compute_imatrix(teacher, calib, ctx=cfg.n_ctx, chunks=cfg.imatrix_chunks,
                                           threads=cfg.threads, dataset="stdlib-train"), overwrite=True)
    out = work / f"teacher-{q}-imatrix-{ckey}.gguf"
    if not out.is_file():
        convert(teacher, out, QuantSpec(cfg.quant), imatrix=imx, threads=cfg.threads, overwrite=True, progress=progress)
    paths["teacher-quant-imatrix"] = out
    # the small teacher affords the exhaustive measurement (one whole forward per tensor and candidate) over the
    # k-quant candidates the table was first measured with; `convert --type auto` defaults to the scalable proxy
    auto = work / f"teacher-auto-{q}-size-{ckey}-exhaustive.gguf"
    if not auto.is_file():
        alloc = auto_allocation(teacher, calib, target_size=cfg.quant, imatrix=imx, ctx=cfg.n_ctx,
                                chunks=cfg.sensitivity_chunks, cache=work / f"sensitivity-{ckey}.json",
                                threads=cfg.threads, method="exhaustive", types=KQUANT_CANDIDATES,
                                progress=progress)
        convert(teacher, auto, alloc.spec(), imatrix=imx, threads=cfg.threads, overwrite=True, progress=progress)
    paths["teacher-auto"] = auto


def _distill(teacher: Path, data: Path, out: Path, cfg: DemoConfig, progress: Progress) -> dict:
    report = out / "distill_report.json"
    if report.is_file() and (out / "model.safetensors").is_file():
        return json.loads(report.read_text())
    from ..distill.api import distill
    from ..distill.config import DistillConfig
    from ..threads import torch_threads

    torch_threads(cfg.threads)
    dcfg = DistillConfig(teacher=str(teacher), data=str(data), output=str(out), overwrite=True,
                         layers=cfg.student_layers, seq_len=cfg.distill_seq_len, steps=cfg.distill_steps,
                         batch_size=cfg.distill_batch, lr=cfg.distill_lr, max_eval_blocks=16,
                         eval_fraction=0.02, device="cpu", precision="fp32", save_dtype="float16")
    log.info("distilling a %d-layer student (%d steps)", cfg.student_layers, cfg.distill_steps)
    return distill(dcfg, progress).report


def _tuned(gguf: Path, teacher: Path, data: Path, cfg: DemoConfig, progress: Progress) -> Path:
    """``gguf`` with its block scales tuned against the teacher on the training text (same size); cached."""
    out = gguf.with_name(f"{gguf.stem}-tuned-{_key(cfg.tune_steps, cfg.n_ctx, data.parent.name)}.gguf")
    if out.is_file():
        return out
    from ..tune import TuneConfig, tune

    log.info("tuning %s against the teacher (%d steps)", gguf.name, cfg.tune_steps)
    tune(TuneConfig(gguf=str(gguf), teacher=str(teacher), data=str(data), output=str(out), steps=cfg.tune_steps,
                    seq_len=cfg.n_ctx, threads=cfg.threads, overwrite=True), progress)
    return out


def _bench(path: Path, ref: Path, text: Path, cfg: DemoConfig, progress: Progress) -> dict:
    from ..bench import run_bench

    return run_bench(str(path), ref=str(ref), text=str(text), n_ctx=cfg.n_ctx,
                     n_threads=cfg.bench_threads, repeats=cfg.repeats,
                     n_prompt=cfg.n_prompt, n_gen=cfg.n_gen, progress=progress)


def _draft(teacher: Path, data: Path, work: Path, teacher_f16: Path, cfg: DemoConfig, progress: Progress) -> Path:
    """A one-layer draft distilled on the teacher's greedy continuations, at Q8_0; cached."""
    out = work / f"draft-{_key(data.parent.name, cfg.draft_layers, cfg.draft_steps)}"
    if (out / "draft-q8_0.gguf").is_file():
        return out / "draft-q8_0.gguf"
    from ..distill.draft import DraftConfig, make_draft

    log.info("distilling a %d-layer draft for acceptance (%d steps)", cfg.draft_layers, cfg.draft_steps)
    make_draft(DraftConfig(target=str(teacher), data=str(data), output=str(out), layers=cfg.draft_layers,
                           steps=cfg.draft_steps, types=("Q8_0",), target_gguf=str(teacher_f16), eval_prompts=1,
                           n_gen=16, threads=cfg.threads, device="cpu", overwrite=True), progress)
    return out / "draft-q8_0.gguf"


def _spec_row(base: Row, draft: Path, teacher: Path, held: Path, cfg: DemoConfig, progress: Progress) -> Row:
    """The baseline decoding with the draft: measured (greedy, held-out prompts, with and without) every run."""
    from ..distill.draft import DraftConfig, heldout_prompts, measure

    prompts = heldout_prompts(DraftConfig(target=str(teacher), data=str(held), output="",
                                          eval_prompts=cfg.draft_prompts))
    m = measure(base.path, {"draft": draft}, prompts, n_gen=cfg.n_gen, threads=cfg.bench_threads,
                progress=progress)["draft"]
    nan = float("nan")
    same = m["same_output"]  # then the tokens, and the distribution sampled from, are the teacher's
    return dataclasses.replace(
        base, model=SPEC_ROW[0], technique=SPEC_ROW[1], perplexity=base.perplexity if same else nan,
        kld_mean=base.kld_mean if same else nan, top1_agreement=base.top1_agreement if same else nan,
        gen_tps=base.gen_tps * m["speedup"], gen_tps_std=0.0, size_bytes=base.size_bytes + m["size"],
        path=str(draft), extra={f"draft_{k}": v for k, v in m.items() if k != "gguf"})


def _row(model: str, technique: str, path: Path, b: dict) -> Row:
    known = {"avg_ts", "stddev_ts", "perplexity", "kld_mean", "top1_agreement", "bpw", "model_n_params"}
    return Row(model=model, technique=technique, perplexity=float(b.get("perplexity") or float("nan")),
               kld_mean=float(b["kld_mean"]) if b.get("kld_mean") is not None else float("nan"),
               top1_agreement=float(b["top1_agreement"]) if b.get("top1_agreement") is not None else float("nan"),
               gen_tps=float(b.get("avg_ts") or float("nan")), gen_tps_std=float(b.get("stddev_ts") or 0.0),
               size_bytes=path.stat().st_size, bpw=float(b.get("bpw") or 0.0),
               n_params=int(b.get("model_n_params") or 0), path=str(path),
               extra={k: v for k, v in b.items() if k not in known})


def _write_outputs(out: Path, rows: list[Row], meta: dict) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"demo_table.md": format_markdown(rows), "demo_table.json": to_json(rows, meta),
             "demo_table.txt": format_text(rows)}
    for name, content in files.items():
        write_atomic(out / name, content)
    return out / "demo_table.md", out / "demo_table.json"


def run_demo(cfg: DemoConfig | None = None, progress: Progress = NULL_PROGRESS) -> DemoResult:
    """Run the demo (see the module docstring); returns the rows and where the table was written."""
    cfg = cfg or DemoConfig()
    t0 = time.monotonic()
    root = cache_root(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlimedgeError(f"cannot create the demo cache {root}: {exc.strerror}; "
                            "set SLIMEDGE_CACHE or pass --cache DIR") from None
    timings: dict[str, float] = {}

    def lap(name: str, t: float) -> None:
        timings[name] = round(time.monotonic() - t, 2)

    t = time.monotonic()
    teacher = _teacher_dir(cfg, root, progress)
    lap("teacher", t)
    tdigest = _digest_file(teacher / "model.safetensors")
    work = root / f"t{tdigest}-v{__version__}"
    data_key = _key(corpus.corpus_digest(), cfg.distill_chars, cfg.bench_chars)
    train_dir, held = _write_corpus(work / f"corpus-{data_key}", cfg)

    t = time.monotonic()
    q = cfg.quant.lower()
    paths = {"teacher-f16": _convert(teacher, work / "teacher-f16.gguf", "F16", cfg.threads, progress),
             "teacher-quant": _convert(teacher, work / f"teacher-{q}.gguf", cfg.quant, cfg.threads, progress)}
    lap("convert_teacher", t)
    t = time.monotonic()
    _calibrated(teacher, work, q, paths, cfg, progress)
    lap("imatrix_auto_mix", t)

    t = time.monotonic()
    skey = _key(data_key, cfg.student_layers, cfg.distill_steps, cfg.distill_batch, cfg.distill_seq_len,
                cfg.distill_lr)
    student = work / f"student-{skey}"
    distill_report = _distill(teacher, train_dir, student, cfg, progress)
    lap("distill", t)
    t = time.monotonic()
    paths["student-f16"] = _convert(student, work / f"student-{skey}-f16.gguf", "F16", cfg.threads, progress)
    paths["student-quant"] = _convert(student, work / f"student-{skey}-{q}.gguf", cfg.quant, cfg.threads, progress)
    lap("convert_student", t)
    t = time.monotonic()
    paths["teacher-quant-tuned"] = _tuned(paths["teacher-quant-imatrix"], teacher, train_dir, cfg, progress)
    paths["student-quant-tuned"] = _tuned(paths["student-quant"], teacher, train_dir, cfg, progress)
    lap("tune", t)
    t = time.monotonic()
    draft = _draft(teacher, train_dir, work, paths["teacher-f16"], cfg, progress)
    lap("draft", t)

    t = time.monotonic()
    rows = []
    for model, technique, key in ROWS:
        technique = technique.format(quant=cfg.quant)
        log.info("benchmarking %s | %s", model, technique)
        b = _bench(paths[key], paths["teacher-f16"], held, cfg, progress)
        rows.append(_row(model, technique, paths[key], b))
    log.info("benchmarking %s | %s", *SPEC_ROW)
    rows.append(_spec_row(rows[0], draft, teacher, held, cfg, progress))
    lap("bench", t)

    teacher_report = {}
    if (teacher / "teacher_report.json").is_file():
        teacher_report = json.loads((teacher / "teacher_report.json").read_text())
    meta = {
        "slimedge": __version__,
        "python": platform.python_version(),
        "cache": str(work),
        "teacher": str(teacher),
        "teacher_heldout_perplexity_torch": teacher_report.get("heldout_perplexity"),
        "teacher_recipe": teacher_report.get("recipe"),
        "corpus_digest": corpus.corpus_digest(),
        "distill": {k: distill_report.get(k) for k in ("steps", "tokens_seen", "kl_start", "kl",
                                                         "top1_agreement", "student_params", "teacher_params",
                                                         "train_time_s")},
        "settings": asdict(cfg),
        "machine": {k: rows[0].extra.get(k) for k in ("cpu_info", "n_cores", "platform", "build_commit",
                                                         "backends", "n_threads")},
        "timings_s": timings,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    md, js = _write_outputs(Path(cfg.out), rows, meta)
    return DemoResult(rows=rows, text=format_text(rows), markdown_path=str(md), json_path=str(js), meta=meta)
