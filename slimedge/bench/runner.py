"""Benchmark a GGUF (or a bundle) through llama.cpp; every measurement runs in a fresh child process.

Speed: ``repeats`` children, each loading the model (``load_s``), processing an ``n_prompt``-token
prompt (``pp_avg_ts``) and generating ``n_gen`` tokens one by one (``avg_ts``, the headline
tokens/s), with mean ± sample stddev over the repeats and the largest child peak RSS.
Quality (optional): ``text`` gives perplexity; ``ref`` (GGUF or HF folder of the unquantized model;
HF is converted to a float GGUF in a temp dir) adds KL divergence, top-1 agreement and ΔPPL.
See :mod:`slimedge.bench.quality` for the method.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..quant.types import CACHE_TYPES, file_type_name
from ..threads import llama_threads
from .process import mean_sd, run_child

log = logging.getLogger(__name__)

CACHE_TYPE_IDS = CACHE_TYPES  # ggml_type values for llama.cpp's type_k / type_v (slimedge.quant.types)

# embedding models only (slimedge.bench.embed): tokens/s over the sentences, quality against the reference
EMBED_FIELDS = ("n_sentences", "embed_ts", "embed_stddev_ts", "embed_cosine_mean", "embed_cosine_min",
                "embed_nn_agreement")
FIELDS = [  # every record carries these keys (None when not measured)
    "model_filename", "model_type", "model_size", "file_size", "model_n_params", "bpw",
    "n_threads", "n_gpu_layers", "n_batch", "n_ubatch", "type_k", "type_v", "flash_attn",
    "n_prompt", "n_gen", "repeats", "load_s", "load_s_stddev",
    "pp_avg_ts", "pp_stddev_ts", "pp_samples_ts", "avg_ts", "stddev_ts", "samples_ts", "peak_rss_bytes",
    "n_ctx", "text", "n_chunks", "perplexity", "perplexity_se",
    "ref_model", "ref_perplexity", "kld_mean", "top1_agreement", "delta_ppl",
    *EMBED_FIELDS,
    "cpu_info", "n_cores", "platform", "build_commit", "backends", "test_time",
]


FLASH_ATTN_MODES = ("auto", "on", "off")  # llama.cpp's -fa values; its own tools default to auto


def flash_attn_mode(value: str | bool | None) -> str:
    """``None`` (llama.cpp's default: ``auto``), a profile's bool, or ``auto|on|off`` -> ``auto|on|off``."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = str(value).strip().lower()
    if mode not in FLASH_ATTN_MODES:
        raise SlimedgeError(f"flash attention {value!r}: choose one of {', '.join(FLASH_ATTN_MODES)}")
    return mode


def gguf_sizes(path: Path) -> tuple[int, int, str]:
    """(tensor bytes, parameter count, a short type description) of a GGUF."""
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise SlimedgeError(f"{path}: not a readable GGUF file ({exc})") from None
    size = sum(int(t.n_bytes) for t in r.tensors)
    n = sum(int(t.n_elements) for t in r.tensors)
    arch = r.fields.get("general.architecture")
    arch_s = arch.contents() if arch is not None else "?"
    ft = r.fields.get("general.file_type")
    ft_s = "?"
    if ft is not None:
        try:
            ft_s = file_type_name(int(ft.contents()))
        except ValueError:
            ft_s = str(ft.contents())
    n_s = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
    return size, n, f"{arch_s} {n_s} {ft_s}"


def resolve_model(model_path: str | Path) -> tuple[Path, dict]:
    """A GGUF path, or a bundle directory → (its model.gguf, its manifest or {})."""
    p = Path(model_path)
    if p.is_dir():
        man = p / "manifest.json"
        if not man.is_file():
            raise SlimedgeError(f"{p}: a folder but not a bundle (no manifest.json); give a .gguf or a bundle")
        manifest = json.loads(man.read_text())
        return p / manifest.get("model", "model.gguf"), manifest
    if not p.is_file():
        raise SlimedgeError(f"{p}: no such file; give a .gguf file or a bundle folder")
    return p, {}


def ref_to_gguf(ref: Path, tmpdir: Path, threads: int | None, progress: Progress) -> Path:
    """A GGUF for the reference: itself, or an HF folder converted to F32 (F16 if over 4 GB)."""
    if ref.is_file():
        return ref
    if not (ref / "config.json").is_file():
        raise SlimedgeError(f"{ref}: --ref must be a GGUF file or a Hugging Face model folder (with config.json)")
    from ..convert import convert
    from ..quant.mixes import QuantSpec

    weights = sum(f.stat().st_size for f in ref.glob("*.safetensors"))
    ftype = "F32" if weights * (2 if _bf16_or_f16(ref) else 1) <= 4 << 30 else "F16"
    out = tmpdir / f"ref-{ftype.lower()}.gguf"
    log.info("converting --ref %s to %s", ref, ftype)
    convert(ref, out, QuantSpec(ftype=ftype), threads=threads, overwrite=True, progress=progress)
    return out


def _bf16_or_f16(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return True
    return str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32") in ("bfloat16", "float16")


def run_bench(model_path: str | Path, *, ref: str | Path | None = None, text: str | Path | None = None,
              n_ctx: int = 512, n_threads: int | None = None, repeats: int = 3, n_prompt: int = 512,
              n_gen: int = 128, n_batch: int = 512, n_ubatch: int | None = None, n_gpu_layers: int = 0,
              flash_attn: str | bool | None = None, cache_type_k: str = "f16", cache_type_v: str = "f16",
              max_chunks: int | None = None, speed: bool = True, draft: str | Path | None = None,
              draft_max: int = 8, progress: Progress = NULL_PROGRESS) -> dict:
    """Benchmark ``model_path`` (GGUF or bundle folder) through llama.cpp; returns one record (see ``FIELDS``).

    ``n_ctx`` is the perplexity/KL context (``llama-perplexity -c``); the speed tests use a context of
    ``max(n_ctx, n_prompt + n_gen)``. ``repeats`` children measure speed. ``text`` (a UTF-8 file
    with at least ``n_ctx`` tokens) adds perplexity, ``ref`` adds KL/top-1/ΔPPL against the
    reference; ``max_chunks`` caps the chunks scored. ``speed=False`` skips the speed tests.
    ``flash_attn``: ``auto`` (llama.cpp's default, so perplexity matches ``llama-perplexity``), ``on``,
    ``off`` or a bool; the record says which ran. For a bundle, the settings not given default to the
    bundle's runtime profile. ``draft`` (a GGUF sharing the model's vocabulary) adds the speculative columns as
    a bundle's own draft does (``draft_max`` tokens drafted per step at most).
    """
    flash_attn = flash_attn_mode(flash_attn)
    path, manifest = resolve_model(model_path)
    if not path.is_file():
        raise SlimedgeError(f"{path}: bundle model missing; run `slimedge verify {model_path}`")
    size, n_params, mtype = gguf_sizes(path)
    if text is not None and not Path(text).is_file():
        raise SlimedgeError(f"{text}: --text file not found")
    from ..gguf_info import read_info
    from .embed import is_embedding

    embedding = is_embedding(read_info(path).metadata)
    if embedding and text is not None:
        raise SlimedgeError(f"{path} is an embedding model: it has no perplexity; leave --text out (--ref alone "
                            "compares its embeddings with the reference's)")
    if ref is not None and text is None and not embedding:
        raise SlimedgeError("--ref needs --text: KL divergence is measured on the tokens of a text")
    if ref is not None:
        from ..source.hub import resolve_source

        ref = resolve_source(ref)  # a Hub model id: its snapshot in the local Hugging Face cache
    if ref is not None and not Path(ref).exists():
        raise SlimedgeError(f"{ref}: --ref not found; give a GGUF file or a Hugging Face model folder")
    rt = manifest.get("runtime", {})
    n_threads = n_threads or rt.get("n_threads") or llama_threads()
    n_ubatch = n_ubatch or min(n_batch, rt.get("n_ubatch", n_batch))
    common = dict(n_threads=n_threads, n_batch=n_batch, n_ubatch=n_ubatch, n_gpu_layers=n_gpu_layers,
                  flash_attn=flash_attn, type_k=CACHE_TYPE_IDS[cache_type_k], type_v=CACHE_TYPE_IDS[cache_type_v],
                  swa_full=rt.get("swa_full", True))  # a bundle's sliding-window cache as its profile says
    rec: dict = {k: None for k in FIELDS}
    rec.update(model_filename=str(path), model_type=mtype, model_size=size, file_size=path.stat().st_size,
               model_n_params=n_params, bpw=8.0 * size / n_params if n_params else None,
               n_threads=n_threads, n_gpu_layers=n_gpu_layers, n_batch=n_batch, n_ubatch=n_ubatch,
               type_k=cache_type_k, type_v=cache_type_v, flash_attn=flash_attn, n_ctx=n_ctx,
               test_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    from .speculative import draft_of

    pair = draft_of(Path(model_path), manifest, draft, draft_max) if speed and not embedding else None
    if draft is not None:
        from ..gguf_info import vocab_problem

        if not Path(draft).is_file():
            raise SlimedgeError(f"{draft}: --draft not found; give the draft model's GGUF")
        problem = vocab_problem(path, Path(draft))
        if problem:
            raise SlimedgeError(problem)
    drafted = pair is not None  # speculative decoding measured too
    n_runs = (repeats if speed else 0) * (2 if drafted else 1) + (1 if text else 0) + (1 if ref else 0)
    progress.start(1 + (1 if ref else 0) if embedding else n_runs, unit="runs", desc=f"bench {path.name}")
    try:
        if embedding:  # no generation, no perplexity: speed at batch and agreement with the reference
            _embedding(rec, path, ref, common, repeats, progress)
            return rec
        if speed:
            _speed(rec, path, common, repeats, n_prompt, n_gen, max(n_ctx, n_prompt + n_gen), progress)
        if drafted:
            from .speculative import measure

            measure(rec, path, pair, common, n_gen, repeats, progress)
        if text is not None:
            _quality(rec, path, Path(text), Path(ref) if ref else None, common, n_ctx, max_chunks, progress)
    finally:
        progress.close()
    return rec


def _embedding(rec: dict, path, ref, common: dict, repeats: int, progress) -> None:
    """Fill ``rec`` for an embedding model: tokens/s over the sentences, peak RSS, and with ``ref`` the
    cosines and nearest-neighbour agreement to the reference's vectors."""
    import numpy as np

    from .embed import SENTENCES, compare, embed_job

    r = run_child(embed_job(path, common, repeats))
    rates = [r["n_tokens"] / s for s in r["seconds"]]
    rec.update(r["machine"])
    rec.pop("system_info", None)
    rec["embed_ts"], rec["embed_stddev_ts"] = mean_sd(rates)
    rec["load_s"], rec["load_s_stddev"] = r["load_s"], 0.0
    rec.update(peak_rss_bytes=r["peak_rss_bytes"], repeats=repeats, n_sentences=len(SENTENCES),
               n_prompt=r["n_tokens"])
    progress.update(1, label=f"embed {rec['embed_ts']:.1f} t/s")
    if ref is None:
        return
    with tempfile.TemporaryDirectory(prefix="slimedge-embref-") as td:
        ref_gguf = ref_to_gguf(Path(ref), Path(td), common["n_threads"], NULL_PROGRESS)
        rr = run_child(embed_job(ref_gguf, common, 1))
    rec.update(compare(np.asarray(r["vectors"], dtype=np.float64), np.asarray(rr["vectors"], dtype=np.float64)))
    rec["ref_model"] = str(ref)
    progress.update(1, label="reference")


def _speed(rec, path, common, repeats, n_prompt, n_gen, ctx, progress) -> None:
    loads, pp, tg, rss = [], [], [], []
    for i in range(repeats):
        r = run_child(dict(common, kind="speed", model=str(path), n_ctx=ctx, n_prompt=n_prompt, n_gen=n_gen, seed=i))
        loads.append(r["load_s"])
        pp.append(r["n_prompt"] / r["pp_s"])
        tg.append(r["n_gen"] / r["tg_s"])
        rss.append(r["peak_rss_bytes"])
        rec.update(r["machine"])
        rec.pop("system_info", None)
        progress.update(1, label=f"tg {tg[-1]:.1f} t/s")
    rec["load_s"], rec["load_s_stddev"] = mean_sd(loads)
    rec["pp_avg_ts"], rec["pp_stddev_ts"] = mean_sd(pp)
    rec["avg_ts"], rec["stddev_ts"] = mean_sd(tg)
    rec.update(pp_samples_ts=pp, samples_ts=tg, peak_rss_bytes=max(rss), n_prompt=n_prompt, n_gen=n_gen,
               repeats=repeats)
    rec["tests"] = [  # llama-bench-shaped per-test records
        {"name": f"pp{n_prompt}", "n_prompt": n_prompt, "n_gen": 0, "avg_ts": rec["pp_avg_ts"],
         "stddev_ts": rec["pp_stddev_ts"], "samples_ts": pp},
        {"name": f"tg{n_gen}", "n_prompt": 0, "n_gen": n_gen, "avg_ts": rec["avg_ts"],
         "stddev_ts": rec["stddev_ts"], "samples_ts": tg},
    ]


def logprobs_for(model: Path, text: Path, common: dict, n_ctx: int, max_chunks: int | None, tmp: Path, tag: str):
    """Run the logits child for ``model`` on ``text``; returns (Logprobs, child result)."""
    from .quality import load_logprobs

    lp, tk = tmp / f"{tag}-logprobs.npy", tmp / f"{tag}-tokens.npy"
    job = dict(common, kind="logits", model=str(model), n_ctx=n_ctx, text=str(text), logprobs=str(lp),
               tokens=str(tk), max_chunks=max_chunks, n_batch=min(common["n_batch"], n_ctx),
               n_ubatch=min(common["n_ubatch"], n_ctx))
    r = run_child(job)
    if r["n_chunks"] == 0:
        raise SlimedgeError(f"{text}: tokenizes to {r['n_tokens']} tokens, fewer than one context of {n_ctx}; "
                            f"give a longer text (at least {n_ctx} tokens) or a smaller --ctx")
    return load_logprobs(lp, tk, n_ctx, r["n_tokens"]), r


def _quality(rec, path, text, ref, common, n_ctx, max_chunks, progress) -> None:
    from .quality import compare, perplexity

    with tempfile.TemporaryDirectory(prefix="slimedge-ppl-") as td:
        tmp = Path(td)
        lp, r = logprobs_for(path, text, common, n_ctx, max_chunks, tmp, "model")
        progress.update(1, label="perplexity")
        rec["perplexity"], rec["perplexity_se"] = perplexity(lp)
        rec.update(text=str(text), n_chunks=int(lp.tokens.shape[0]))
        if rec["peak_rss_bytes"] is None:
            rec["peak_rss_bytes"] = r.get("peak_rss_bytes")
        if ref is not None:
            ref_gguf = ref_to_gguf(ref, tmp, common["n_threads"], NULL_PROGRESS)
            rlp, _ = logprobs_for(ref_gguf, text, dict(common, n_gpu_layers=common["n_gpu_layers"]), n_ctx,
                                  max_chunks, tmp, "ref")
            progress.update(1, label="reference")
            cmp = compare(lp, rlp)
            rec.update(ref_model=str(ref), ref_perplexity=cmp["ref_perplexity"], kld_mean=cmp["kld_mean"],
                       top1_agreement=cmp["top1_agreement"], delta_ppl=cmp["delta_ppl"])
        del lp
    if rec["perplexity"] is not None and not math.isfinite(rec["perplexity"]):
        log.warning("perplexity is not finite: the model's logits overflow")
